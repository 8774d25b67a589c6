package manager

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/internal/compiler"
	"golang.org/x/sys/unix"
)

// diskStore bounds what state_dir holds of fetched content ([ipfs]
// store_size): module files (modules/<sha>.wasm), their compiled code
// (compilation-cache/) and IPFS directory volumes (ipfs-dirs/). Past the
// bound it evicts the least recently used entries the config does not
// name: a module the config names, or the directory of a configured
// volume, is pinned and never evicted. An evicted module or directory that
// is asked for again is simply fetched again.
//
// Usage is learned from the disk at start (file modification times give
// the order, and uses touch them, so the order survives restarts) and kept
// in memory after that. The bound is checked after an entry is added, so
// state_dir may hold store_size plus the entry being added (at most
// max_module_size and its compiled code, or max_dir_size) while the others
// are evicted. Index files (ipfs-index/, ~100 bytes each) are removed with
// their module but not counted.
//
// A nil *diskStore (store_size = 0) bounds nothing.
type diskStore struct {
	modDir, dirsDir, indexDir, cacheDir string
	max                                 int64
	maxBin                              int64 // max_module_size: the largest binary a text module converts to
	log                                 *slog.Logger

	mu      sync.Mutex
	entries map[string]*diskEntry // by id: "m:"+key or "d:"+directory name
	lru     *list.List            // of *diskEntry not pinned, most recent first
	pinned  map[string]bool       // ids never evicted
	total   int64                 // bytes of every entry, plus loose
	loose   map[string]int64      // compilation-cache files not tied to a module yet: path → bytes
	// cpuFlags and ensureTermination are learned from the first cache
	// file found for a module (see cacheCandidates); -1 until then.
	cpuFlags, ensureTermination int
	warnedPinned                bool
}

type diskEntry struct {
	id      string
	path    string   // the module file or the directory
	bytes   int64    // its bytes, plus its compiled code for a module
	cache   string   // the module's compilation-cache file, once found
	code    []string // module IDs of its compiled code, once a compile reported them (module.code)
	checked time.Time
	touched time.Time
	elem    *list.Element // nil while pinned
}

// touchEvery is how often a use is written to an entry's modification
// time, which orders entries after a restart.
const touchEvery = time.Minute

func modID(key string) string  { return "m:" + key }
func dirID(name string) string { return "d:" + name }

// openDiskStore scans state_dir. It returns nil when store_size is 0.
func openDiskStore(cfg *config.Config, log *slog.Logger) *diskStore {
	if cfg.IPFS.StoreSize <= 0 {
		return nil
	}
	d := &diskStore{
		modDir:            filepath.Join(cfg.StateDir, "modules"),
		dirsDir:           filepath.Join(cfg.StateDir, "ipfs-dirs"),
		indexDir:          filepath.Join(cfg.StateDir, "ipfs-index"),
		cacheDir:          filepath.Join(cfg.StateDir, "compilation-cache"),
		max:               cfg.IPFS.StoreSize,
		maxBin:            cfg.IPFS.MaxModuleSize,
		log:               log,
		entries:           map[string]*diskEntry{},
		lru:               list.New(),
		pinned:            map[string]bool{},
		loose:             map[string]int64{},
		cpuFlags:          -1,
		ensureTermination: -1,
	}
	for _, mc := range cfg.Modules {
		for _, v := range mc.Volumes {
			if v.Kind == config.VolumeIPFS {
				d.pinned[dirID(filepath.Base(ipfsDirPath(cfg.StateDir, v.Path)))] = true
			}
		}
	}
	type found struct {
		e     *diskEntry
		mtime time.Time
	}
	var all []found
	stale := time.Now().Add(-time.Hour) // older temporaries are left over from a crash
	add := func(id, path string, bytes int64, mtime time.Time) {
		all = append(all, found{&diskEntry{id: id, path: path, bytes: bytes, touched: mtime}, mtime})
	}
	if des, err := os.ReadDir(d.modDir); err == nil {
		for _, de := range des {
			info, err := de.Info()
			if err != nil || !info.Mode().IsRegular() {
				continue
			}
			name := de.Name()
			switch {
			case strings.HasSuffix(name, ".tmp") && info.ModTime().Before(stale):
				_ = os.Remove(filepath.Join(d.modDir, name))
			case strings.HasSuffix(name, ".wasm") && len(name) == 64+len(".wasm"):
				add(modID(strings.TrimSuffix(name, ".wasm")), filepath.Join(d.modDir, name), info.Size(), info.ModTime())
			}
		}
	}
	if des, err := os.ReadDir(d.dirsDir); err == nil {
		for _, de := range des {
			info, err := de.Info()
			if err != nil || !de.IsDir() {
				continue
			}
			p := filepath.Join(d.dirsDir, de.Name())
			if strings.HasSuffix(de.Name(), ".tmp") {
				if info.ModTime().Before(stale) {
					_ = os.RemoveAll(p)
				}
				continue
			}
			add(dirID(de.Name()), p, treeBytes(p), info.ModTime())
		}
	}
	_ = filepath.WalkDir(d.cacheDir, func(p string, de fs.DirEntry, err error) error {
		if err == nil && de.IsDir() && filepath.Dir(compiler.TextBinaryPath(d.cacheDir, "k")) == p {
			// Binaries of text modules go with their module (evictLocked).
			return filepath.SkipDir
		}
		if err == nil && de.Type().IsRegular() {
			if info, err := de.Info(); err == nil {
				d.loose[p] = cacheFileBytes(info)
				d.total += cacheFileBytes(info)
			}
		}
		return nil
	})
	sort.Slice(all, func(i, j int) bool { return all[i].mtime.After(all[j].mtime) })
	for _, f := range all {
		d.entries[f.e.id] = f.e
		d.total += f.e.bytes
		if !d.pinned[f.e.id] {
			f.e.elem = d.lru.PushBack(f.e)
		}
	}
	log.Info("module store", "entries", len(d.entries), "bytes", d.total, "store_size", d.max)
	return d
}

// has reports whether the module with key is in the store (it may have
// been evicted since it was loaded).
func (d *diskStore) has(key string) bool {
	if d == nil {
		return true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.entries[modID(key)]
	return ok
}

// useModule records a use of mod (pinned: the config names it), adding
// it, and its compiled code, when it is new; then it evicts past the bound.
func (d *diskStore) useModule(mod *module, pinned bool) {
	if d == nil {
		return
	}
	id := modID(mod.key)
	d.mu.Lock()
	e := d.entries[id]
	findCache := e == nil || (e.cache == "" && (time.Since(e.checked) > touchEvery || e.code == nil && mod.code != nil))
	cpuFlags, et := d.cpuFlags, d.ensureTermination
	d.mu.Unlock()
	var cands []cacheCandidate
	if findCache {
		ids := mod.code
		if ids == nil {
			// No compile reported what it compiled (bytes that were
			// rejected): the module's bytes are read again, outside
			// the lock, and named as if compiled as they are.
			if bin, err := d.codeBytes(mod.key, mod.path); err == nil {
				ids = compiler.CodeIDs(bin)
			}
		}
		cands = d.cacheCandidates(ids, cpuFlags, et)
	}
	var size int64 = -1
	if e == nil {
		if info, err := os.Stat(mod.path); err == nil {
			size = info.Size()
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if e = d.entries[id]; e == nil {
		if size < 0 {
			return // gone already (evicted meanwhile): the next use fetches it again
		}
		e = &diskEntry{id: id, path: mod.path, bytes: size}
		d.entries[id] = e
		d.total += size
		e.elem = d.lru.PushFront(e)
	}
	if mod.code != nil {
		e.code = mod.code
	}
	if cands != nil && e.cache == "" {
		e.checked = time.Now()
		d.adoptCacheLocked(e, cands)
	}
	d.usedLocked(e, pinned)
}

// useRejected counts fetched bytes that did not make a module but may
// have been stored before they were rejected, so they are bounded and
// evicted like any module.
func (d *diskStore) useRejected(bin []byte) {
	if d == nil {
		return
	}
	sum := sha256.Sum256(bin)
	key := hex.EncodeToString(sum[:])
	d.useModule(&module{key: key, path: filepath.Join(d.modDir, key+".wasm")}, false)
}

// useDir records a use of the IPFS directory copy at path.
func (d *diskStore) useDir(path string) {
	if d == nil {
		return
	}
	id := dirID(filepath.Base(path))
	d.mu.Lock()
	e := d.entries[id]
	d.mu.Unlock()
	var size int64
	if e == nil {
		size = treeBytes(path)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if e = d.entries[id]; e == nil {
		e = &diskEntry{id: id, path: path, bytes: size}
		d.entries[id] = e
		d.total += size
		if !d.pinned[id] {
			e.elem = d.lru.PushFront(e)
		}
	}
	d.usedLocked(e, false)
}

// usedLocked moves e to the front (or pins it), touches it now and then,
// and evicts others while the store is over its bound.
func (d *diskStore) usedLocked(e *diskEntry, pin bool) {
	if pin && !d.pinned[e.id] {
		d.pinned[e.id] = true
	}
	if d.pinned[e.id] {
		if e.elem != nil {
			d.lru.Remove(e.elem)
			e.elem = nil
		}
	} else if e.elem != nil {
		d.lru.MoveToFront(e.elem)
	}
	if now := time.Now(); now.Sub(e.touched) > touchEvery {
		e.touched = now
		_ = os.Chtimes(e.path, now, now)
	}
	d.evictLocked(e)
}

// unpin lets the module with key be evicted again (an IPNS name the config
// names moved on to another CID).
func (d *diskStore) unpin(key string) {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	id := modID(key)
	delete(d.pinned, id)
	if e := d.entries[id]; e != nil && e.elem == nil {
		e.elem = d.lru.PushBack(e)
	}
}

// evictLocked removes least recently used entries other than keep until
// the store is within its bound: compiled code of modules not used since
// the start first, then entries from the back of the list.
func (d *diskStore) evictLocked(keep *diskEntry) {
	if d.total <= d.max {
		return
	}
	for p, n := range d.loose {
		if d.total <= d.max {
			return
		}
		// A path that now goes through a link is not the file that was
		// counted: forgotten, not removed.
		if err := removeInCache(d.cacheDir, p); err == nil || os.IsNotExist(err) ||
			errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			delete(d.loose, p)
			d.total -= n
		}
	}
	var keys []string
	for el := d.lru.Back(); el != nil && d.total > d.max; {
		e := el.Value.(*diskEntry)
		el = el.Prev()
		if e == keep {
			continue
		}
		if key, ok := strings.CutPrefix(e.id, "m:"); ok {
			if e.cache == "" {
				ids := e.code
				if ids == nil {
					// Found at start and not compiled since: named
					// as if compiled as stored, which finds the code
					// of modules wasmbound.Apply leaves as they are.
					if bin, err := d.codeBytes(key, e.path); err == nil {
						ids = compiler.CodeIDs(bin)
					}
				}
				d.adoptCacheLocked(e, d.cacheCandidates(ids, d.cpuFlags, d.ensureTermination))
			}
			if e.cache != "" {
				_ = removeInCache(d.cacheDir, e.cache)
			}
			removeTextBinary(d.cacheDir, key) // if it was text
			if err := os.Remove(e.path); err != nil && !os.IsNotExist(err) {
				d.log.Warn("module store: evicting", "path", e.path, "err", err)
				continue
			}
			keys = append(keys, key)
		} else {
			// Rename first (atomic), so the directory is gone for the
			// next use at once; the tree is removed in the background.
			gone := e.path + ".evicted." + time.Now().Format("150405.000000000") + ".tmp"
			if err := os.Rename(e.path, gone); err != nil && !os.IsNotExist(err) {
				d.log.Warn("module store: evicting", "path", e.path, "err", err)
				continue
			}
			go os.RemoveAll(gone)
		}
		d.lru.Remove(e.elem)
		e.elem = nil
		delete(d.entries, e.id)
		d.total -= e.bytes
		d.log.Info("evicted from the module store", "entry", e.id, "bytes", e.bytes, "store_bytes", d.total, "store_size", d.max)
	}
	if len(keys) > 0 {
		go d.dropIndex(keys)
	}
	if d.total > d.max && !d.warnedPinned {
		d.warnedPinned = true
		d.log.Warn("module store is over store_size with what the config names (pinned) and the entry in use; raise [ipfs] store_size",
			"store_bytes", d.total, "store_size", d.max)
	}
}

// dropIndex removes the ipfs-index entries that name the evicted keys. A
// stale entry would be harmless (the module file is checked), this only
// keeps the index from growing.
func (d *diskStore) dropIndex(keys []string) {
	gone := map[string]bool{}
	for _, k := range keys {
		gone[k] = true
	}
	des, err := os.ReadDir(d.indexDir)
	if err != nil {
		return
	}
	for _, de := range des {
		p := filepath.Join(d.indexDir, de.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		key, _, _ := strings.Cut(string(b), "\n")
		if gone[key] && !d.has(key) {
			_ = os.Remove(p)
		}
	}
}

// cacheCandidates lists the paths wazero v1.12.0's file compilation cache
// may store a module's compiled code under
// (internal/engine/wazevo/engine_cache.go fileCacheKey): the cache key is
// sha256(moduleID ‖ "WAZEVO" ‖ CPU feature flags as 8 little-endian
// bytes), with moduleID = sha256(bytes compiled ‖ ensureTermination byte)
// when no function listeners are set (internal/wasm/module.go
// AssignModuleID). ids are those module IDs, hex, for ensureTermination 0
// and 1 (compiler.CodeIDs). The bytes compiled are the module within
// wagi-fcgi's bounds (wasmbound.Apply), which the manager never makes
// (it does not parse module bytes): the compile process reports the IDs.
// The feature flags use three bits at most (platform/cpuid_*.go), so
// every combination is tried until one is found, then the one found is
// used. A wrong guess removes nothing: the names are hashes.
//
// A lying compile process can at worst name the cache file of another
// module, which the store then counts or removes with this one (each
// file's bytes are counted once per entry that names it, so the store
// only errs on the side of holding less). That gives it nothing: it owns
// the cache and can remove or rewrite any file in it anyway, and a
// removed entry is compiled again on the next compile. The manager
// computes the file name itself (a hash), so it stays under a wazero-*
// directory of the cache, and removeInCache removes it by descriptor
// without following links.
//
// cpuFlags and et are the flags learned so far (-1: not yet).
func (d *diskStore) cacheCandidates(ids []string, cpuFlags, et int) []cacheCandidate {
	dirs, _ := filepath.Glob(filepath.Join(d.cacheDir, "wazero-*"))
	if len(dirs) == 0 {
		return nil
	}
	var out []cacheCandidate
	for t, hexID := range ids {
		if et >= 0 && t != et {
			continue
		}
		id, err := hex.DecodeString(hexID)
		if err != nil || len(id) != sha256.Size {
			continue
		}
		for c := 0; c < 8; c++ {
			if cpuFlags >= 0 && c != cpuFlags {
				continue
			}
			var flags [8]byte
			binary.LittleEndian.PutUint64(flags[:], uint64(c))
			k := sha256.New()
			k.Write(id)
			k.Write([]byte("WAZEVO"))
			k.Write(flags[:])
			name := hex.EncodeToString(k.Sum(nil))
			for _, dir := range dirs {
				out = append(out, cacheCandidate{path: filepath.Join(dir, name), ensureTermination: t, cpuFlags: c})
			}
		}
	}
	return out
}

// cacheCandidate is one path the compiled code of a module may have, and
// the flags that name it.
type cacheCandidate struct {
	path                        string
	ensureTermination, cpuFlags int
}

// adoptCacheLocked ties the first existing candidate to e, counting its
// bytes, and learns the flags that named it.
func (d *diskStore) adoptCacheLocked(e *diskEntry, cands []cacheCandidate) {
	for _, c := range cands {
		p := c.path
		// Not through a link the compile user made (Lstat).
		info, err := os.Lstat(p)
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		d.ensureTermination, d.cpuFlags = c.ensureTermination, c.cpuFlags
		if n, ok := d.loose[p]; ok {
			delete(d.loose, p)
			d.total -= n
		}
		e.cache = p
		e.bytes += cacheFileBytes(info)
		d.total += cacheFileBytes(info)
		return
	}
}

// cacheFileBytes is what a compilation-cache file counts for: its size,
// or the disk it takes when that is less. The compile user writes these
// files, and a sparse one of a terabyte must not push every module out of
// the store.
func cacheFileBytes(info os.FileInfo) int64 {
	n := info.Size()
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		n = min(n, st.Blocks*512)
	}
	return n
}

// treeBytes adds up the sizes of the regular files under dir.
func treeBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, de fs.DirEntry, err error) error {
		if err == nil && de.Type().IsRegular() {
			if info, err := de.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// removeInCache removes the file at p, a path under cacheDir, walking
// every directory from cacheDir down by descriptor without following a
// link: the compile user owns them all and may have swapped one for a
// link to anywhere since p was found, and root must not remove a file
// through it (ELOOP or ENOTDIR then).
func removeInCache(cacheDir, p string) error {
	rel, err := filepath.Rel(cacheDir, p)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("%s is not under %s", p, cacheDir)
	}
	const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Open(cacheDir, dirFlags, 0)
	if err != nil {
		return err
	}
	parts := strings.Split(rel, "/")
	for _, part := range parts[:len(parts)-1] {
		next, err := unix.Openat(fd, part, dirFlags, 0)
		unix.Close(fd)
		if err != nil {
			return err
		}
		fd = next
	}
	defer unix.Close(fd)
	return unix.Unlinkat(fd, parts[len(parts)-1], 0)
}

// codeBytes are the bytes the compilation cache names the compiled code of
// the module with key (stored at path) after: the module's own, or for a
// text module the binary the compile process made of it. Without these,
// a text module's compiled code would be neither counted nor evicted.
func (d *diskStore) codeBytes(key, path string) ([]byte, error) {
	bin, err := os.ReadFile(path)
	if err != nil || compiler.IsBinary(bin) {
		return bin, err
	}
	return readTextBinary(d.cacheDir, key, d.maxBin)
}

// readTextBinary reads the binary the compile process made of the text
// module with key, to hash it and nothing else (it is never parsed). The
// compile user owns it and its directory: both are opened by descriptor
// without following links, without blocking (a FIFO), and only a regular
// file of at most max bytes is read.
func readTextBinary(cacheDir, key string, max int64) ([]byte, error) {
	const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	cache, err := unix.Open(cacheDir, dirFlags, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(cache)
	rel := compiler.TextBinaryPath("", key)
	dir, err := unix.Openat(cache, filepath.Dir(rel), dirFlags, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dir)
	fd, err := unix.Openat(dir, filepath.Base(rel), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || max > 0 && st.Size() > max {
		return nil, fmt.Errorf("%s: not a regular file of at most %d bytes", rel, max)
	}
	if max <= 0 {
		return io.ReadAll(f)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(b)) > max {
		err = fmt.Errorf("%s: larger than %d bytes", rel, max)
	}
	return b, err
}

// removeTextBinary removes the binary the compile process made of a text
// module. The directory it is in belongs to the compile user, who could
// have made it a link to anywhere: it is opened without following links,
// and the file removed relative to it, never by path.
func removeTextBinary(cacheDir, key string) {
	cache, err := unix.Open(cacheDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(cache)
	rel := compiler.TextBinaryPath("", key)
	dir, err := unix.Openat(cache, filepath.Dir(rel), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(dir)
	_ = unix.Unlinkat(dir, filepath.Base(rel), 0)
}
