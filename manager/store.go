package manager

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/tetratelabs/wazero"
	"golang.org/x/sys/unix"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/cpuacct"
	"github.com/wagi-fcgi/wagi-fcgi/internal/compiler"
)

// module is a validated, compiled module: its bytes are stored by content
// hash in state_dir and its native code is in the compilation cache, so a
// child's compile is a cache hit.
type module struct {
	ref     string          // as configured, for messages
	key     string          // sha256 of the bytes, hex; the module's identity
	path    string          // state_dir/modules/<key>.wasm
	text    string          // for a WebAssembly text module: the binary the compile process made of it
	exports map[string]bool // exported function names
	size    int
	// code are the module IDs of what the compile process compiled (the
	// module within wagi-fcgi's bounds, see compiler.CodeIDs): the
	// compilation cache names the module's compiled code after them.
	code []string
}

// store keeps modules by content hash and has them compiled. It never
// parses, compiles or runs module bytes itself: compiling happens in a
// `wagi-fcgi compile` process per module, under the module's compile
// limits (see compileOnce).
type store struct {
	dir      string // state_dir/modules
	indexDir string // state_dir/ipfs-index: IPFS path → module key
	cacheDir string // wazero file compilation cache
	badDir   string // state_dir/bad: modules that failed to compile, by key
	maxSize  int64
	command  []string // argv of a compile process, before its flags
	wat2wasm string   // absolute path of wabt's wat2wasm, found at start; "" = none (text modules are refused)
	log      *slog.Logger

	sp    *spawner      // starts compile processes (see spawner)
	slots chan struct{} // bounds the compile processes alive at once
	life  context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup // compiles in flight; close waits for them

	mu      sync.Mutex
	owner   *[2]int // uid, gid that compiles run as and own the cache; nil: the manager's
	flights map[string]*compileFlight
	closed  bool
	unhooks []func() bool // stopOn's registrations, undone by close
}

// compileFlight is one compile that every concurrent load of the same
// module shares.
type compileFlight struct {
	done chan struct{}
	res  *compiler.Result
	err  error
}

// chargeFunc is told the CPU a compile process used, once it is reaped,
// whether or not anyone still waits for the result.
type chargeFunc func(key string, cpu time.Duration)

// newStore prepares state_dir. command starts a compile process (e.g.
// [/usr/bin/wagi-fcgi compile]).
func newStore(stateDir string, maxSize int64, command []string, log *slog.Logger) (*store, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &store{
		dir:      filepath.Join(stateDir, "modules"),
		indexDir: filepath.Join(stateDir, "ipfs-index"),
		cacheDir: filepath.Join(stateDir, "compilation-cache"),
		badDir:   filepath.Join(stateDir, "bad"),
		maxSize:  maxSize,
		command:  command,
		log:      log,
		slots:    make(chan struct{}, compileSlots()),
		flights:  map[string]*compileFlight{},
	}
	// Children may run as another user (pool.user): they must traverse
	// state_dir and read modules/, but list nothing else.
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{stateDir, 0o711}, {s.dir, 0o755}, {s.cacheDir, 0o700}, {s.indexDir, 0o700}, {s.badDir, 0o700}} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
	}
	if s.wat2wasm = findWat2wasm(); s.wat2wasm == "" {
		log.Info("no wat2wasm in PATH: WebAssembly text modules will be refused (install wabt)")
	}
	s.life, s.stop = context.WithCancel(context.Background())
	s.sp = newSpawner()
	return s, nil
}

// binary is the file children load: the module's own, or for a text
// module the binary made of it (see compiler.TextBinaryPath).
func (m *module) binary() string {
	if m.text != "" {
		return m.text
	}
	return m.path
}

// findWat2wasm resolves wat2wasm in PATH once, at start: compile
// processes get an empty environment, so they are given its path.
func findWat2wasm() string {
	p, err := exec.LookPath("wat2wasm")
	if err != nil {
		return ""
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return ""
}

// errNoWat2wasm is the reason a text module cannot load here.
const errNoWat2wasm = "not a WebAssembly binary (no \\0asm magic), and WebAssembly text needs wabt's wat2wasm, which was not found in PATH when wagi-fcgi started (install the Debian package wabt)"

// compileSlots is how many compile processes may be alive at once: one per
// CPU (each runs with GOMAXPROCS=1), at least two so that one slow compile
// never holds up every other. Memory is then bounded by slots ×
// compile_memory.
func compileSlots() int {
	return max(2, runtime.NumCPU())
}

// stopOn kills every compile in flight, and refuses new ones, once ctx is
// done: a SIGTERM must not wait for a compile.
func (s *store) stopOn(ctx context.Context) {
	unhook := context.AfterFunc(ctx, s.stop)
	s.mu.Lock()
	s.unhooks = append(s.unhooks, unhook)
	s.mu.Unlock()
}

func (s *store) close(context.Context) {
	s.stop()
	s.mu.Lock()
	for _, unhook := range s.unhooks {
		unhook()
	}
	s.unhooks = nil
	already := s.closed
	s.closed = true
	s.mu.Unlock()
	if already {
		return
	}
	s.wg.Wait() // every compile process has been killed and reaped
	s.sp.close()
}

// badModuleError is a module that cannot be used: it failed to compile,
// or broke its compile limits. It matches errInvalidModule (502).
type badModuleError struct {
	ref, key string
	reason   string
}

func (e *badModuleError) Error() string {
	return fmt.Sprintf("load %s: %v: %s", e.ref, errInvalidModule, e.reason)
}

func (e *badModuleError) Unwrap() error { return errInvalidModule }

// add stores bin by content and has it compiled for pages under lim's
// compile limits, unless it is remembered as bad. The compile's CPU goes
// to charge.
func (s *store) add(ctx context.Context, ref string, bin []byte, pages uint32, lim config.Limits, charge chargeFunc) (*module, error) {
	// Anything that is not a binary is taken for WebAssembly text, which
	// the compile process converts (the manager reads no more of it).
	text := !compiler.IsBinary(bin)
	if !text && len(bin) < 8 {
		return nil, fmt.Errorf("load %s: %w: not a WebAssembly binary module (too short)", ref, errInvalidModule)
	}
	if text && s.wat2wasm == "" {
		return nil, fmt.Errorf("load %s: %w: %s", ref, errInvalidModule, errNoWat2wasm)
	}
	sum := sha256.Sum256(bin)
	key := hex.EncodeToString(sum[:])
	m := &module{ref: ref, key: key, path: filepath.Join(s.dir, key+".wasm"), size: len(bin)}
	if text {
		m.text = compiler.TextBinaryPath(s.cacheDir, key)
	}
	if reason := s.badReason(key, pages, lim); reason != "" {
		return nil, &badModuleError{ref: ref, key: key, reason: reason}
	}
	if err := writeAtomic(m.path, bin); err != nil {
		return nil, fmt.Errorf("load %s: store: %w", ref, err)
	}
	res, err := s.compile(ctx, key, m.path, pages, lim, charge)
	if err != nil {
		var bad *badModuleError
		if errors.As(err, &bad) {
			// Shared by every load of the flight: name this one's ref
			// on a copy.
			named := *bad
			named.ref = ref
			err = &named
		} else {
			err = fmt.Errorf("load %s: %w", ref, err)
		}
		return nil, err
	}
	m.code = res.Code
	m.exports = map[string]bool{}
	for _, name := range res.Exports {
		m.exports[name] = true
	}
	return m, nil
}

// compile has the module at path (whose content hash is key) compiled,
// sharing one compile among concurrent callers for the same key and
// memory limit. The compile goes on when a caller gives up waiting: its
// outcome is remembered (a bad mark, or a cache entry), and its CPU
// charged, either way.
func (s *store) compile(ctx context.Context, key, path string, pages uint32, lim config.Limits, charge chargeFunc) (*compiler.Result, error) {
	fk := key + "/" + strconv.FormatUint(uint64(pages), 10)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errCompileStopped
	}
	f, ok := s.flights[fk]
	if !ok {
		f = &compileFlight{done: make(chan struct{})}
		s.flights[fk] = f
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			f.res, f.err = s.compileOnce(key, path, pages, lim, charge)
			s.mu.Lock()
			delete(s.flights, fk)
			s.mu.Unlock()
			close(f.done)
		}()
	}
	s.mu.Unlock()
	select {
	case <-f.done:
		return f.res, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// errCompileStopped is the answer to a load while the manager stops.
var errCompileStopped = errors.New("compiling stopped: the manager is shutting down")

// compilePoll is how often a compile process's CPU clock is read; the
// compile_cpu limit is overshot by about this much.
const compilePoll = 10 * time.Millisecond

// compileOnce runs one compile process and turns what became of it into a
// result, a bad mark, or an error that is not the module's fault.
func (s *store) compileOnce(key, path string, pages uint32, lim config.Limits, charge chargeFunc) (*compiler.Result, error) {
	select {
	case s.slots <- struct{}{}:
	case <-s.life.Done():
		return nil, errCompileStopped
	}
	defer func() { <-s.slots }()

	run, err := s.startCompile(path, pages, lim)
	if err != nil {
		return nil, err
	}
	log := s.log.With("key", key[:12], "pid", run.cmd.Process.Pid)
	log.Info("compiling module", "compile_cpu", lim.CompileCPU, "compile_timeout", lim.CompileTimeout,
		"compile_memory", lim.CompileMemory)
	killed := run.watch(s.life, lim)
	cpu := cpuacct.Reaped(run.cmd.ProcessState)
	if charge != nil {
		charge(key, cpu+run.spawnCPU)
	}
	peak := peakRSS(run.cmd.ProcessState)
	attrs := []any{"cpu", cpu.Round(time.Microsecond), "wall", run.wall.Round(time.Microsecond), "peak_rss", peak}

	var reason, limit string
	var res *compiler.Result
	switch {
	case killed == "shutdown":
		log.Info("compile killed: shutting down", attrs...)
		return nil, errCompileStopped
	case killed == "compile_cpu":
		reason, limit = fmt.Sprintf("compiling used more than compile_cpu (%s) of CPU", lim.CompileCPU), killed
	case killed == "compile_timeout":
		reason, limit = fmt.Sprintf("compiling took longer than compile_timeout (%s)", lim.CompileTimeout), killed
	case signaled(run.cmd.ProcessState, syscall.SIGXCPU) ||
		signaled(run.cmd.ProcessState, syscall.SIGKILL) && cpu >= lim.CompileCPU:
		// RLIMIT_CPU, the backstop to the polling above.
		reason, limit = fmt.Sprintf("compiling used more than compile_cpu (%s) of CPU", lim.CompileCPU), "compile_cpu"
	case run.stdout.over.Load():
		reason = fmt.Sprintf("the compile result is larger than %d bytes", compiler.MaxResultBytes)
	case run.cmd.ProcessState.ExitCode() != 0:
		reason = fmt.Sprintf("the compile process failed (%s)", exitText(run.cmd.ProcessState))
		if msg := firstLine(run.stderr.Bytes()); msg != "" {
			reason += ": " + msg
		}
		if strings.Contains(run.stderr.String(), "out of memory") || strings.Contains(run.stderr.String(), "cannot allocate memory") {
			reason = fmt.Sprintf("compiling needed more than compile_memory (%s): %s", config.FormatSize(lim.CompileMemory), reason)
			limit = "compile_memory"
		}
	default:
		res, err = compiler.Decode(bytes.NewReader(run.stdout.Bytes()))
		switch {
		case err != nil:
			reason = err.Error()
		case res.Status == compiler.Failed:
			log.Error("compile process could not work", append(attrs, "err", res.Reason)...)
			return nil, fmt.Errorf("compile: %s", res.Reason)
		case res.Key != key:
			reason = "the compile result is for other bytes"
		case res.Status == compiler.Invalid:
			reason = res.Reason
			if strings.Contains(reason, "cannot allocate memory") {
				// wazero maps its code buffers itself: RLIMIT_AS
				// shows as a failed mmap, not as a crash.
				reason = fmt.Sprintf("compiling needed more than compile_memory (%s): %s", config.FormatSize(lim.CompileMemory), reason)
				limit = "compile_memory"
			}
		}
	}
	if reason != "" {
		log.Warn("module remembered as bad", append(attrs, "reason", reason)...)
		if err := s.markBad(key, reason, limit, pages, lim); err != nil {
			log.Error("recording a bad module", "err", err)
		}
		return nil, &badModuleError{key: key, reason: reason}
	}
	log.Info("module compiled", attrs...)
	_ = os.Remove(s.badFile(key)) // compiled under higher limits than its mark
	// The compile process made its entry readable itself: the manager
	// does not walk a directory the compile uid could rearrange under it.
	return res, nil
}

// compileRun is one compile process.
type compileRun struct {
	cmd    *exec.Cmd
	stdout *capBuffer
	stderr *capBuffer
	wall   time.Duration
	exited chan struct{}
	// spawnCPU is what starting it cost the manager's spawning thread.
	spawnCPU time.Duration
}

// startCompile starts `wagi-fcgi compile` the way children are started:
// from the spawner's thread (no_new_privs, PR_SET_PDEATHSIG), with an empty
// environment, in its own process group; it sets its own rlimits and
// no-dump before reading the module.
func (s *store) startCompile(path string, pages uint32, lim config.Limits) (*compileRun, error) {
	args := append(append([]string(nil), s.command[1:]...),
		"--cache", s.cacheDir,
		"--pages", strconv.FormatUint(uint64(pages), 10),
		"--memory", strconv.FormatInt(lim.CompileMemory, 10),
		"--cpu", lim.CompileCPU.String(),
		"--max-size", strconv.FormatInt(s.maxSize, 10))
	if s.wat2wasm != "" {
		args = append(args, "--wat2wasm", s.wat2wasm)
	}
	args = append(args, path)
	cmd := exec.Command(s.command[0], args...)
	cmd.Env = []string{}
	cmd.Dir = "/"
	// What it writes is bounded here, not by its good manners.
	run := &compileRun{cmd: cmd, stdout: &capBuffer{limit: compiler.MaxResultBytes}, stderr: &capBuffer{limit: 4096}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = run.stdout, run.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL,
		Setpgid:   true, // a terminal's ^C reaches the manager, which decides
	}
	s.mu.Lock()
	if o := s.owner; o != nil {
		// As the compile uid, never root and never the children's user:
		// it alone writes the cache, which children only read (the
		// spawner left root no capability but CAP_SETUID; see
		// sandbox.SpawnerThread).
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(o[0]), Gid: uint32(o[1]), Groups: []uint32{}}
	}
	s.mu.Unlock()
	// Wait returns even if something kept the output pipes open.
	cmd.WaitDelay = time.Second
	spawnCPU, err := s.sp.start(s.life, cmd)
	run.spawnCPU = spawnCPU
	if err != nil {
		if s.life.Err() != nil {
			return nil, errCompileStopped
		}
		return nil, fmt.Errorf("start compile process: %w", err)
	}
	start := time.Now()
	go func() {
		_ = cmd.Wait()
		run.wall = time.Since(start)
		close(run.exited)
	}()
	return run, nil
}

// watch enforces the compile limits until the process exits: CPU by its
// process CPU clock, wall time, and the end of life. It returns why it
// killed the process, or "".
func (r *compileRun) watch(life context.Context, lim config.Limits) string {
	pid := r.cmd.Process.Pid
	start := time.Now()
	tick := time.NewTicker(compilePoll)
	defer tick.Stop()
	killed := ""
	kill := func(why string) {
		if killed == "" {
			killed = why
			// The process group: a wat2wasm it runs goes too.
			if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
				_ = r.cmd.Process.Signal(syscall.SIGKILL)
			}
		}
	}
	for {
		select {
		case <-r.exited:
			return killed
		case <-life.Done():
			kill("shutdown")
		case <-tick.C:
			if killed != "" {
				continue
			}
			if r.stdout.over.Load() {
				// Past what will be read: failed already, stop its work.
				kill("output")
			} else if lim.CompileTimeout > 0 && time.Since(start) > lim.CompileTimeout {
				kill("compile_timeout")
			} else if used, err := cpuacct.ProcessCPU(pid); err == nil && lim.CompileCPU > 0 && used > lim.CompileCPU {
				kill("compile_cpu")
			}
		}
	}
}

// capBuffer keeps the first limit bytes written to it and drops the rest,
// so a compile process cannot make the manager hold more. (It must not
// embed bytes.Buffer: os/exec would find its ReadFrom and copy everything
// past Write.)
type capBuffer struct {
	buf   bytes.Buffer
	limit int
	over  atomic.Bool // read by watch while the copy goroutine writes
}

func (b *capBuffer) Write(p []byte) (int, error) {
	if room := b.limit - b.buf.Len(); room < len(p) {
		b.over.Store(true)
		b.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *capBuffer) Bytes() []byte  { return b.buf.Bytes() }
func (b *capBuffer) String() string { return b.buf.String() }

// firstLine is the first non-empty line of a compile process's stderr, made
// safe for a log line and an error message.
func firstLine(b []byte) string {
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return compiler.CleanReason(l)[:min(len(compiler.CleanReason(l)), 200)]
		}
	}
	return ""
}

// signaled reports whether the process was ended by sig.
func signaled(ps *os.ProcessState, sig syscall.Signal) bool {
	ws, ok := ps.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// peakRSS is the most resident memory a reaped process had, in bytes.
func peakRSS(ps *os.ProcessState) int64 {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss << 10
	}
	return 0
}

// badMark is what state_dir/bad/<key> says about a module that could not be
// compiled: why, and under which limits. It is written only by the
// manager.
type badMark struct {
	Reason         string    `json:"reason"`
	Limit          string    `json:"limit,omitempty"` // the compile limit it broke, if any
	CompileCPU     string    `json:"compile_cpu"`
	CompileTimeout string    `json:"compile_timeout"`
	CompileMemory  int64     `json:"compile_memory"`
	MemoryPages    uint32    `json:"memory_pages"`
	Time           time.Time `json:"time"`
}

func (s *store) badFile(key string) string { return filepath.Join(s.badDir, key) }

func (s *store) markBad(key, reason, limit string, pages uint32, lim config.Limits) error {
	b, err := json.Marshal(badMark{
		Reason: reason, Limit: limit,
		CompileCPU: lim.CompileCPU.String(), CompileTimeout: lim.CompileTimeout.String(), CompileMemory: lim.CompileMemory,
		MemoryPages: pages, Time: time.Now().UTC(),
	})
	if err != nil {
		return err
	}
	return replaceFile(s.badFile(key), append(b, '\n'), 0o600)
}

// badReason says why the module with key is remembered as bad, or "" when
// it is not, or when its mark was made under smaller limits than these (it
// is then compiled again, once: a second failure marks it under these).
func (s *store) badReason(key string, pages uint32, lim config.Limits) string {
	f, err := os.Open(s.badFile(key))
	if err != nil {
		return ""
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	var mark badMark
	if err != nil || json.Unmarshal(b, &mark) != nil {
		return ""
	}
	cpu, err1 := time.ParseDuration(mark.CompileCPU)
	wall, err2 := time.ParseDuration(mark.CompileTimeout)
	if err1 != nil || err2 != nil {
		return ""
	}
	if lim.CompileCPU > cpu || lim.CompileTimeout > wall || lim.CompileMemory > mark.CompileMemory || pages > mark.MemoryPages {
		return ""
	}
	return fmt.Sprintf("remembered as bad since %s: %s (under compile_cpu=%s compile_timeout=%s compile_memory=%s; raise them, or remove %s, to try again)",
		mark.Time.Format(time.RFC3339), mark.Reason, mark.CompileCPU, mark.CompileTimeout,
		config.FormatSize(mark.CompileMemory), s.badFile(key))
}

// indexFile is where the module key of a source name or content identity
// (an IPFS path, an OCI reference, a URL with its digest; see
// modsource.Source) is remembered.
func (s *store) indexFile(ipfsPath string) string {
	sum := sha256.Sum256([]byte(ipfsPath))
	return filepath.Join(s.indexDir, hex.EncodeToString(sum[:]))
}

// remember records that ipfsPath holds the module with key, so a restart
// serves it without asking the node.
func (s *store) remember(ipfsPath, key string) error {
	return replaceFile(s.indexFile(ipfsPath), []byte(key+"\n"+ipfsPath+"\n"), 0o600)
}

// replaceFile writes data to path through a temporary file and a rename.
func replaceFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "tmp.*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), mode)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}

// cachedRef loads the module remembered for ipfsPath, checking its bytes
// against their hash (the file name). It returns nil, nil when nothing
// usable is cached; a corrupt copy is removed. A module remembered as bad
// is refused before its bytes are read.
func (s *store) cachedRef(ctx context.Context, ipfsPath, ref string, pages uint32, lim config.Limits, charge chargeFunc) (*module, error) {
	b, err := os.ReadFile(s.indexFile(ipfsPath))
	if err != nil {
		return nil, nil
	}
	key, rest, _ := strings.Cut(string(b), "\n")
	if strings.TrimSuffix(rest, "\n") != ipfsPath || len(key) != 64 {
		return nil, nil
	}
	if reason := s.badReason(key, pages, lim); reason != "" {
		return nil, &badModuleError{ref: ref, key: key, reason: reason}
	}
	path := filepath.Join(s.dir, key+".wasm")
	bin, err := os.ReadFile(path)
	if err != nil {
		return nil, nil
	}
	sum := sha256.Sum256(bin)
	if hex.EncodeToString(sum[:]) != key {
		_ = os.Remove(path) // corrupt: fetch it again
		return nil, nil
	}
	return s.add(ctx, ref, bin, pages, lim, charge)
}

// checkDir fails unless path is a directory.
func checkDir(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", path)
	}
	return nil
}

// compileAs makes compiles run as uid and gid, and the compilation cache
// theirs: children run as another user and may only read it (wazero
// checks a cache entry with nothing but a CRC, so a child that could write
// one could plant native code that other children then run).
func (s *store) compileAs(uid, gid int) error {
	// wazero keeps its entries in a subdirectory named for its version,
	// made by whoever opens the cache first: made here, so that children,
	// which may not write the cache, can open it before anything compiled.
	c, err := wazero.NewCompilationCacheWithDir(s.cacheDir)
	if err != nil {
		return fmt.Errorf("compilation cache %s: %w", s.cacheDir, err)
	}
	_ = c.Close(context.Background())
	s.mu.Lock()
	defer s.mu.Unlock()
	s.owner = &[2]int{uid, gid}
	return s.chownCacheLocked()
}

// chownCacheLocked gives the cache to the compile user, read-only to
// everyone else (directories 0755, files 0644). It runs as root over a
// directory another uid owns, so it goes by descriptors and never follows
// a link: a directory swapped for a symlink to /etc under it is not
// entered. Callers hold mu.
func (s *store) chownCacheLocked() error {
	if s.owner == nil {
		return nil
	}
	fd, err := unix.Open(s.cacheDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("compilation cache: %w", err)
	}
	if err := chownTree(fd, s.owner[0], s.owner[1], 0); err != nil {
		return fmt.Errorf("compilation cache: %w", err)
	}
	return nil
}

// chownTree sets owner and mode on the directory open at fd and on all
// below it, by descriptor, never following a link, and leaving alone a
// file with more than one link (a hard link to a file outside the cache).
// It closes fd.
func chownTree(fd, uid, gid, depth int) error {
	dir := os.NewFile(uintptr(fd), "cache")
	defer dir.Close()
	if depth > 8 {
		// Deeper than anything wazero or the compile process makes:
		// the compile user's own doing, left as it is (an error here
		// would stop the manager from starting).
		return nil
	}
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, 0o755); err != nil {
		return err
	}
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, name := range names {
		cfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENXIO) {
			continue // a link (never followed), gone meanwhile, or a socket
		}
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstat(cfd, &st); err != nil {
			unix.Close(cfd)
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if err := chownTree(cfd, uid, gid, depth+1); err != nil {
				return err
			}
		case unix.S_IFREG:
			if st.Nlink != 1 {
				// A hard link to a file elsewhere (root's, where
				// fs.protected_hardlinks is 0): not the cache's to
				// give away. Cache files are written and renamed.
				unix.Close(cfd)
				continue
			}
			err := unix.Fchown(cfd, uid, gid)
			if err == nil {
				err = unix.Fchmod(cfd, 0o644)
			}
			unix.Close(cfd)
			if err != nil {
				return err
			}
		default:
			unix.Close(cfd)
		}
	}
	return nil
}

// writeAtomic writes data to path through a temporary file and a rename, so
// a child never reads a half-written module. An existing file is kept: the
// name is the content hash.
func writeAtomic(path string, data []byte) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	return nil
}
