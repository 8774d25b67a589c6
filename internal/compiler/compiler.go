// Package compiler is `wagi-fcgi compile`: it validates and compiles one
// untrusted module into the shared wazero file compilation cache, in a
// process of its own, so that a module built to make the compiler spin or
// swell costs that process (which the manager kills on its limits) and
// never the manager.
//
// The manager starts it like a child (empty environment, no_new_privs,
// PR_SET_PDEATHSIG, its own process group) with the module's path and the
// limits it compiles under:
//
//	wagi-fcgi compile --cache DIR --pages N --memory BYTES --cpu DURATION [--max-size BYTES] [--wat2wasm PATH] MODULE
//
// It sets its own address-space and CPU limits before it reads a byte of
// the module, compiles with wasmhost.RuntimeConfig (so the cache entry is
// the one children look up), checks the imports against wasmhost's host
// modules, and writes a small Result on stdout (see Encode). The manager reads at most MaxResultBytes of it and
// treats anything malformed as a failed compile.
package compiler

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/tetratelabs/wazero"
	"golang.org/x/sys/unix"

	"github.com/wagi-fcgi/wagi-fcgi/internal/wasmbound"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wasmhost"
)

// Main is the body of `wagi-fcgi compile`. It returns an error only when it
// could not say anything (bad arguments); every outcome of the compile
// itself is a Result on stdout.
func Main(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("compile", flag.ContinueOnError)
	cacheDir := fs.String("cache", "", "wazero compilation cache `dir`")
	pages := fs.Uint("pages", 0, "guest memory limit in 64 KiB pages (as children run it)")
	memory := fs.Int64("memory", 0, "address-space limit of this process in bytes (RLIMIT_AS); 0 = none")
	cpu := fs.Duration("cpu", 0, "CPU limit of this process (RLIMIT_CPU, rounded up to seconds); 0 = none")
	maxSize := fs.Int64("max-size", 0, "largest module in bytes; 0 = no limit")
	wat2wasm := fs.String("wat2wasm", "", "absolute `path` of wabt's wat2wasm, for WebAssembly text modules; empty = text is refused")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *cacheDir == "" || *pages > 65536 {
		return errors.New("compile needs --cache DIR, --pages N (at most 65536) and one MODULE (it is started by the manager)")
	}
	// One thread of work: the compiler is sequential, and a compile
	// process must not take more than one CPU however many run at once.
	runtime.GOMAXPROCS(1)
	if err := harden(*memory, *cpu); err != nil {
		return fmt.Errorf("compile: %w", err)
	}
	w := bufio.NewWriter(stdout)
	text := textLimits{memory: *memory, cpu: *cpu, output: *maxSize}
	if text.output <= 0 {
		text.output = 1<<31 - 1
	}
	r := compile(ctx, *cacheDir, uint32(*pages), *maxSize, fs.Arg(0), *wat2wasm, text)
	if err := Encode(w, r); err != nil {
		return err
	}
	return w.Flush()
}

// harden applies the limits before any untrusted byte is read: no core
// dumps, not dumpable (no ptrace or /proc/<pid>/mem by the same user), an
// address-space limit, and a CPU limit as a backstop to the manager's
// polling (SIGXCPU at the soft limit, SIGKILL a second later).
func harden(memory int64, cpu time.Duration) error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("rlimit core: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("dumpable: %w", err)
	}
	if cpu > 0 {
		secs := uint64((cpu + time.Second - 1) / time.Second)
		if err := unix.Setrlimit(unix.RLIMIT_CPU, &unix.Rlimit{Cur: secs + 1, Max: secs + 2}); err != nil {
			return fmt.Errorf("rlimit cpu: %w", err)
		}
	}
	if memory > 0 {
		// The Go runtime reserves about 1.5 GiB of address space at
		// start (PROT_NONE, never touched: heap arena and page-summary
		// reservations), so the limit is what is mapped now plus the
		// module's allowance.
		base, err := addressSpace()
		if err != nil {
			return err
		}
		limit := uint64(base + memory)
		if err := unix.Setrlimit(unix.RLIMIT_AS, &unix.Rlimit{Cur: limit, Max: limit}); err != nil {
			return fmt.Errorf("rlimit as: %w", err)
		}
	}
	return nil
}

// addressSpace is this process's mapped address space (VmSize), in bytes.
func addressSpace() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("address space: %w", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmSize:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("address space: %q: %w", l, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("address space: no VmSize in /proc/self/status")
}

// compile does the work; it never fails without a Result.
func compile(ctx context.Context, cacheDir string, pages uint32, maxSize int64, path, wat2wasm string, textLim textLimits) *Result {
	failed := func(err error) *Result { return &Result{Key: zeroKey, Status: Failed, Reason: err.Error()} }
	// The manager wrote the file (by content hash) and checked its size;
	// reading it bounded again costs nothing.
	f, err := os.Open(path)
	if err != nil {
		return failed(fmt.Errorf("open module: %w", err))
	}
	defer f.Close()
	limit := int64(1<<31 - 1)
	if maxSize > 0 {
		limit = maxSize
	}
	bin, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return failed(fmt.Errorf("read module: %w", err))
	}
	sum := sha256.Sum256(bin)
	key := hex.EncodeToString(sum[:])
	invalid := func(format string, a ...any) *Result {
		return &Result{Key: key, Status: Invalid, Reason: fmt.Sprintf(format, a...)}
	}
	if int64(len(bin)) > limit {
		return invalid("larger than max_module_size (%d bytes)", maxSize)
	}
	// Text is converted first, under this process's limits (see wat.go);
	// the key stays the text's, the module's identity.
	var converted []byte
	if !IsBinary(bin) {
		if wat2wasm == "" {
			return failed(errors.New("not a WebAssembly binary, and no wat2wasm was given to read it as WebAssembly text"))
		}
		converted, err = convertText(wat2wasm, bin, textLim)
		if errors.Is(err, errNoConverter) {
			return failed(err)
		}
		if err != nil {
			return invalid("%v", err)
		}
		bin = converted
	}
	cache, err := wazero.NewCompilationCacheWithDir(cacheDir)
	if err != nil {
		return failed(fmt.Errorf("compilation cache %s: %w", cacheDir, err))
	}
	defer func() { _ = cache.Close(ctx) }()
	rt, provided, err := newRuntime(ctx, cache, pages)
	if err != nil {
		return failed(err)
	}
	// What is compiled is the module within wagi-fcgi's bounds (tables
	// capped, counts checked before wazero allocates by them); what the
	// manager stores is the module as given. A child applies the same
	// bounds to it and gets the same bytes, so the compilation cache hits.
	bin, err = wasmbound.Apply(bin, wasmbound.Default)
	if err != nil {
		return invalid("%v", err)
	}
	cm, err := compileModule(ctx, rt, bin)
	if err != nil && strings.Contains(err.Error(), "compilationcache") {
		// A corrupt cache entry fails the compile instead of being
		// replaced (wazero v1.12.0): empty the cache and try once more.
		_ = rt.Close(ctx)
		_ = cache.Close(ctx)
		if rerr := emptyDir(cacheDir); rerr != nil {
			return failed(fmt.Errorf("%v (and emptying the cache: %v)", err, rerr))
		}
		if cache, err = wazero.NewCompilationCacheWithDir(cacheDir); err != nil {
			return failed(fmt.Errorf("compilation cache %s: %w", cacheDir, err))
		}
		if rt, provided, err = newRuntime(ctx, cache, pages); err != nil {
			return failed(err)
		}
		cm, err = compileModule(ctx, rt, bin)
	}
	defer rt.Close(ctx)
	if err != nil {
		return invalid("%v", err)
	}
	if converted != nil {
		if err := writeTextBinary(cacheDir, key, converted); err != nil {
			return failed(fmt.Errorf("storing the binary of a text module: %w", err))
		}
	}
	// wazero writes its entries 0600; children, another user, read them.
	// Done here, by their owner, so that the manager never walks a
	// directory this process could be rearranging under it.
	if err := shareCache(cacheDir); err != nil {
		return failed(fmt.Errorf("compilation cache %s: %w", cacheDir, err))
	}
	if err := provided.Check(cm); err != nil {
		return invalid("%v", err)
	}
	r := &Result{Key: key, Status: Valid, Code: CodeIDs(bin)}
	for name := range cm.ExportedFunctions() {
		// A name with control characters cannot be an entrypoint or a
		// _routes line; leaving it out keeps the result one name a line.
		if Printable(name) {
			r.Exports = append(r.Exports, name)
		}
	}
	sort.Strings(r.Exports)
	return r
}

// CodeIDs names what was compiled the way wazero v1.12.0 does
// (internal/wasm/module.go AssignModuleID, no function listeners): the
// sha256 of the bytes compiled, which are the module within wagi-fcgi's
// bounds, not the module as stored, followed by one byte, 0 or 1 for
// wasmhost.RuntimeConfig's ensureTermination; hex, in that order. wazero
// names the cache file after it (see the manager's
// diskStore.cacheCandidates), so the manager can find a module's compiled
// code without reading (let alone bounding) its bytes.
func CodeIDs(bound []byte) []string {
	ids := make([]string, CodeIDCount)
	for t := range ids {
		h := sha256.New()
		h.Write(bound)
		h.Write([]byte{byte(t)})
		ids[t] = hex.EncodeToString(h.Sum(nil))
	}
	return ids
}

const zeroKey = "0000000000000000000000000000000000000000000000000000000000000000"

// newRuntime makes the Runtime children use for this memory limit, with
// the host modules instantiated as children instantiate them, so their
// exports tell which imports a guest may use.
func newRuntime(ctx context.Context, cache wazero.CompilationCache, pages uint32) (wazero.Runtime, wasmhost.Provided, error) {
	rt, provided, err := wasmhost.NewRuntime(ctx, cache, pages, wasmhost.Unimplemented())
	if err != nil {
		return nil, nil, fmt.Errorf("instantiate WASI: %w", err)
	}
	return rt, provided, nil
}

// compileModule compiles bin, turning a compiler panic into an error: a
// panic on hostile bytes says the bytes are bad.
func compileModule(ctx context.Context, rt wazero.Runtime, bin []byte) (cm wazero.CompiledModule, err error) {
	defer func() {
		if p := recover(); p != nil {
			cm, err = nil, fmt.Errorf("the compiler panicked: %v", p)
		}
	}()
	return rt.CompileModule(ctx, bin)
}

// emptyDir removes what is in dir, keeping dir itself (its owner and mode
// are the manager's choice).
func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// shareCache makes what this process owns in the cache readable by all:
// directories 0755, files 0644. Links are never followed; what another
// user owns is left alone.
func shareCache(dir string) error {
	uid := os.Geteuid()
	return filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.Type()&fs.ModeSymlink != 0 {
			return err
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok || int(st.Uid) != uid {
			return nil
		}
		mode := fs.FileMode(0o644)
		if info.IsDir() {
			mode = 0o755
		}
		if info.Mode().Perm() == mode {
			return nil
		}
		return os.Chmod(p, mode)
	})
}
