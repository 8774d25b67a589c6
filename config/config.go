package config

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"
)

// Config is a loaded, validated config file.
type Config struct {
	// Path is the absolute path of the file the config was loaded from,
	// or "" when it was parsed from bytes.
	Path string

	// Listen is where the FastCGI socket listens; default
	// unix:/run/wagi.sock.
	Listen Listen
	// ListenMode is the unix socket's permission bits; default 0660.
	ListenMode os.FileMode
	// ListenOwner and ListenGroup own the unix socket when set.
	ListenOwner, ListenGroup string
	// StateDir holds the module cache, the compilation cache and the CPU
	// ledger; default /var/lib/wagi-fcgi. Always absolute: a relative
	// state_dir is taken relative to the config file's directory.
	StateDir string
	// StatusPath is where the status page is served through FastCGI;
	// default "/_wagi/status"; "" disables it.
	StatusPath string
	// LogFormat is "text" (default) or "json".
	LogFormat string
	// LogFile is where the log goes; "" is standard error. SIGUSR1
	// reopens it (for logrotate).
	LogFile string
	// Healthz keeps WAGI's built-in /healthz route (200 OK); default
	// true, `healthz = false` removes it.
	Healthz bool

	// Env is the global environment every module gets under its own
	// `environment` (WAGI's --env and --env-file): the config's env_file,
	// its env table, then the command line's --env-file and --env (see
	// Overrides). It is already merged into each Module's Environment.
	Env map[string]string
	// EnvFiles are the env files read for Env, absolute, in order.
	EnvFiles []string

	Pool   Pool
	Limits Limits // the [limits] defaults, before per-module overrides
	IPFS   IPFS
	OCI    OCI    // the [oci] table: how oci: modules are pulled
	Budget Budget // the [budget] table: budgets shared by a fleet

	// Modules are the [[module]] entries in file order.
	Modules []Module
}

// Pool is the [pool] table.
type Pool struct {
	// Children is the number of pre-started children; default
	// runtime.NumCPU().
	Children int
	// MaxRequests recycles a child after that many requests; 0 = never.
	MaxRequests int
	// Queue is how many requests may wait for a child; beyond → 503.
	Queue int
	// QueueTimeout is how long a request may wait for a child.
	QueueTimeout time.Duration
	// User runs children as this user when started as root; "" means
	// DefaultUser then (children never run as root). Its uid is the
	// children's shared effective uid (files they read and write) and its
	// group their group.
	User string

	// What clients may make the manager hold (see manager/RATIONALE.md,
	// "Connections"). MaxConnections caps open FastCGI connections
	// (lowered at start to fit RLIMIT_NOFILE); RequestReadTimeout bounds
	// how long a request's params may take, and each part of its body
	// after the previous one; IdleTimeout closes kept connections idle
	// that long (longer than nginx's keepalive_timeout). ParamsMemory
	// caps the params held for all requests together (→ 503).
	MaxConnections int
	// FastPath lets children take requests straight from the web
	// server's connections (manager/RATIONALE.md, "Taking the manager
	// out of the per-request path").
	FastPath           bool
	RequestReadTimeout time.Duration
	IdleTimeout        time.Duration
	ParamsMemory       int64
	// BodyMemory caps the request body bytes held in memory for all
	// requests together; bodies over 64 KiB, and any once it is used,
	// are spooled to unlinked files in state_dir/spool, at most
	// SpoolSize bytes in all (→ 503).
	BodyMemory int64
	SpoolSize  int64
	// ChildMemory is each child's address space limit (RLIMIT_AS) in
	// bytes; 0 = computed by Config.ChildMemory from the memory limits.
	ChildMemory int64
	// UIDRange holds each child slot's own real uid when started as root:
	// slot i runs as First+i, so no child can signal another.
	UIDRange UIDRange
}

// ChildMemory returns the RLIMIT_AS every child gets: [pool] child_memory,
// or DefaultChildMemory of the largest memory limit in the config.
func (c *Config) ChildMemory() int64 {
	if c.Pool.ChildMemory > 0 {
		return c.Pool.ChildMemory
	}
	largest := c.Limits.Memory // the gateway's modules get the defaults
	for _, m := range c.Modules {
		largest = max(largest, m.Limits.Memory)
	}
	return DefaultChildMemory(largest)
}

// DefaultChildMemory is the address space a child needs to run modules
// with the given linear memory limit: 2 GiB for the Go runtime and wazero,
// and eight times the memory. Measured (see manager/RATIONALE.md): a child
// has ~1.6 GB of address space mapped before it runs anything (Go's heap
// index and page summaries, malloc arenas), ~1.7 GB after serving the Go
// hello; a memory bomb that grows to its limit on every request drives a
// child to 2.65 GB at memory = "128MiB" and 5.8 GB at "1GiB" (a growing
// memory is copied into a buffer up to twice its size, and dead buffers of
// earlier requests wait for the collector). 3× was too little: such
// children died of the limit.
func DefaultChildMemory(memory int64) int64 {
	return childMemoryBase + 8*memory
}

// childMemoryBase is the part of DefaultChildMemory that does not depend
// on the memory limit.
const childMemoryBase = 2 << 30

// minChildMemory is the least child_memory accepted: below the address
// space a child has reserved when it starts, every child would die on its
// first request.
const minChildMemory = 1 << 30

// DefaultUser is the account children run as when the manager runs as root
// and [pool] user is not set (conf/systemd/wagi-fcgi.sysusers creates it).
const DefaultUser = "wagi-fcgi"

// UIDRange is an inclusive range of user ids, [pool] uid_range = "A-B".
type UIDRange struct{ First, Last uint32 }

// Size is how many uids the range holds.
func (r UIDRange) Size() int { return int(r.Last-r.First) + 1 }

// String is the range in the config's form.
func (r UIDRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// DefaultUIDRange is [pool] uid_range by default: above every range that
// Debian and systemd allocate to accounts (up to 65535, DynamicUser's
// 61184-65519 included) and below login.defs' SUB_UID_MIN (100000), where
// subordinate ids of rootless containers start. The manager refuses uids
// that have an account.
var DefaultUIDRange = UIDRange{First: 70000, Last: 70999}

// Limits is the [limits] table; every key can also appear in a [[module]]
// table to override it for that module.
type Limits struct {
	// Timeout is the wall clock per request (→ SIGKILL, 504).
	Timeout time.Duration
	// CPU is the CPU time per request (→ SIGKILL, 504).
	CPU time.Duration
	// DailyCPU is the CPU time per module per day (→ 503).
	DailyCPU time.Duration
	// DayStart is when the daily budget resets.
	DayStart DayStart
	// Memory is the guest's linear memory limit in bytes, a multiple of
	// the 64 KiB wasm page (rounded up when parsed).
	Memory int64
	// MaxBody is the largest request body in bytes (→ 413); 0 allows
	// only empty bodies.
	MaxBody int64
	// MaxOutput is the largest response in bytes.
	MaxOutput int64
	// MaxConcurrency is how many children one module may hold at once;
	// 0 = the pool size.
	MaxConcurrency int
	// VolumeBytes bounds the bytes of the regular files in each writable
	// volume of a module (→ ENOSPC for the guest); 0 = no bound.
	VolumeBytes int64
	// VolumeFiles bounds the number of entries (files and directories)
	// in each writable volume of a module (→ ENOSPC); 0 = no bound.
	VolumeFiles int64
	// CompileCPU is the CPU time compiling the module may take (→ the
	// compile process is killed, the module is remembered as bad, 502).
	CompileCPU time.Duration
	// CompileTimeout is the wall clock compiling the module may take.
	CompileTimeout time.Duration
	// CompileMemory is the address space (RLIMIT_AS) of the process that
	// compiles the module, in bytes.
	CompileMemory int64

	// Outbound HTTP (wasi_experimental_http, see internal/egress):
	// HTTPMaxResponse bounds one response body in bytes, HTTPMaxRequests
	// the outbound requests of one request (allowed or refused), and
	// HTTPTimeout one outbound request (never past the request's own
	// timeout either way).
	HTTPMaxResponse int64
	HTTPMaxRequests int
	HTTPTimeout     time.Duration
}

// WasmPageSize is the size of a WebAssembly memory page.
const WasmPageSize = 64 << 10

// maxMemory is the largest wasm32 linear memory: 65536 pages.
const maxMemory = 4 << 30

// minCompileMemory is the smallest compile_memory accepted: what the Go
// runtime and wazero need to compile a small module, with headroom
// (measured in manager/RATIONALE.md, "Why compiling is its own process").
const minCompileMemory = 128 << 20

// MemoryPages returns Memory in 64 KiB wasm pages, rounded up.
func (l Limits) MemoryPages() uint32 {
	if l.Memory <= 0 {
		return 0
	}
	pages := (l.Memory + WasmPageSize - 1) / WasmPageSize
	return uint32(min(pages, maxMemory/WasmPageSize))
}

// IPFS is the [ipfs] table.
type IPFS struct {
	// API is the kubo RPC API: a multiaddr ("/ip4/127.0.0.1/tcp/5001")
	// or an http(s) URL.
	API string
	// FetchTimeout bounds fetching one module.
	FetchTimeout time.Duration
	// IPNSTTL is how long an IPNS name's resolution is used before it is
	// resolved again; 0 means modsource's default (a minute).
	IPNSTTL time.Duration
	// Gateway, when not "", is the path prefix ("/ipfs/") under which any
	// allowed CID is served as /ipfs/<cid>/...
	Gateway string
	// Allow lists the CIDs allowed in gateway mode; ["*"] allows any.
	Allow []string
	// MaxModuleSize is the largest module fetched, in bytes.
	MaxModuleSize int64
	// GatewayDailyCPU is the CPU time all gateway CIDs together may use
	// per day (→ 503), on top of each CID's own daily_cpu; 0 = no
	// gateway-wide budget. Without it, publishing new CIDs would buy
	// fresh budgets without end.
	GatewayDailyCPU time.Duration
	// MaxDirSize and MaxDirFiles bound one read-only IPFS directory
	// volume: its file bytes, and its entries (files, directories and
	// skipped symlinks), so a CID naming a huge tree cannot fill state_dir.
	MaxDirSize  int64
	MaxDirFiles int
	// StoreSize bounds what state_dir holds of fetched content (modules,
	// their compiled code, IPFS directories); least recently used entries
	// that the config does not name are evicted past it. 0: no bound.
	StoreSize int64
	// Pin makes the node pin, in kubo, every CID the config names and
	// every CID served within PinRecent (so kubo's garbage collector
	// keeps them), under pin names of wagi-fcgi's own. false leaves the
	// node's pins to its operator.
	Pin bool
	// PinRecent is how long a served CID stays pinned after it was last
	// served; 0: served CIDs are not pinned (the config's still are).
	PinRecent time.Duration
	// PinMax bounds the served CIDs pinned at once (the config's are not
	// counted): at most PinMax × MaxModuleSize of kubo's storage for
	// what clients choose to run.
	PinMax int
}

// Module is one [[module]] entry.
type Module struct {
	// Route is the route pattern as written.
	Route string
	// Module is the module reference: an absolute path for a local file
	// (relative paths and file:// URLs resolved), else as written
	// (ipfs://CID, /ipfs/CID[/path], /ipns/NAME[/path]).
	Module string
	// Ref is Module parsed.
	Ref ModuleRef
	// Digest is the hex sha256 a URL module's bytes must have (the
	// module's digest key, "sha256:HEX"); "" for other kinds.
	Digest string
	// Entrypoint is the export called per request; default "_start".
	Entrypoint string
	// Argv is the argv template; "" = WAGI's default argv.
	Argv string
	// Volumes are the directories the module sees, sorted by Guest.
	Volumes []Volume
	// Environment is added to the module's environment: the global
	// Config.Env with this module's own `environment` over it.
	Environment map[string]string
	// AllowedHosts is WAGI's allowed_hosts, as written (each entry
	// checked by egress.ParseEntry when loaded; enforced by
	// internal/egress).
	AllowedHosts []string
	// HTTPMaxConcurrency is WAGI's http_max_concurrency; 0 if absent.
	HTTPMaxConcurrency int
	// Limits are the [limits] defaults with this module's overrides.
	Limits Limits
	// Line is the line of this module's [[module]] header (or of its
	// entry in an inline array), for messages; 0 if unknown.
	Line int
}

// DefaultPinMax is [ipfs] pin_max's default: with the default
// max_module_size (64 MiB), what gateway clients choose to run can hold at
// most 4 GiB of kubo's storage, twice the default store_size, while 64
// distinct modules served in a day is more than an edge node's own
// routes use.
const DefaultPinMax = 64

// MaxPinMax is the largest pin_max: the node remembers when it last
// served at most this many CIDs (in memory and in state_dir).
const MaxPinMax = 4096

// Default returns a config with every default filled in and no modules.
func Default() *Config {
	return &Config{
		Listen:     Listen{Network: "unix", Address: "/run/wagi.sock"},
		ListenMode: 0o660,
		StateDir:   "/var/lib/wagi-fcgi",
		StatusPath: "/_wagi/status",
		LogFormat:  "text",
		Budget:     Budget{LocalShare: DefaultLocalShare, Sync: DefaultBudgetSync},
		Healthz:    true,
		Pool: Pool{
			Children:     runtime.NumCPU(),
			MaxRequests:  0,
			Queue:        1024,
			QueueTimeout: 5 * time.Second,
			UIDRange:     DefaultUIDRange,

			MaxConnections: 1024,
			// WAGI_FCGI_FAST_PATH=1 turns the fast path on where the
			// config does not say: the test suite runs every end-to-end
			// test both ways with it.
			FastPath:           os.Getenv("WAGI_FCGI_FAST_PATH") == "1",
			RequestReadTimeout: 30 * time.Second,
			IdleTimeout:        75 * time.Second,
			ParamsMemory:       16 << 20,
			BodyMemory:         64 << 20,
			SpoolSize:          1 << 30,
		},
		Limits: Limits{
			Timeout:        30 * time.Second,
			CPU:            10 * time.Second,
			DailyCPU:       time.Hour,
			DayStart:       DayStart{},
			Memory:         128 << 20,
			MaxBody:        16 << 20,
			MaxOutput:      64 << 20,
			MaxConcurrency: 0,
			VolumeBytes:    64 << 20,
			VolumeFiles:    1000,
			CompileCPU:     10 * time.Second,
			CompileTimeout: 30 * time.Second,
			CompileMemory:  1 << 30,

			HTTPMaxResponse: 16 << 20,
			HTTPMaxRequests: 16,
			HTTPTimeout:     10 * time.Second,
		},
		IPFS: IPFS{
			API:             "/ip4/127.0.0.1/tcp/5001",
			FetchTimeout:    30 * time.Second,
			Gateway:         "",
			Allow:           []string{},
			MaxModuleSize:   64 << 20,
			GatewayDailyCPU: time.Hour,
			MaxDirSize:      256 << 20,
			MaxDirFiles:     10000,
			StoreSize:       2 << 30,
			Pin:             true,
			PinRecent:       24 * time.Hour,
			PinMax:          DefaultPinMax,
		},
	}
}

// Load reads and parses the config file at path. Relative paths inside it
// are resolved against the file's directory. Error messages name the file
// as given here.
func Load(path string) (*Config, error) {
	return LoadWith(path, Overrides{})
}

// Parse parses a config from data. filename is used in error messages
// only; baseDir resolves relative paths (state_dir, module paths, local
// volumes, a relative unix socket) and defaults to the working directory.
//
// All problems found are reported, each as an *Error, joined with
// errors.Join in line order.
func Parse(data []byte, filename, baseDir string) (*Config, error) {
	return parse(data, filename, baseDir, Overrides{})
}

func parse(data []byte, filename, baseDir string, o Overrides) (*Config, error) {
	if baseDir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return nil, fmt.Errorf("parsing config: resolving relative paths: %w", err)
		}
		baseDir = wd
	} else if !filepath.IsAbs(baseDir) {
		abs, err := filepath.Abs(baseDir)
		if err != nil {
			return nil, fmt.Errorf("parsing config: resolving base directory %q: %w", baseDir, err)
		}
		baseDir = abs
	}
	d := &decoder{file: filename, baseDir: baseDir}
	cfg := d.decode(data, o)
	if len(d.errs) > 0 || len(d.fileErrs) > 0 {
		slices.SortStableFunc(d.errs, func(a, b *Error) int {
			// Errors without a line go last.
			return cmp.Compare(lineKey(a.Line), lineKey(b.Line))
		})
		errs := make([]error, 0, len(d.errs)+len(d.fileErrs))
		for _, e := range d.errs {
			errs = append(errs, e)
		}
		// Problems in env files name their own file and line; they
		// follow the config file's, in the order the files are read.
		for _, e := range d.fileErrs {
			errs = append(errs, e)
		}
		return nil, errors.Join(errs...)
	}
	return cfg, nil
}

func lineKey(line int) int {
	if line <= 0 {
		return int(^uint(0) >> 1)
	}
	return line
}

// Error is one problem in a config file.
type Error struct {
	// File is the file name as given to Load or Parse; may be "".
	File string
	// Line is the 1-based line of the problem, or 0 if unknown.
	Line int
	// Msg says what is wrong, naming the key.
	Msg string
}

func (e *Error) Error() string {
	switch {
	case e.File != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	case e.File != "":
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	case e.Line > 0:
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	}
	return e.Msg
}
