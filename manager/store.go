package manager

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/wagi-fcgi/wagi-fcgi/child"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wasmbound"
)

// module is a validated, compiled module: its bytes are stored by content
// hash in state_dir and its native code is in the compilation cache, so a
// child's compile is a cache hit.
type module struct {
	ref     string          // as configured, for messages
	key     string          // sha256 of the bytes, hex; the module's identity
	path    string          // state_dir/modules/<key>.wasm
	exports map[string]bool // exported function names
	size    int
}

// store validates and compiles modules. It never runs guest code.
type store struct {
	dir      string // state_dir/modules
	indexDir string // state_dir/ipfs-index: IPFS path → module key
	cacheDir string // wazero file compilation cache
	maxSize  int64

	mu       sync.Mutex
	owner    *[2]int // uid, gid that children run as; nil: the manager's
	cache    wazero.CompilationCache
	runtimes map[uint32]wazero.Runtime
	wasi     map[string]bool // function names wasi_snapshot_preview1 provides
}

func newStore(stateDir string, maxSize int64) (*store, error) {
	s := &store{
		dir:      filepath.Join(stateDir, "modules"),
		indexDir: filepath.Join(stateDir, "ipfs-index"),
		cacheDir: filepath.Join(stateDir, "compilation-cache"),
		maxSize:  maxSize,
		runtimes: map[uint32]wazero.Runtime{},
	}
	// Children may run as another user (pool.user): they must traverse
	// state_dir and read modules/, but list nothing else.
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{stateDir, 0o711}, {s.dir, 0o755}, {s.cacheDir, 0o700}, {s.indexDir, 0o700}} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
	}
	c, err := wazero.NewCompilationCacheWithDir(s.cacheDir)
	if err != nil {
		return nil, fmt.Errorf("compilation cache %s: %w", s.cacheDir, err)
	}
	s.cache = c
	return s, nil
}

func (s *store) close(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rt := range s.runtimes {
		_ = rt.Close(ctx)
	}
	s.runtimes = map[uint32]wazero.Runtime{}
	_ = s.cache.Close(ctx)
}

// runtime returns the validation Runtime for a memory limit. It has WASI
// instantiated, so its export list tells which imports a guest may use.
func (s *store) runtime(ctx context.Context, pages uint32) (wazero.Runtime, error) {
	if rt, ok := s.runtimes[pages]; ok {
		return rt, nil
	}
	rt := wazero.NewRuntimeWithConfig(ctx, child.RuntimeConfig(s.cache, pages))
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		_ = rt.Close(ctx)
		return nil, fmt.Errorf("instantiate WASI: %w", err)
	}
	if s.wasi == nil {
		s.wasi = map[string]bool{}
		for name := range rt.Module(wasi_snapshot_preview1.ModuleName).ExportedFunctionDefinitions() {
			s.wasi[name] = true
		}
	}
	s.runtimes[pages] = rt
	return rt, nil
}

// loadFile reads a module file, stores it by content and compiles it.
func (s *store) loadFile(ctx context.Context, ref, path string, pages uint32) (*module, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", ref, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("load %s: not a regular file", ref)
	}
	if s.maxSize > 0 && st.Size() > s.maxSize {
		return nil, fmt.Errorf("load %s: %d bytes, over max_module_size %d", ref, st.Size(), s.maxSize)
	}
	bin, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", ref, err)
	}
	return s.add(ctx, ref, bin, pages)
}

// add validates bin as a module and makes it available to children.
func (s *store) add(ctx context.Context, ref string, bin []byte, pages uint32) (*module, error) {
	if len(bin) < 8 || string(bin[:4]) != "\x00asm" {
		return nil, fmt.Errorf("load %s: %w: not a WebAssembly binary module (no \\0asm magic)", ref, errInvalidModule)
	}
	// What is compiled is the module within wagi-fcgi's bounds (tables
	// capped, counts checked before wazero allocates by them). What is
	// stored is the module as given: a child applies the same bounds to
	// it and gets the same bytes, so the compilation cache hits.
	bounded, err := wasmbound.Apply(bin, wasmbound.Default)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w: %v", ref, errInvalidModule, err)
	}
	sum := sha256.Sum256(bin)
	key := hex.EncodeToString(sum[:])
	m := &module{ref: ref, key: key, path: filepath.Join(s.dir, key+".wasm"), size: len(bin)}
	if err := writeAtomic(m.path, bin); err != nil {
		return nil, fmt.Errorf("load %s: store: %w", ref, err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	rt, err := s.runtime(ctx, pages)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", ref, err)
	}
	cm, err := rt.CompileModule(ctx, bounded)
	if err != nil && strings.Contains(err.Error(), "compilationcache") {
		// A corrupt cache entry fails the compile instead of being
		// replaced (wazero v1.12.0); clear the cache and try once more.
		if rerr := s.resetCache(ctx); rerr != nil {
			return nil, fmt.Errorf("load %s: %w (and resetting the cache: %v)", ref, err, rerr)
		}
		if rt, err = s.runtime(ctx, pages); err == nil {
			cm, err = rt.CompileModule(ctx, bounded)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("load %s: %w: %v", ref, errInvalidModule, err)
	}
	defer cm.Close(ctx)
	if err := s.chownCacheLocked(); err != nil {
		return nil, fmt.Errorf("load %s: %w", ref, err)
	}

	var bad []string
	for _, f := range cm.ImportedFunctions() {
		mod, name, _ := f.Import()
		if mod != wasi_snapshot_preview1.ModuleName || !s.wasi[name] {
			bad = append(bad, mod+"."+name)
		}
	}
	for _, mem := range cm.ImportedMemories() {
		mod, name, _ := mem.Import()
		bad = append(bad, mod+"."+name+" (memory)")
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return nil, fmt.Errorf("load %s: %w: imports %s, which wagi-fcgi does not provide (modules may import only %s)",
			ref, errInvalidModule, strings.Join(bad, ", "), wasi_snapshot_preview1.ModuleName)
	}
	m.exports = map[string]bool{}
	for name := range cm.ExportedFunctions() {
		m.exports[name] = true
	}
	return m, nil
}

// indexFile is where the module key of an IPFS path is remembered.
func (s *store) indexFile(ipfsPath string) string {
	sum := sha256.Sum256([]byte(ipfsPath))
	return filepath.Join(s.indexDir, hex.EncodeToString(sum[:]))
}

// remember records that ipfsPath holds the module with key, so a restart
// serves it without asking the node.
func (s *store) remember(ipfsPath, key string) error {
	f, err := os.CreateTemp(s.indexDir, "idx.*.tmp")
	if err != nil {
		return err
	}
	_, err = f.WriteString(key + "\n" + ipfsPath + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), s.indexFile(ipfsPath))
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}

// cachedRef loads the module remembered for ipfsPath, checking its bytes
// against their hash (the file name). It returns nil, nil when nothing
// usable is cached; a corrupt copy is removed.
func (s *store) cachedRef(ctx context.Context, ipfsPath, ref string, pages uint32) (*module, error) {
	b, err := os.ReadFile(s.indexFile(ipfsPath))
	if err != nil {
		return nil, nil
	}
	key, rest, _ := strings.Cut(string(b), "\n")
	if strings.TrimSuffix(rest, "\n") != ipfsPath || len(key) != 64 {
		return nil, nil
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
	return s.add(ctx, ref, bin, pages)
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

// shareWith makes the compilation cache belong to the user children run
// as, so they can read what the manager compiled (wazero writes cache
// files 0600) and add what they compile themselves.
func (s *store) shareWith(uid, gid int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.owner = &[2]int{uid, gid}
	return s.chownCacheLocked()
}

func (s *store) chownCacheLocked() error {
	if s.owner == nil {
		return nil
	}
	uid, gid := s.owner[0], s.owner[1]
	return filepath.WalkDir(s.cacheDir, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			return fmt.Errorf("compilation cache: %w", err)
		}
		return nil
	})
}

// resetCache removes the compilation cache and reopens it. Callers hold mu.
func (s *store) resetCache(ctx context.Context) error {
	for _, rt := range s.runtimes {
		_ = rt.Close(ctx)
	}
	s.runtimes = map[uint32]wazero.Runtime{}
	_ = s.cache.Close(ctx)
	if err := os.RemoveAll(s.cacheDir); err != nil {
		return err
	}
	if err := os.MkdirAll(s.cacheDir, 0o700); err != nil {
		return err
	}
	c, err := wazero.NewCompilationCacheWithDir(s.cacheDir)
	if err != nil {
		return err
	}
	s.cache = c
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
