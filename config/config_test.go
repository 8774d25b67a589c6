package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestDefaultFillsEveryDefault(t *testing.T) {
	c := Default()
	checks := []struct {
		name string
		got  any
		want any
	}{
		{"listen is the unix socket /run/wagi.sock", c.Listen, Listen{Network: "unix", Address: "/run/wagi.sock"}},
		{"listen prints back as written", c.Listen.String(), "unix:/run/wagi.sock"},
		{"listen_mode is 0660", c.ListenMode, os.FileMode(0o660)},
		{"listen_owner is empty", c.ListenOwner, ""},
		{"listen_group is empty", c.ListenGroup, ""},
		{"state_dir is /var/lib/wagi-fcgi", c.StateDir, "/var/lib/wagi-fcgi"},
		{"status_path is /_wagi/status", c.StatusPath, "/_wagi/status"},
		{"healthz is on", c.Healthz, true},
		{"children is the number of CPUs", c.Pool.Children, runtime.NumCPU()},
		{"max_requests is 0", c.Pool.MaxRequests, 0},
		{"queue is 1024", c.Pool.Queue, 1024},
		{"queue_timeout is 5s", c.Pool.QueueTimeout, 5 * time.Second},
		{"user is empty", c.Pool.User, ""},
		{"timeout is 30s", c.Limits.Timeout, 30 * time.Second},
		{"cpu is 10s", c.Limits.CPU, 10 * time.Second},
		{"daily_cpu is 1h", c.Limits.DailyCPU, time.Hour},
		{"day_start is midnight UTC", c.Limits.DayStart.String(), "00:00Z"},
		{"memory is 128MiB", c.Limits.Memory, int64(128 << 20)},
		{"memory is 2048 pages", c.Limits.MemoryPages(), uint32(2048)},
		{"max_body is 16MiB", c.Limits.MaxBody, int64(16 << 20)},
		{"max_output is 64MiB", c.Limits.MaxOutput, int64(64 << 20)},
		{"max_concurrency is 0", c.Limits.MaxConcurrency, 0},
		{"compile_cpu is 10s", c.Limits.CompileCPU, 10 * time.Second},
		{"compile_timeout is 30s", c.Limits.CompileTimeout, 30 * time.Second},
		{"compile_memory is 1GiB", c.Limits.CompileMemory, int64(1 << 30)},
		{"http_max_response is 16MiB", c.Limits.HTTPMaxResponse, int64(16 << 20)},
		{"http_max_requests is 16", c.Limits.HTTPMaxRequests, 16},
		{"http_timeout is 10s", c.Limits.HTTPTimeout, 10 * time.Second},
		{"the IPFS API is the local kubo", c.IPFS.API, "/ip4/127.0.0.1/tcp/5001"},
		{"fetch_timeout is 30s", c.IPFS.FetchTimeout, 30 * time.Second},
		{"the gateway is off", c.IPFS.Gateway, ""},
		{"allow is empty", len(c.IPFS.Allow), 0},
		{"max_module_size is 64MiB", c.IPFS.MaxModuleSize, int64(64 << 20)},
		{"max_dir_size is 256MiB", c.IPFS.MaxDirSize, int64(256 << 20)},
		{"max_dir_files is 10000", c.IPFS.MaxDirFiles, 10000},
		{"store_size is 2GiB", c.IPFS.StoreSize, int64(2 << 30)},
		{"budgets are per node", c.Budget.Shared, ""},
		{"pinning is on", c.IPFS.Pin, true},
		{"pin_recent is 24h", c.IPFS.PinRecent, 24 * time.Hour},
		{"pin_max is 64", c.IPFS.PinMax, 64},
		{"there are no modules", len(c.Modules), 0},
		{"there is no path", c.Path, ""},
	}
	for _, tt := range checks {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("got %#v, want %#v", tt.got, tt.want)
			}
		})
	}
}

func TestAnEmptyFileGivesTheDefaults(t *testing.T) {
	c, err := Parse(nil, "empty.toml", "/etc/wagi")
	if err != nil {
		t.Fatal(err)
	}
	if want := Default(); !reflect.DeepEqual(c, want) {
		t.Errorf("Parse(\"\") = %+v\nwant %+v", c, want)
	}
}

// A WAGI modules.toml, written like WAGI's own documentation, must load
// unchanged.
func TestAWAGIModulesTomlLoads(t *testing.T) {
	c, err := Load("testdata/wagi-modules.toml")
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := filepath.Abs("testdata")
	def := Default().Limits
	want := []Module{
		{Route: "/", Module: "/absolute/path/to/root.wasm", Entrypoint: "_start", Limits: def, Line: 4,
			Ref: ModuleRef{Kind: RefFile, Path: "/absolute/path/to/root.wasm", Raw: "/absolute/path/to/root.wasm"}},
		{Route: "/foo", Module: "/path/to/foo.wasm", Entrypoint: "_start", Limits: def, Line: 8,
			Ref: ModuleRef{Kind: RefFile, Path: "/path/to/foo.wasm", Raw: "file:///path/to/foo.wasm"}},
		{Route: "/bar/...", Module: filepath.Join(dir, "examples/bar.wasm"), Entrypoint: "_start", Limits: def, Line: 12,
			Ref: ModuleRef{Kind: RefFile, Path: filepath.Join(dir, "examples/bar.wasm"), Raw: "examples/bar.wasm"},
			Volumes: []Volume{
				{Guest: "/etc/app", Source: "config", Kind: VolumeLocal, Path: filepath.Join(dir, "config"),
					QuotaBytes: def.VolumeBytes, QuotaFiles: def.VolumeFiles},
				{Guest: "/path/inside/wasm", Source: "/path/on/host", Kind: VolumeLocal, Path: "/path/on/host",
					QuotaBytes: def.VolumeBytes, QuotaFiles: def.VolumeFiles},
			}},
		{Route: "/entrypoint/hello", Module: "/path/to/bar.wasm", Entrypoint: "hello", Limits: def, Line: 20,
			Ref: ModuleRef{Kind: RefFile, Path: "/path/to/bar.wasm", Raw: "/path/to/bar.wasm"}},
		{Route: "/entrypoint/goodbye", Module: "/path/to/bar.wasm", Entrypoint: "goodbye", Argv: "${SCRIPT_NAME} ${ARGS}", Limits: def, Line: 25,
			Ref: ModuleRef{Kind: RefFile, Path: "/path/to/bar.wasm", Raw: "/path/to/bar.wasm"}},
		{Route: "/proxy/...", Module: filepath.Join(dir, "examples/http-example.wasm"), Entrypoint: "_start", Limits: def, Line: 31,
			Ref:          ModuleRef{Kind: RefFile, Path: filepath.Join(dir, "examples/http-example.wasm"), Raw: "examples/http-example.wasm"},
			AllowedHosts: []string{"https://api.brigade.sh", "https://example.com"}, HTTPMaxConcurrency: 8},
	}
	if len(c.Modules) != len(want) {
		t.Fatalf("got %d modules, want %d", len(c.Modules), len(want))
	}
	for i := range want {
		got := c.Modules[i]
		if len(got.Volumes) == 0 {
			got.Volumes = nil
		}
		if !reflect.DeepEqual(got, want[i]) {
			t.Errorf("module #%d =\n%+v\nwant\n%+v", i+1, got, want[i])
		}
	}
	if c.Path != filepath.Join(dir, "wagi-modules.toml") {
		t.Errorf("Path = %q, want the absolute path of the file", c.Path)
	}
	d := Default()
	d.Path, d.Modules = c.Path, c.Modules
	if !reflect.DeepEqual(c, d) {
		t.Errorf("a WAGI file changed a setting other than modules: %+v", c)
	}
}

// The example in docs/design.md, verbatim but for a real CID in place of
// "bafy...".
const designExample = `
listen = "unix:/run/wagi.sock"     # or "tcp:127.0.0.1:9000"; systemd socket activation when started with LISTEN_FDS
listen_mode = "0660"               # socket permissions; listen_owner / listen_group likewise
state_dir = "/var/lib/wagi-fcgi"   # module cache, compilation cache, CPU ledger
status_path = "/_wagi/status"      # served through FastCGI like php-fpm's pm.status_path; "" disables

[pool]
children = 4                        # pre-started children (default: number of CPUs)
max_requests = 0                    # recycle a child after N requests; 0 = never
queue = 1024                        # requests waiting for a child; beyond → 503
queue_timeout = "5s"                # waiting longer → 503
user = ""                           # run children as this user when started as root

[limits]                            # defaults; every key can be overridden per module
timeout = "30s"                     # wall clock per request → SIGKILL, 504
cpu = "10s"                         # CPU per request → SIGKILL, 504
daily_cpu = "1h"                    # CPU per module per day → 503 + Retry-After
day_start = "00:00Z"                # when the daily budget resets (UTC offset allowed)
memory = "128MiB"                   # guest linear memory
max_body = "16MiB"                  # request body → 413
max_output = "64MiB"                # response → SIGKILL, 502 (or truncated stream end if headers already sent)
max_concurrency = 0                 # children one module may hold at once; 0 = pool size

[ipfs]
api = "/ip4/127.0.0.1/tcp/5001"     # kubo RPC API (multiaddr or http URL)
fetch_timeout = "30s"
gateway = ""                        # e.g. "/ipfs/": serve any allowed CID at /ipfs/<cid>/...
allow = []                          # CIDs allowed in gateway mode; ["*"] = any
max_module_size = "64MiB"

[budget]                            # daily budgets shared by a fleet of nodes (opt-in)
shared = ""                         # "redis://[:PASSWORD@]HOST:PORT/DB" or rediss://; "" = each node keeps its own
local_share = 0.25                  # of each budget, what a node may spend alone while the store is unreachable; (0, 1]
sync = "100ms"                      # how often a node pushes its own totals and reads the fleet's
node_id = ""                        # "" = the id kept in state_dir/node-id

[[module]]                          # WAGI fields: route, module, entrypoint, volumes, argv, allowed_hosts, http_max_concurrency
route = "/hello/..."                # exact, or prefix with "/..."
module = "hello.wasm"               # path | file:///abs | ipfs://CID | /ipfs/CID[/path] | /ipns/NAME
entrypoint = "_start"
argv = "${SCRIPT_NAME} ${ARGS}"
volumes = { "/static" = "./static", "/assets" = "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", "/data" = "mfs:/wagi/guestbook" }
environment = { GREETING = "hi" }   # per-module env (WAGI dropped this; users asked for it back)
timeout = "2s"                      # any [limits] key, for this module only
`

func TestTheDesignExampleLoads(t *testing.T) {
	c, err := Parse([]byte(designExample), "wagi.toml", "/etc/wagi")
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Pool.Children = 4
	wantLimits := want.Limits
	wantLimits.Timeout = 2 * time.Second
	want.Modules = []Module{{
		Route:      "/hello/...",
		Module:     "/etc/wagi/hello.wasm",
		Ref:        ModuleRef{Kind: RefFile, Path: "/etc/wagi/hello.wasm", Raw: "hello.wasm"},
		Entrypoint: "_start",
		Argv:       "${SCRIPT_NAME} ${ARGS}",
		Volumes: []Volume{
			{Guest: "/assets", Source: "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", Kind: VolumeIPFS,
				Path: "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", ReadOnly: true},
			{Guest: "/data", Source: "mfs:/wagi/guestbook", Kind: VolumeMFS, Path: "/wagi/guestbook",
				QuotaBytes: 64 << 20, QuotaFiles: 1000},
			{Guest: "/static", Source: "./static", Kind: VolumeLocal, Path: "/etc/wagi/static",
				QuotaBytes: 64 << 20, QuotaFiles: 1000},
		},
		Environment: map[string]string{"GREETING": "hi"},
		Limits:      wantLimits,
		Line:        37, // the constant starts with a newline
	}}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got\n%+v\nwant\n%+v", c, want)
	}
}

func TestSettingsAreRead(t *testing.T) {
	src := `
listen = "tcp:127.0.0.1:9000"
listen_mode = "0600"
listen_owner = "www-data"
listen_group = "www-data"
state_dir = "state"
status_path = ""
healthz = false
log_format = "json"
log_file = "logs/wagi.log"

[pool]
children = 2
max_requests = 500
queue = 0
queue_timeout = "250ms"
user = "wagi"
max_connections = 300
request_read_timeout = "10s"
idle_timeout = "90s"
params_memory = "4MiB"
body_memory = "8MiB"
spool_size = "100MiB"
uid_range = "80000-80063"

[limits]
timeout = "1m"
cpu = "1500ms"
daily_cpu = "2h30m"
day_start = "06:30+02:00"
memory = 100000
max_body = 0
max_output = "1GiB"
max_concurrency = 3
volume_bytes = "1MiB"
volume_files = 0
compile_cpu = "2s"
compile_timeout = "5s"
compile_memory = "256MiB"
http_max_response = "1MiB"
http_max_requests = 2
http_timeout = "3s"

[ipfs]
api = "http://127.0.0.1:5001"
fetch_timeout = "1m"
gateway = "/ipfs/"
allow = ["*", "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"]
max_module_size = "10MB"
gateway_daily_cpu = "90m"
max_dir_size = "1MiB"
max_dir_files = 500
store_size = "1GiB"
pin_recent = "1h"
pin_max = 8

[budget]
shared = "redis://127.0.0.1:6379/3"
local_share = 0.1
sync = "200ms"
node_id = "edge-1"
`
	c, err := Parse([]byte(src), "wagi.toml", "/srv/wagi")
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Listen:      Listen{Network: "tcp", Address: "127.0.0.1:9000"},
		ListenMode:  0o600,
		ListenOwner: "www-data",
		ListenGroup: "www-data",
		StateDir:    "/srv/wagi/state",
		StatusPath:  "",
		LogFormat:   "json",
		LogFile:     "/srv/wagi/logs/wagi.log",
		Healthz:     false,
		Pool: Pool{Children: 2, MaxRequests: 500, Queue: 0, QueueTimeout: 250 * time.Millisecond, User: "wagi",
			MaxConnections: 300, RequestReadTimeout: 10 * time.Second, IdleTimeout: 90 * time.Second,
			ParamsMemory: 4 << 20, BodyMemory: 8 << 20, SpoolSize: 100 << 20, UIDRange: UIDRange{80000, 80063}},
		Limits: Limits{
			Timeout: time.Minute, CPU: 1500 * time.Millisecond, DailyCPU: 150 * time.Minute,
			DayStart: DayStart{Minute: 6*60 + 30, Offset: 2 * 3600},
			Memory:   2 * WasmPageSize, // 100000 bytes rounded up to whole pages
			MaxBody:  0, MaxOutput: 1 << 30, MaxConcurrency: 3,
			VolumeBytes: 1 << 20, VolumeFiles: 0,
			CompileCPU: 2 * time.Second, CompileTimeout: 5 * time.Second, CompileMemory: 256 << 20,
			HTTPMaxResponse: 1 << 20, HTTPMaxRequests: 2, HTTPTimeout: 3 * time.Second,
		},
		IPFS: IPFS{
			API: "http://127.0.0.1:5001", FetchTimeout: time.Minute, Gateway: "/ipfs/",
			Allow:           []string{"*", "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"},
			MaxModuleSize:   10_000_000,
			GatewayDailyCPU: 90 * time.Minute,
			MaxDirSize:      1 << 20,
			MaxDirFiles:     500,
			StoreSize:       1 << 30,
			Pin:             true,
			PinRecent:       time.Hour,
			PinMax:          8,
		},
		Budget: Budget{Shared: "redis://127.0.0.1:6379/3", LocalShare: 0.1, Sync: 200 * time.Millisecond, NodeID: "edge-1"},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got\n%+v\nwant\n%+v", c, want)
	}
}

func TestModuleLimitOverrides(t *testing.T) {
	src := `
[[module]]
route = "/a"
module = "a.wasm"
timeout = "2s"
memory = "16MiB"
day_start = "23:00-05:00"

[[module]]
route = "/b"
module = "b.wasm"
cpu = "100ms"
daily_cpu = "5m"
max_body = "1KiB"
max_output = "512KiB"
max_concurrency = 1

[[module]]
route = "/c"
module = "c.wasm"

# [limits] after the modules still sets their defaults.
[limits]
timeout = "10s"
memory = "64MiB"
`
	c, err := Parse([]byte(src), "wagi.toml", "/srv")
	if err != nil {
		t.Fatal(err)
	}
	base := Default().Limits
	base.Timeout = 10 * time.Second
	base.Memory = 64 << 20

	a := base
	a.Timeout, a.Memory, a.DayStart = 2*time.Second, 16<<20, DayStart{Minute: 23 * 60, Offset: -5 * 3600}
	b := base
	b.CPU, b.DailyCPU, b.MaxBody, b.MaxOutput, b.MaxConcurrency = 100*time.Millisecond, 5*time.Minute, 1024, 512<<10, 1

	tests := []struct {
		name string
		got  Limits
		want Limits
	}{
		{"a module overrides timeout, memory and day_start", c.Modules[0].Limits, a},
		{"a module overrides cpu, daily_cpu and the sizes", c.Modules[1].Limits, b},
		{"a module without overrides gets the [limits] defaults", c.Modules[2].Limits, base},
		{"the [limits] defaults stay as written", c.Limits, base},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %+v, want %+v", tt.got, tt.want)
			}
		})
	}
}

func TestModulesInAnInlineArrayLoad(t *testing.T) {
	src := `module = [
  { route = "/a", module = "/a.wasm" },
  { route = "/b", module = "/b.wasm", timeout = "1s" },
]`
	c, err := Parse([]byte(src), "wagi.toml", "/")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Modules) != 2 || c.Modules[1].Limits.Timeout != time.Second || c.Modules[1].Line != 3 {
		t.Errorf("got %+v", c.Modules)
	}
}

func TestDuplicateRoutesAreAllowed(t *testing.T) {
	src := "[[module]]\nroute = \"/a\"\nmodule = \"/a.wasm\"\n[[module]]\nroute = \"/a\"\nmodule = \"/b.wasm\"\n"
	c, err := Parse([]byte(src), "wagi.toml", "/")
	if err != nil || len(c.Modules) != 2 {
		t.Fatalf("Parse = %v, %v; want both modules (the first wins at routing)", c, err)
	}
}

func TestModuleReferencesAreStored(t *testing.T) {
	const cid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
	tests := []struct {
		name, ref, wantModule string
		wantRef               ModuleRef
	}{
		{"a relative path is made absolute", "mods/x.wasm", "/srv/wagi/mods/x.wasm", ModuleRef{RefFile, "/srv/wagi/mods/x.wasm", "mods/x.wasm"}},
		{"a file URL becomes its path", "file:///opt/x.wasm", "/opt/x.wasm", ModuleRef{RefFile, "/opt/x.wasm", "file:///opt/x.wasm"}},
		{"an ipfs URL is kept as written", "ipfs://" + cid, "ipfs://" + cid, ModuleRef{RefIPFS, cid, "ipfs://" + cid}},
		{"an IPFS path is kept as written", "/ipfs/" + cid + "/x.wasm", "/ipfs/" + cid + "/x.wasm", ModuleRef{RefIPFS, cid + "/x.wasm", "/ipfs/" + cid + "/x.wasm"}},
		{"an IPNS path is kept as written", "/ipns/example.com/app.wasm", "/ipns/example.com/app.wasm", ModuleRef{RefIPNS, "example.com/app.wasm", "/ipns/example.com/app.wasm"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte("[[module]]\nroute = \"/\"\nmodule = \""+tt.ref+"\"\n"), "wagi.toml", "/srv/wagi")
			if err != nil {
				t.Fatal(err)
			}
			if m := c.Modules[0]; m.Module != tt.wantModule || m.Ref != tt.wantRef {
				t.Errorf("Module, Ref = %q, %+v; want %q, %+v", m.Module, m.Ref, tt.wantModule, tt.wantRef)
			}
		})
	}
}

func TestRelativePathsAreResolvedAgainstTheConfigDirectory(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "wagi.toml")
	src := `listen = "unix:run/wagi.sock"
state_dir = "state"
[[module]]
route = "/"
module = "m/app.wasm"
volumes = { "/static" = "./static:ro" }
`
	if err := os.WriteFile(file, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	// Load from another working directory: paths follow the file.
	t.Chdir(t.TempDir())
	c, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct{ name, got, want string }{
		{"the unix socket", c.Listen.Address, filepath.Join(dir, "run/wagi.sock")},
		{"the state directory", c.StateDir, filepath.Join(dir, "state")},
		{"the module", c.Modules[0].Module, filepath.Join(dir, "m/app.wasm")},
		{"the volume", c.Modules[0].Volumes[0].Path, filepath.Join(dir, "static")},
	}
	for _, tt := range checks {
		if tt.got != tt.want {
			t.Errorf("%s = %q, want %q", tt.name, tt.got, tt.want)
		}
	}
	if !c.Modules[0].Volumes[0].ReadOnly {
		t.Error("the :ro volume is not read-only")
	}
}

func TestParseWithoutBaseDirUsesTheWorkingDirectory(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	c, err := Parse([]byte(`state_dir = "st"`), "", "")
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	if c.StateDir != filepath.Join(wd, "st") {
		t.Errorf("StateDir = %q, want it under %q", c.StateDir, wd)
	}
}

func TestLoadOfAMissingFileFails(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.toml"))
	if err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "nope.toml") {
		t.Errorf("Load = %v, want a not-exist error naming the file", err)
	}
}

// Every error names the file, the line and the key; the wanted strings are
// compared whole.
func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want string
	}{
		{
			name: "an unknown module key is named with its line and module number",
			src:  "[[module]]\nroute = \"/a\"\nmodule = \"/a.wasm\"\n\n[[module]]\nmodule = \"/b.wasm\"\nrute = \"/b\"\nroute = \"/b\"\n",
			want: `modules.toml:7: unknown key "rute" in [[module]] #2 (did you mean "route"?)`,
		},
		{
			name: "an unknown top-level key is named",
			src:  "# c\nlisten = \"unix:/x\"\nlisen = \"unix:/y\"\n",
			want: `modules.toml:3: unknown key "lisen" (did you mean "listen"?)`,
		},
		{
			name: "an unknown table is named at its header",
			src:  "\n[pol]\nchildren = 1\n",
			want: `modules.toml:2: unknown key "pol" (did you mean "pool"?)`,
		},
		{
			name: "WAGI's [[modules]] typo is caught",
			src:  "[[modules]]\nroute = \"/\"\nmodule = \"/a.wasm\"\n",
			want: `modules.toml:1: unknown key "modules" (did you mean "module"?)`,
		},
		{
			name: "an unknown pool key is named",
			src:  "[pool]\nchildren = 2\nchidren = 3\n",
			want: `modules.toml:3: unknown key "chidren" in [pool] (did you mean "children"?)`,
		},
		{
			name: "an unknown limits key is named",
			src:  "[limits]\ntimout = \"1s\"\n",
			want: `modules.toml:2: unknown key "timout" in [limits] (did you mean "timeout"?)`,
		},
		{
			name: "an unknown ipfs key is named",
			src:  "[ipfs]\n\n\napi_url = \"http://x:1\"\n",
			want: `modules.toml:4: unknown key "api_url" in [ipfs]`,
		},
		{
			name: "an unknown key given as a dotted key is named",
			src:  "pool.children = 2\npool.kids = 3\n",
			want: `modules.toml:2: unknown key "kids" in [pool]`,
		},
		{
			name: "an unknown key in an inline pool table is named",
			src:  "pool = { children = 2,\n  kids = 3 }\n",
			want: `modules.toml:2: unknown key "kids" in [pool]`,
		},
		{
			name: "a [module.limits] sub-table gets a hint",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\n[module.limits]\ntimeout = \"1s\"\n",
			want: `modules.toml:4: unknown key "limits" in [[module]] #1 (write limit keys directly in the [[module]] table, like timeout = "2s")`,
		},
		{
			name: "WAGI's bindle_server gets a hint",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nbindle_server = \"http://b\"\n",
			want: `modules.toml:4: unknown key "bindle_server" in [[module]] #1 (Bindle is dead (its project was archived) and not supported; use a file, IPFS, oci: or an https URL with a digest in module)`,
		},
		{
			name: "a TOML syntax error has its line",
			src:  "listen = \"unix:/x\"\n\nchildren = = 3\n",
			want: `modules.toml:3: invalid TOML: expected value but found '=' instead`,
		},
		{
			name: "a duplicate key is a TOML error with its line",
			src:  "[pool]\nchildren = 1\nchildren = 2\n",
			want: `modules.toml:3: invalid TOML: Key 'pool.children' has already been defined.`,
		},
		{
			name: "a bad limits duration is named",
			src:  "[limits]\n\n\n\n\n\n\n\n\n\n\ntimeout = \"5 seconds\"\n",
			want: `modules.toml:12: [limits] timeout: invalid duration "5 seconds" (want a number with a unit: ms, s, m or h, like "30s" or "1h30m")`,
		},
		{
			name: "a bad module duration is named",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\ncpu = \"fast\"\n",
			want: `modules.toml:4: [[module]] #1 cpu: invalid duration "fast" (want a number with a unit: ms, s, m or h, like "30s" or "1h30m")`,
		},
		{
			name: "a zero timeout is rejected",
			src:  "[limits]\ntimeout = \"0s\"\n",
			want: `modules.toml:2: [limits] timeout: must be greater than 0, got "0s"`,
		},
		{
			name: "a negative cpu limit is rejected",
			src:  "[limits]\ncpu = \"-1s\"\n",
			want: `modules.toml:2: [limits] cpu: must be greater than 0, got "-1s"`,
		},
		{
			name: "a zero daily cpu budget is rejected",
			src:  "[limits]\ndaily_cpu = \"0h\"\n",
			want: `modules.toml:2: [limits] daily_cpu: must be greater than 0, got "0h"`,
		},
		{
			name: "a duration given as a number is rejected",
			src:  "[pool]\nqueue_timeout = 5\n",
			want: `modules.toml:2: [pool] queue_timeout: want a duration string like "30s", got an integer`,
		},
		{
			name: "a bad day_start is named",
			src:  "[limits]\nday_start = \"06:30\"\n",
			want: `modules.toml:2: [limits] day_start: invalid day start "06:30": too short (want HH:MM followed by Z or a UTC offset, like "00:00Z" or "06:30+02:00")`,
		},
		{
			name: "memory below one page is rejected",
			src:  "[limits]\nmemory = \"1KiB\"\n",
			want: `modules.toml:2: [limits] memory: must be at least 64KiB, got 1KiB`,
		},
		{
			name: "memory above 4GiB is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nmemory = \"5GiB\"\n",
			want: `modules.toml:4: [[module]] #1 memory: 5GiB is more than a 32-bit WebAssembly module can address (4GiB)`,
		},
		{
			name: "a size with junk is rejected",
			src:  "[limits]\nmax_body = \"16 megs\"\n",
			want: `modules.toml:2: [limits] max_body: invalid size "16 megs": unknown unit "megs" (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)`,
		},
		{
			name: "a negative size is rejected",
			src:  "[limits]\nmax_body = -1\n",
			want: `modules.toml:2: [limits] max_body: must not be negative`,
		},
		{
			name: "a zero max_output is rejected",
			src:  "[limits]\nmax_output = 0\n",
			want: `modules.toml:2: [limits] max_output: must be at least 1B, got 0B`,
		},
		{
			name: "a store_size smaller than max_module_size is rejected",
			src:  "[ipfs]\nstore_size = \"1MiB\"\n",
			want: `modules.toml:2: [ipfs] store_size: must be 0 (no bound) or at least max_module_size (64MiB) and max_dir_size (256MiB), got 1MiB`,
		},
		{
			name: "a zero max_dir_files is rejected",
			src:  "[ipfs]\nmax_dir_files = 0\n",
			want: `modules.toml:2: [ipfs] max_dir_files: must be at least 1, got 0`,
		},
		{
			name: "a zero max_module_size is rejected",
			src:  "[ipfs]\nmax_module_size = \"0MiB\"\n",
			want: `modules.toml:2: [ipfs] max_module_size: must be at least 1B, got 0B`,
		},
		{
			name: "zero children are rejected",
			src:  "[pool]\nchildren = 0\n",
			want: `modules.toml:2: [pool] children: must be at least 1, got 0`,
		},
		{
			name: "a negative queue is rejected",
			src:  "[pool]\nqueue = -5\n",
			want: `modules.toml:2: [pool] queue: must be at least 0, got -5`,
		},
		{
			name: "children given as a string are rejected",
			src:  "[pool]\nchildren = \"4\"\n",
			want: `modules.toml:2: [pool] children: want an integer, got a string`,
		},
		{
			name: "a compile_memory too small to compile anything is rejected",
			src:  "[limits]\ncompile_memory = \"16MiB\"\n",
			want: `modules.toml:2: [limits] compile_memory: must be at least 128MiB, got 16MiB`,
		},
		{
			name: "a negative max_concurrency is rejected",
			src:  "[limits]\nmax_concurrency = -1\n",
			want: `modules.toml:2: [limits] max_concurrency: must be at least 0, got -1`,
		},
		{
			name: "a listen address without a network is rejected",
			src:  "listen = \"/run/wagi.sock\"\n",
			want: `modules.toml:1: listen: invalid listen address "/run/wagi.sock": want "unix:/path" or "tcp:host:port"`,
		},
		{
			name: "a listen address with an unknown network is rejected",
			src:  "listen = \"udp:127.0.0.1:9000\"\n",
			want: `modules.toml:1: listen: invalid listen address "udp:127.0.0.1:9000": unknown network "udp", want "unix:/path" or "tcp:host:port"`,
		},
		{
			name: "a tcp listen address without a port is rejected",
			src:  "listen = \"tcp:127.0.0.1\"\n",
			want: `modules.toml:1: listen: invalid listen address "tcp:127.0.0.1": address 127.0.0.1: missing port in address`,
		},
		{
			name: "a listen_mode that is not octal is rejected",
			src:  "listen_mode = \"0999\"\n",
			want: `modules.toml:1: listen_mode: invalid mode "0999": want an octal string like "0660"`,
		},
		{
			name: "a listen_mode beyond permission bits is rejected",
			src:  "listen_mode = \"4755\"\n",
			want: `modules.toml:1: listen_mode: invalid mode 04755: only permission bits (at most 0777) are allowed`,
		},
		{
			name: "a decimal listen_mode is rejected",
			src:  "listen_mode = 660\n",
			want: `modules.toml:1: listen_mode: invalid mode 01224: only permission bits (at most 0777) are allowed`,
		},
		{
			name: "a status_path without a slash is rejected",
			src:  "status_path = \"status\"\n",
			want: `modules.toml:1: status_path: invalid path "status": must start with "/" (or "" to disable the status page)`,
		},
		{
			name: "healthz given as a string is rejected",
			src:  "healthz = \"no\"\n",
			want: `modules.toml:1: healthz: want true or false, got a string`,
		},
		{
			name: "an empty state_dir is rejected",
			src:  "state_dir = \"\"\n",
			want: `modules.toml:1: state_dir: must not be empty`,
		},
		{
			name: "a gateway prefix without a trailing slash is rejected",
			src:  "[ipfs]\ngateway = \"/ipfs\"\n",
			want: `modules.toml:2: [ipfs] gateway: invalid gateway prefix "/ipfs": want "" (off) or a path like "/ipfs/"`,
		},
		{
			name: "a gateway prefix of the root is rejected",
			src:  "[ipfs]\ngateway = \"/\"\n",
			want: `modules.toml:2: [ipfs] gateway: invalid gateway prefix "/": want "" (off) or a path like "/ipfs/"`,
		},
		{
			name: "a bad CID in allow is named by its index",
			src:  "[ipfs]\nallow = [\n  \"*\",\n  \"not a cid\",\n]\n",
			want: `modules.toml:4: [ipfs] allow[1]: "not a cid" is not a CID or "*"`,
		},
		{
			name: "an IPFS API that is neither multiaddr nor URL is rejected",
			src:  "[ipfs]\napi = \"localhost:5001\"\n",
			want: `modules.toml:2: [ipfs] api: invalid API address "localhost:5001": want a multiaddr like "/ip4/127.0.0.1/tcp/5001" or a URL like "http://127.0.0.1:5001"`,
		},
		{
			name: "a module without a route is reported at its header",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\n\n[[module]]\nmodule = \"/b.wasm\"\n",
			want: `modules.toml:5: [[module]] #2: missing required key "route"`,
		},
		{
			name: "a module without a module reference is reported at its header",
			src:  "\n[[module]]\nroute = \"/\"\n",
			want: `modules.toml:2: [[module]] #1: missing required key "module"`,
		},
		{
			name: "a route without a leading slash is rejected",
			src:  "[[module]]\nroute = \"hello\"\nmodule = \"/a.wasm\"\n",
			want: `modules.toml:2: [[module]] #1 route: invalid route "hello": must start with "/"`,
		},
		{
			name: "a wildcard that is not the last segment is rejected",
			src:  "[[module]]\nroute = \"/a/.../b\"\nmodule = \"/a.wasm\"\n",
			want: `modules.toml:2: [[module]] #1 route: invalid route "/a/.../b": "..." is allowed only as the last segment, as in "/foo/..."`,
		},
		{
			name: "an unsupported module scheme is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"ftp://foo/bar.wasm\"\n",
			want: `modules.toml:3: [[module]] #1 module: invalid module reference "ftp://foo/bar.wasm": unsupported scheme "ftp" (use a path, file:///abs, ipfs://CID, /ipfs/CID, /ipns/NAME, oci:REGISTRY/REPO:TAG or https://HOST/PATH with a digest)`,
		},
		{
			name: "a URL module without a digest is rejected at its module key",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"https://example.com/x.wasm\"\n",
			want: `modules.toml:3: [[module]] #1 module: a URL module needs digest = "sha256:<64 hex digits>" (the sha256 of the module's bytes)`,
		},
		{
			name: "a malformed digest is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"https://example.com/x.wasm\"\ndigest = \"md5:abc\"\n",
			want: `modules.toml:4: [[module]] #1 digest: invalid digest "md5:abc": want "sha256:" and 64 hex digits`,
		},
		{
			name: "a digest on a file module is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\ndigest = \"sha256:" + strings.Repeat("0", 64) + "\"\n",
			want: `modules.toml:4: [[module]] #1 digest: only a URL module takes a digest (an oci: reference pins one as REPO@sha256:...)`,
		},
		{
			name: "a tag TTL of zero is rejected",
			src:  "[oci]\ntag_ttl = \"0s\"\n",
			want: `modules.toml:2: [oci] tag_ttl: must be greater than 0, got "0s"`,
		},
		{
			name: "an IPNS TTL that is not a duration is rejected",
			src:  "[ipfs]\nipns_ttl = \"soon\"\n",
			want: `modules.toml:2: [ipfs] ipns_ttl: invalid duration "soon" (want a number with a unit: ms, s, m or h, like "30s" or "1h30m")`,
		},
		{
			name: "a pin_max above the bound of served CIDs remembered is rejected",
			src:  "[ipfs]\npin_max = 5000\n",
			want: `modules.toml:2: [ipfs] pin_max: must be at most 4096, got 5000`,
		},
		{
			name: "a pin that is not a boolean is rejected",
			src:  "[ipfs]\npin = \"yes\"\n",
			want: `modules.toml:2: [ipfs] pin: want true or false, got a string`,
		},
		{
			name: "an insecure registry with a path is rejected",
			src:  "[oci]\ninsecure_registries = [\"127.0.0.1:5000/x\"]\n",
			want: `modules.toml:2: [oci] insecure_registries[0]: "127.0.0.1:5000/x" is not a registry host[:port]`,
		},
		{
			name: "an empty entrypoint is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nentrypoint = \"\"\n",
			want: `modules.toml:4: [[module]] #1 entrypoint: must not be empty (leave it out for "_start")`,
		},
		{
			name: "an argv template with an unknown variable is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nargv = \"${SCRIPT} ${ARGS}\"\n",
			want: `modules.toml:4: [[module]] #1 argv: argv template "${SCRIPT} ${ARGS}": unknown variable ${SCRIPT} (only ${SCRIPT_NAME} and ${ARGS} exist)`,
		},
		{
			name: "a relative guest path is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nvolumes = { \"static\" = \"/srv/static\" }\n",
			want: `modules.toml:4: [[module]] #1 volumes: invalid volume "static" = "/srv/static": the guest path must be absolute`,
		},
		{
			name: "an unclean guest path is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\n\n[module.volumes]\n\"/a/../b\" = \"/srv\"\n",
			want: `modules.toml:6: [[module]] #1 volumes: invalid volume "/a/../b" = "/srv": the guest path must be clean ("/b")`,
		},
		{
			name: "a volume with an unknown scheme is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nvolumes = { \"/d\" = \"s3://bucket\" }\n",
			want: `modules.toml:4: [[module]] #1 volumes: invalid volume "/d" = "s3://bucket": unsupported scheme "s3" (use a path, file:///abs, ipfs://CID, ipns://NAME or mfs:/path)`,
		},
		{
			name: "a volume source that is not a string is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nvolumes = { \"/d\" = 1 }\n",
			want: `modules.toml:4: [[module]] #1 volumes."/d": want a string, got an integer`,
		},
		{
			name: "an environment name with '=' is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nenvironment = { \"A=B\" = \"x\" }\n",
			want: `modules.toml:4: [[module]] #1 environment."A=B": an environment variable name must not contain '=' or NUL`,
		},
		{
			name: "an empty environment name is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\n[module.environment]\n\"\" = \"x\"\n",
			want: `modules.toml:5: [[module]] #1 environment."": an environment variable needs a name`,
		},
		{
			name: "an environment value with NUL is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nenvironment = { A = \"x\\u0000y\" }\n",
			want: `modules.toml:4: [[module]] #1 environment.A: an environment variable value must not contain NUL`,
		},
		{
			name: "an environment value that is not a string is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nenvironment = { PORT = 8080 }\n",
			want: `modules.toml:4: [[module]] #1 environment.PORT: want a string, got an integer`,
		},
		{
			name: "allowed_hosts with a number is rejected by index",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nallowed_hosts = [\"https://a\", 3]\n",
			want: `modules.toml:4: [[module]] #1 allowed_hosts[1]: want a string, got an integer`,
		},
		{
			name: "an allowed_hosts entry without a scheme is rejected by index",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nallowed_hosts = [\"insecure:allow-all\", \"example.com\"]\n",
			want: `modules.toml:4: [[module]] #1 allowed_hosts[1]: "example.com" is not scheme://host[:port] (nor "insecure:allow-all")`,
		},
		{
			name: "an allowed_hosts entry with a path is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nallowed_hosts = [\"https://example.com/api\"]\n",
			want: `modules.toml:4: [[module]] #1 allowed_hosts[0]: "https://example.com/api" names a destination, not a path, query or user: write scheme://host[:port]`,
		},
		{
			name: "an http_timeout that is not a duration is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nhttp_timeout = 5\n",
			want: `modules.toml:4: [[module]] #1 http_timeout: want a duration string like "30s", got an integer`,
		},
		{
			name: "a zero http_max_response is rejected",
			src:  "[limits]\nhttp_max_response = 0\n",
			want: `modules.toml:2: [limits] http_max_response: must be at least 1B, got 0B`,
		},
		{
			name: "a negative http_max_concurrency is rejected",
			src:  "[[module]]\nroute = \"/\"\nmodule = \"/a.wasm\"\nhttp_max_concurrency = -1\n",
			want: `modules.toml:4: [[module]] #1 http_max_concurrency: must be at least 0, got -1`,
		},
		{
			name: "a module given as a plain table is rejected",
			src:  "[module]\nroute = \"/\"\n",
			want: `modules.toml:1: module: want [[module]] tables, got a table`,
		},
		{
			name: "a section given as a value is rejected",
			src:  "pool = 4\n",
			want: `modules.toml:1: pool: want a table, got an integer`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.src), "modules.toml", "/srv")
			if err == nil {
				t.Fatalf("no error, want %s", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error =\n%s\nwant\n%s", err, tt.want)
			}
			var e *Error
			if !errors.As(err, &e) || e.File != "modules.toml" || e.Line == 0 {
				t.Errorf("errors.As(*Error) = %+v, want file and line", e)
			}
		})
	}
}

func TestAllErrorsAreReportedInLineOrder(t *testing.T) {
	src := `[[module]]
route = "/a"
module = "/a.wasm"
rute = "/b"
[limits]
timeout = "soon"
[pool]
children = 0
`
	_, err := Parse([]byte(src), "wagi.toml", "/")
	want := `wagi.toml:4: unknown key "rute" in [[module]] #1 (did you mean "route"?)
wagi.toml:6: [limits] timeout: invalid duration "soon" (want a number with a unit: ms, s, m or h, like "30s" or "1h30m")
wagi.toml:8: [pool] children: must be at least 1, got 0`
	if err == nil || err.Error() != want {
		t.Errorf("error =\n%v\nwant\n%s", err, want)
	}
}

func TestErrorFormats(t *testing.T) {
	tests := []struct {
		name string
		err  Error
		want string
	}{
		{"file and line", Error{File: "a.toml", Line: 3, Msg: "m"}, "a.toml:3: m"},
		{"file without line", Error{File: "a.toml", Msg: "m"}, "a.toml: m"},
		{"line without file", Error{Line: 3, Msg: "m"}, "line 3: m"},
		{"neither", Error{Msg: "m"}, "m"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestListenModeForms(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want os.FileMode
	}{
		{"an octal string with a leading zero", `listen_mode = "0640"`, 0o640},
		{"an octal string without a leading zero", `listen_mode = "600"`, 0o600},
		{"an octal string with 0o", `listen_mode = "0o666"`, 0o666},
		{"a TOML octal integer", `listen_mode = 0o660`, 0o660},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.src), "wagi.toml", "/")
			if err != nil {
				t.Fatal(err)
			}
			if c.ListenMode != tt.want {
				t.Errorf("ListenMode = %#o, want %#o", c.ListenMode, tt.want)
			}
		})
	}
}

func TestIPFSAPIForms(t *testing.T) {
	for _, api := range []string{"/ip4/127.0.0.1/tcp/5001", "/unix/run/kubo.sock", "/dns4/kubo/tcp/5001", "http://127.0.0.1:5001", "https://kubo.example"} {
		t.Run("the API address "+api+" is accepted", func(t *testing.T) {
			c, err := Parse([]byte("[ipfs]\napi = \""+api+"\"\n"), "wagi.toml", "/")
			if err != nil || c.IPFS.API != api {
				t.Errorf("Parse = %v, %v; want API %q", c, err, api)
			}
		})
	}
}

func TestChildMemory(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want int64
	}{
		{"by default it is 2GiB plus eight times the default memory", "", 2<<30 + 8*128<<20},
		{"the largest memory limit of any module sets the default", "[[module]]\nroute = \"/a\"\nmodule = \"a.wasm\"\nmemory = \"1GiB\"\n" +
			"[[module]]\nroute = \"/b\"\nmodule = \"b.wasm\"\nmemory = \"4MiB\"\n", 2<<30 + 8<<30},
		{"the [limits] memory counts even when every module has less", "[limits]\nmemory = \"512MiB\"\n[[module]]\nroute = \"/a\"\nmodule = \"a.wasm\"\nmemory = \"4MiB\"\n", 2<<30 + 8*512<<20},
		{"child_memory in [pool] is taken as it is", "[pool]\nchild_memory = \"3GiB\"\n[limits]\nmemory = \"2GiB\"\n", 3 << 30},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.src), "wagi.toml", "/srv")
			if err != nil {
				t.Fatal(err)
			}
			if got := c.ChildMemory(); got != tc.want {
				t.Fatalf("ChildMemory() = %d, want %d", got, tc.want)
			}
		})
	}
	_, err := Parse([]byte("[pool]\nchild_memory = \"256MiB\"\n"), "wagi.toml", "/srv")
	if err == nil || !strings.Contains(err.Error(), "wagi.toml:2: [pool] child_memory: must be at least 1GiB, got 256MiB") {
		t.Fatalf("a child_memory below 1GiB: %v", err)
	}
}

func TestUIDRangeMustBeNonRootAndInOrder(t *testing.T) {
	cases := []struct {
		name, value string
		want        UIDRange // zero: an error naming uid_range
	}{
		{"a range is read", "60000-60999", UIDRange{60000, 60999}},
		{"a single uid is a range", "61000-61000", UIDRange{61000, 61000}},
		{"uid 0 is refused", "0-100", UIDRange{}},
		{"a reversed range is refused", "70999-70000", UIDRange{}},
		{"one number is refused", "70000", UIDRange{}},
		{"uids from 2^31 are refused", "2147483648-2147483649", UIDRange{}},
		{"words are refused", "many", UIDRange{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte("[pool]\nuid_range = \""+tc.value+"\"\n"), "wagi.toml", "/srv")
			if tc.want == (UIDRange{}) {
				if err == nil || !strings.Contains(err.Error(), "uid_range") {
					t.Fatalf("uid_range %q: %v, want an error naming uid_range", tc.value, err)
				}
				return
			}
			if err != nil || c.Pool.UIDRange != tc.want {
				t.Fatalf("uid_range %q: %v, %v; want %v", tc.value, c.Pool.UIDRange, err, tc.want)
			}
		})
	}
	if d := Default().Pool.UIDRange; d != DefaultUIDRange || d.Size() != 1000 {
		t.Fatalf("the default uid_range is %v", d)
	}
}

func TestPinKeys(t *testing.T) {
	tests := []struct {
		name   string
		src    string
		pin    bool
		recent time.Duration
		max    int
	}{
		{"pin_recent \"0\" turns pinning of served CIDs off", "[ipfs]\npin_recent = \"0\"\n", true, 0, DefaultPinMax},
		{"pin_recent 0 as a number does too", "[ipfs]\npin_recent = 0\n", true, 0, DefaultPinMax},
		{"pin = false leaves pins to the operator", "[ipfs]\npin = false\n", false, 24 * time.Hour, DefaultPinMax},
		{"a window and a cap are taken as written", "[ipfs]\npin_recent = \"2s\"\npin_max = 3\n", true, 2 * time.Second, 3},
		{"pin_max 0 pins no served CID", "[ipfs]\npin_max = 0\n", true, 24 * time.Hour, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.src), "modules.toml", "/etc/wagi")
			if err != nil {
				t.Fatal(err)
			}
			if c.IPFS.Pin != tt.pin || c.IPFS.PinRecent != tt.recent || c.IPFS.PinMax != tt.max {
				t.Errorf("got pin=%v pin_recent=%v pin_max=%d, want %v %v %d", c.IPFS.Pin, c.IPFS.PinRecent, c.IPFS.PinMax, tt.pin, tt.recent, tt.max)
			}
		})
	}
}
