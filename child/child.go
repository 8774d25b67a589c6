// Package child is the child process's side of wagi-fcgi: it runs guest
// modules, one request at a time, on behalf of the manager.
//
// A child is the same binary started as `wagi-fcgi child` with one end of a
// socketpair as fd 3. It reads Run frames, compiles modules through the
// wazero file compilation cache that the manager has already filled (so a
// compile here is a file read and an mmap), instantiates a fresh module
// instance for every request, and streams the guest's stdout and stderr back
// as frames. It never owns a client connection: if the manager kills it in
// the middle of a request, the manager still answers the client.
//
// Limits on time and CPU are not enforced here. Compiled wasm code cannot be
// pre-empted inside its own process, so the manager watches each child from
// outside and kills it with SIGKILL; see manager/RATIONALE.md.
package child

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"syscall"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	esys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/experimental/sysfs"
	"github.com/tetratelabs/wazero/sys"

	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wasmbound"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wasmhost"
	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// Options configure a child.
type Options struct {
	// CacheDir is the wazero compilation cache directory shared with the
	// manager. Empty means no file cache (every module is compiled anew).
	CacheDir string
	// MaxModules bounds the compiled modules kept per child; the least
	// recently used one is closed beyond it. 0 means 64.
	MaxModules int
	Logger     *slog.Logger
	// Fast, when set, puts the child on the fast path: between frames of
	// the manager it answers requests from the web server's connections
	// itself (see FastFDs). IPCFD is conn's descriptor.
	Fast  *FastFDs
	IPCFD int
}

// ioBufferSize is how much guest output a child collects before it sends a
// frame. Output is committed to the client by the manager anyway, so a
// larger buffer only saves syscalls.
const ioBufferSize = 32 << 10

// Serve runs the child loop on conn until conn is closed (the manager's way
// of retiring a child) or ctx is done. It sends Ready first.
func Serve(ctx context.Context, conn io.ReadWriter, opts Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxModules <= 0 {
		opts.MaxModules = 64
	}
	e, err := newEngine(ctx, opts)
	if err != nil {
		return err
	}
	defer e.close(ctx)

	r := ipc.NewReader(conn, 64<<10)
	w := ipc.NewWriter(conn, ioBufferSize+64)
	if err := w.WriteFrame(ipc.TypeReady, nil); err != nil {
		return fmt.Errorf("child: send ready: %w", err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("child: send ready: %w", err)
	}
	var fp *fastPath
	if opts.Fast != nil {
		if fp, err = newFastPath(e, *opts.Fast, opts.IPCFD); err != nil {
			return fmt.Errorf("child: fast path: %w", err)
		}
	}
	var run ipc.Run
	var doneBuf []byte
	held := false // borrowed: no request from a connection until the next Done
	for {
		if fp != nil && !held && r.Buffered() == 0 {
			if err := fp.waitIPC(ctx); err != nil {
				return err
			}
		}
		t, p, err := r.ReadFrame()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("child: read: %w", err)
		}
		var done ipc.Done
		switch t {
		case ipc.TypeRun:
			if err := ipc.DecodeRun(p, &run); err != nil {
				return fmt.Errorf("child: %w", err)
			}
			// A large body follows in Stdin frames; the guest gets it
			// as stdin all the same.
			if err := ipc.ReadBody(r, &run); err != nil {
				return fmt.Errorf("child: %w", err)
			}
			done = e.run(ctx, &run, w)
		case ipc.TypeRoutes:
			routes, err := ipc.DecodeRoutes(p)
			if err != nil || fp == nil {
				return fmt.Errorf("child: routes: %v", err)
			}
			fp.setRoutes(routes)
			done = ipc.Done{Outcome: ipc.OutcomeOK}
		case ipc.TypeBorrow:
			// The manager wants this child: frames are read between
			// requests, so none from a connection is running; serve
			// frames until the next Done.
			if fp != nil {
				fp.slot.SetHeld(true)
			}
			if err := w.WriteFrame(ipc.TypeHeld, nil); err != nil {
				return fmt.Errorf("child: send held: %w", err)
			}
			if err := w.Flush(); err != nil {
				return fmt.Errorf("child: send held: %w", err)
			}
			held = true
			continue
		case ipc.TypePreload:
			mods, err := ipc.DecodePreload(p)
			if err != nil {
				return fmt.Errorf("child: %w", err)
			}
			e.dropSpare(ctx)
			done = e.preload(ctx, mods)
		default:
			return fmt.Errorf("child: unexpected %s frame", t)
		}
		doneBuf = ipc.AppendDone(doneBuf[:0], &done)
		if err := w.WriteFrame(ipc.TypeDone, doneBuf); err != nil {
			return fmt.Errorf("child: send done: %w", err)
		}
		if err := w.Flush(); err != nil {
			return fmt.Errorf("child: send done: %w", err)
		}
		if fp != nil && held {
			held = false
			fp.slot.SetHeld(false)
		}
		// The response is out: make the next request's instance now.
		e.prepareSpare(ctx)
	}
}

// engine owns the wazero runtimes of a child. Memory limits are a property
// of a wazero Runtime (applied when a module is compiled), so there is one
// Runtime per distinct limit; all of them share the file cache.
type engine struct {
	opts     Options
	cache    wazero.CompilationCache
	runtimes map[uint32]*runtimeEntry
	// uncached are Runtimes without the file cache, made only for modules
	// the (read-only) cache misses.
	uncached map[uint32]*runtimeEntry
	ipfs     map[string]*ipfs.Client // by MFS proxy address, for MFS volumes
	base     wazero.ModuleConfig
	lru      []moduleRef // least recently used first
	memory   *memoryPool
	// stdin, stdout and stderr of the request being run.
	stdin          bytes.Reader
	stdout, stderr frameWriter
	spare          spareState // the next request's instance (spare.go)
}

type runtimeEntry struct {
	rt      wazero.Runtime
	modules map[string]wazero.CompiledModule
}

type moduleRef struct {
	pages uint32
	key   string
}

func newEngine(ctx context.Context, opts Options) (*engine, error) {
	e := &engine{opts: opts, runtimes: map[uint32]*runtimeEntry{}, uncached: map[uint32]*runtimeEntry{}, ipfs: map[string]*ipfs.Client{}, memory: &memoryPool{}}
	if opts.CacheDir != "" {
		c, err := wazero.NewCompilationCacheWithDir(opts.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("child: compilation cache %s: %w", opts.CacheDir, err)
		}
		e.cache = c
	}
	// Real clocks and randomness: the defaults are deterministic fakes meant
	// for reproducible tests, which a web application must not get.
	e.base = wazero.NewModuleConfig().
		WithName("").
		WithSysWalltime().
		WithSysNanotime().
		WithSysNanosleep().
		WithRandSource(rand.Reader)
	return e, nil
}

func (e *engine) close(ctx context.Context) {
	for _, re := range e.uncached {
		_ = re.rt.Close(ctx)
	}
	for _, re := range e.runtimes {
		_ = re.rt.Close(ctx)
	}
	if e.cache != nil {
		_ = e.cache.Close(ctx)
	}
}

func (e *engine) runtime(ctx context.Context, pages uint32) (*runtimeEntry, error) {
	return e.runtimeIn(ctx, e.runtimes, e.cache, pages)
}

// runtimeUncached is the Runtime for pages without the file cache, for
// modules the cache misses.
func (e *engine) runtimeUncached(ctx context.Context, pages uint32) (*runtimeEntry, error) {
	return e.runtimeIn(ctx, e.uncached, nil, pages)
}

func (e *engine) runtimeIn(ctx context.Context, in map[uint32]*runtimeEntry, cache wazero.CompilationCache, pages uint32) (*runtimeEntry, error) {
	if re, ok := in[pages]; ok {
		return re, nil
	}
	rt, _, err := wasmhost.NewRuntime(ctx, cache, pages, hostImpl)
	if err != nil {
		return nil, fmt.Errorf("instantiate host modules: %w", err)
	}
	re := &runtimeEntry{rt: rt, modules: map[string]wazero.CompiledModule{}}
	in[pages] = re
	return re, nil
}

// module returns the compiled module for m, compiling it in the Runtime for
// m's memory limit. Compiling in the same Runtime that instantiates avoids
// wazero v1.12.0 bug #2511 (a CompiledModule used across Runtimes can fail
// import matching).
func (e *engine) module(ctx context.Context, m *ipc.Run) (wazero.Runtime, wazero.CompiledModule, error) {
	re, err := e.runtime(ctx, m.MemoryPages)
	if err != nil {
		return nil, nil, err
	}
	ref := moduleRef{pages: m.MemoryPages, key: m.ModuleKey}
	if cm, ok := re.modules[m.ModuleKey]; ok {
		e.touch(ref)
		return re.rt, cm, nil
	}
	if ure, ok := e.uncached[m.MemoryPages]; ok {
		if cm, ok := ure.modules[m.ModuleKey]; ok {
			e.touch(ref)
			return ure.rt, cm, nil
		}
	}
	bin, err := readModuleFile(m.ModulePath)
	if err != nil {
		return nil, nil, fmt.Errorf("read module: %w", err)
	}
	// The same bounds as the manager's, on the same stored bytes: the same
	// bytes are compiled, so the compilation cache hits.
	if bin, err = wasmbound.Apply(bin, wasmbound.Default); err != nil {
		return nil, nil, fmt.Errorf("bound module: %w", err)
	}
	cm, err := re.rt.CompileModule(ctx, bin)
	if err != nil && e.cache != nil && cacheWriteFailed(err) {
		// The cache is the compile process's and read-only here: a miss
		// (an entry evicted or damaged) cannot be written back, so this
		// child compiles the module for itself, in a Runtime without the
		// file cache (which then also instantiates it: wazero #2511).
		if re, err = e.runtimeUncached(ctx, m.MemoryPages); err == nil {
			e.opts.Logger.Warn("compilation cache miss; compiling without it", "module", m.ModuleKey)
			cm, err = re.rt.CompileModule(ctx, bin)
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("compile module: %w", err)
	}
	re.modules[m.ModuleKey] = cm
	e.lru = append(e.lru, ref)
	if len(e.lru) > e.opts.MaxModules {
		old := e.lru[0]
		e.lru = e.lru[1:]
		for _, ore := range []*runtimeEntry{e.runtimes[old.pages], e.uncached[old.pages]} {
			if ore == nil {
				continue
			}
			if ocm, ok := ore.modules[old.key]; ok {
				_ = ocm.Close(ctx)
				delete(ore.modules, old.key)
			}
		}
	}
	return re.rt, cm, nil
}

// cacheWriteFailed reports whether a compile failed because the file
// cache could not be written (or a damaged entry removed): wazero returns
// the file system's error as it is.
func cacheWriteFailed(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) || strings.Contains(err.Error(), "compilationcache")
}

func (e *engine) touch(ref moduleRef) {
	for i, r := range e.lru {
		if r == ref {
			copy(e.lru[i:], e.lru[i+1:])
			e.lru[len(e.lru)-1] = ref
			return
		}
	}
}

// preload compiles modules ahead of their first request (from the file
// cache, so it is cheap), so a fresh child answers as fast as an old one.
// A module that fails is reported and skipped; its request will say why.
func (e *engine) preload(ctx context.Context, mods []ipc.Module) ipc.Done {
	var failed []string
	for _, m := range mods {
		if _, _, err := e.module(ctx, &ipc.Run{ModuleKey: m.Key, ModulePath: m.Path, MemoryPages: m.MemoryPages}); err != nil {
			failed = append(failed, m.Key+": "+err.Error())
		}
	}
	if len(failed) > 0 {
		return ipc.Done{Outcome: ipc.OutcomeLoad, Message: strings.Join(failed, "; ")}
	}
	return ipc.Done{Outcome: ipc.OutcomeOK}
}

// run runs one request to the end and reports how it ended. Output goes to
// w as frames (flushed before it returns), unless the run inherits stdio.
func (e *engine) run(ctx context.Context, m *ipc.Run, w *ipc.Writer) ipc.Done {
	return e.runWith(ctx, m, w, nil, nil)
}

// runTo runs m with the guest's stdout and stderr going to out and errw
// (the fast path's) instead of frames.
func (e *engine) runTo(ctx context.Context, m *ipc.Run, out, errw io.Writer) ipc.Done {
	return e.runWith(ctx, m, nil, out, errw)
}

func (e *engine) runWith(ctx context.Context, m *ipc.Run, w *ipc.Writer, out, errw io.Writer) ipc.Done {
	spare, spareCM := e.takeSpare(ctx, m)
	rt, cm, err := e.module(ctx, m)
	if spare != nil && (err != nil || cm != spareCM) {
		_ = spare.Close(ctx)
		spare = nil
	}
	if err != nil {
		return ipc.Done{Outcome: ipc.OutcomeLoad, Message: err.Error()}
	}

	var cfg wazero.ModuleConfig // a spare has its own
	if spare == nil {
		cfg = e.base.WithArgs(m.Args...)
	}
	ctx = withEnviron(ctx, m.Env)
	ctx = withHTTP(ctx, m.HTTPProxy, m.HTTPGrant)
	var stdout, stderr *frameWriter
	if m.InheritStdio {
		cfg = cfg.WithStdin(os.Stdin).WithStdout(os.Stdout).WithStderr(os.Stderr)
	} else {
		// The writers and their buffers are the engine's, reused by
		// every request: a fresh 32 KiB buffer per request was most of
		// what the child allocated, and so most of its GC.
		stdout, stderr = &e.stdout, &e.stderr
		stdout.reset(ipc.TypeStdout, w, -1)
		stderr.reset(ipc.TypeStderr, w, int64(m.StderrCap))
		stdout.sink, stderr.sink = out, errw
		e.stdin.Reset(m.Stdin)
		if spare == nil {
			cfg = cfg.WithStdin(&e.stdin).WithStdout(stdout).WithStderr(stderr)
		}
	}
	if len(m.Mounts) > 0 {
		// Volumes are jailed: wazero's own DirFS follows symlinks out of
		// the directory (see volumefs.go).
		fsc := wazero.NewFSConfig()
		for _, mt := range m.Mounts {
			vfs, err := e.volume(mt, m.MFSGrant)
			if err != nil {
				return ipc.Done{Outcome: ipc.OutcomeLoad, Message: fmt.Sprintf("volume %s: %v", mt.Guest, err)}
			}
			fsc = fsc.(sysfs.FSConfig).WithSysFSMount(vfs, mt.Guest)
		}
		cfg = cfg.WithFSConfig(fsc)
	}

	done := e.call(ctx, rt, cm, cfg, spare, m.Entrypoint)
	if done.Outcome != ipc.OutcomeNoEntrypoint {
		e.ranRequest(m, rt, cm, spare != nil)
	}
	if stdout != nil {
		// A failed flush means the manager is gone; Serve notices on the
		// next frame it writes.
		// The last output goes out with Done, in one write: Serve
		// flushes after the Done frame.
		_ = stdout.frame()
		_ = stderr.frame()
	}
	return done
}

// volume returns the file system for a mount: a jailed host directory, or
// a directory in MFS, reached through the manager's MFS proxy (mt.Host; one
// client per proxy, kept for the child's life) with this run's grant token.
func (e *engine) volume(mt ipc.Mount, grant string) (esys.FS, error) {
	if mt.Kind != ipc.MountMFS {
		return NewVolumeFSWithQuota(mt.Host, mt.ReadOnly, Quota{Bytes: clampQuota(mt.QuotaBytes), Files: clampQuota(mt.QuotaFiles)})
	}
	c, ok := e.ipfs[mt.Host]
	if !ok {
		var err error
		if c, err = ipfs.New(mt.Host); err != nil {
			return nil, err
		}
		e.ipfs[mt.Host] = c
	}
	c, err := c.WithHeader(ipc.MFSGrantHeader, grant)
	if err != nil {
		return nil, err
	}
	return ipfs.NewMFS(c, mt.MFSPath, ipfs.MFSOptions{QuotaBytes: clampQuota(mt.QuotaBytes), QuotaFiles: clampQuota(mt.QuotaFiles)})
}

// call runs cm's entrypoint in spare, an instance of cm made ahead of the
// request (spare.go), or else in an instance of cm it makes with cfg.
// "_start" is the WASI command entry and runs as the start function; any
// other entrypoint is called as a nullary export after the reactor
// initialiser (_initialize) if there is one, which is what WAGI did.
func (e *engine) call(ctx context.Context, rt wazero.Runtime, cm wazero.CompiledModule, cfg wazero.ModuleConfig, spare api.Module, entry string) ipc.Done {
	if entry == "" {
		entry = "_start"
	}
	if _, ok := cm.ExportedFunctions()[entry]; !ok {
		if spare != nil {
			_ = spare.Close(ctx)
		}
		return ipc.Done{Outcome: ipc.OutcomeNoEntrypoint, Message: fmt.Sprintf("module has no exported function %q", entry)}
	}
	mod := spare
	if mod == nil {
		var err error
		if mod, err = e.instantiate(ctx, rt, cm, cfg); err != nil {
			return outcome(err)
		}
	}
	return runInstance(ctx, mod, entry)
}

// outcome classifies the error of a finished guest call.
func outcome(err error) ipc.Done {
	if err == nil {
		return ipc.Done{Outcome: ipc.OutcomeOK}
	}
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		if exit.ExitCode() == 0 {
			// proc_exit(0) is success: every Go wasip1 program ends with it.
			return ipc.Done{Outcome: ipc.OutcomeOK}
		}
		return ipc.Done{Outcome: ipc.OutcomeExit, ExitCode: exit.ExitCode(), Message: err.Error()}
	}
	return ipc.Done{Outcome: ipc.OutcomeTrap, Message: err.Error()}
}

// frameWriter turns guest writes into frames of at most ioBufferSize bytes.
// Guest code runs on the Serve goroutine, so no locking is needed.
type frameWriter struct {
	t       ipc.Type
	w       *ipc.Writer
	buf     []byte
	limit   int64 // bytes to forward; -1 = all
	written int64
	dropped bool
	// sink, when set, takes every write as it comes instead of frames
	// (the fast path's request).
	sink io.Writer
}

// reset prepares f for a new request, keeping its buffer.
func (f *frameWriter) reset(t ipc.Type, w *ipc.Writer, limit int64) {
	*f = frameWriter{t: t, w: w, buf: f.buf[:0], limit: limit}
}

func (f *frameWriter) Write(p []byte) (int, error) {
	if f.sink != nil {
		return f.sink.Write(p)
	}
	n := len(p)
	if f.limit >= 0 {
		room := f.limit - f.written
		if room <= 0 {
			if !f.dropped {
				// Say so at once: a flooding guest is usually killed
				// before it ends, and the note must reach the log.
				f.dropped = true
				f.buf = append(f.buf, "\n[wagi-fcgi: stderr limit reached, rest dropped]\n"...)
				if err := f.flush(); err != nil {
					return 0, err
				}
			}
			return n, nil
		}
		if int64(len(p)) > room {
			p = p[:room]
		}
	}
	f.written += int64(len(p))
	for len(p) > 0 {
		if f.buf == nil {
			f.buf = make([]byte, 0, ioBufferSize)
		}
		k := copy(f.buf[len(f.buf):cap(f.buf)], p)
		f.buf = f.buf[:len(f.buf)+k]
		p = p[k:]
		if len(f.buf) == cap(f.buf) {
			if err := f.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (f *frameWriter) flush() error {
	if err := f.frame(); err != nil {
		return err
	}
	return f.w.Flush()
}

// frame puts what is buffered into a frame without flushing the socket.
func (f *frameWriter) frame() error {
	if len(f.buf) == 0 || f.sink != nil {
		return nil
	}
	if err := f.w.WriteFrame(f.t, f.buf); err != nil {
		return err
	}
	f.buf = f.buf[:0]
	return nil
}

// readModuleFile reads a module's bytes. A text module's binary is in the
// compilation cache, which the compile user writes: a FIFO there is
// refused, not waited on (every fresh child preloads every module).
func readModuleFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s)", path, st.Mode().Type())
	}
	return io.ReadAll(f)
}
