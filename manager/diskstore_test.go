package manager

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/internal/compiler"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wasmbound"
)

// tinyModule is a valid module exporting an empty _start, made distinct by
// a custom section holding tag and pad bytes.
func tinyModule(tag string, pad int) []byte {
	b := []byte("\x00asm\x01\x00\x00\x00")
	b = append(b, 0x01, 0x04, 0x01, 0x60, 0x00, 0x00) // type: () -> ()
	b = append(b, 0x03, 0x02, 0x01, 0x00)             // function 0 has type 0
	b = append(b, 0x07, 0x0a, 0x01, 0x06)             // export "_start"
	b = append(b, "_start"...)
	b = append(b, 0x00, 0x00)
	b = append(b, 0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b) // code: empty body
	payload := append([]byte{byte(len(tag))}, tag...)
	payload = append(payload, make([]byte, pad)...)
	b = append(b, 0x00)
	b = appendULEB(b, len(payload))
	return append(b, payload...)
}

func appendULEB(b []byte, n int) []byte {
	for {
		c := byte(n & 0x7f)
		n >>= 7
		if n == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func newTestDiskStore(t *testing.T, storeSize int64) (*store, *diskStore, string) {
	t.Helper()
	dir := t.TempDir()
	st, err := newStore(dir, 1<<20, []string{os.Args[0], "compile"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.close(context.Background()) })
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.IPFS.StoreSize = storeSize
	return st, openDiskStore(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))), dir
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// The mapping from module bytes to wazero's cache file name is what lets
// eviction remove compiled code; if a wazero upgrade changes it, this
// fails rather than leaving compiled code behind unseen.
func TestTheStoreFindsTheCompiledCodeOfAModule(t *testing.T) {
	st, d, _ := newTestDiskStore(t, 1<<30)
	mod, err := st.add(context.Background(), "a", tinyModule("a", 100), 16, config.Default().Limits, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.useModule(mod, false)
	e := d.entries[modID(mod.key)]
	if e == nil || e.cache == "" || !exists(e.cache) {
		t.Fatalf("the compilation-cache file of %s was not found (entry %+v)", mod.key[:12], e)
	}
	info, _ := os.Stat(e.cache)
	if want := int64(mod.size) + info.Size(); e.bytes != want {
		t.Errorf("entry counts %d bytes, want module+compiled code = %d", e.bytes, want)
	}
}

func TestTheStoreEvictsTheLeastRecentlyUsedUnpinnedModulesPastItsSize(t *testing.T) {
	st, d, dir := newTestDiskStore(t, 1<<30)
	ctx := context.Background()
	var mods []*module
	for _, tag := range []string{"pinned", "old", "mid", "new"} {
		mod, err := st.add(ctx, tag, tinyModule(tag, 20000), 16, config.Default().Limits, nil)
		if err != nil {
			t.Fatal(err)
		}
		mods = append(mods, mod)
	}
	pinned, old, mid, newer := mods[0], mods[1], mods[2], mods[3]
	d.useModule(pinned, true)
	d.useModule(old, false)
	d.useModule(mid, false)
	if err := st.remember("/ipfs/old", old.key); err != nil {
		t.Fatal(err)
	}
	oldCache := d.entries[modID(old.key)].cache
	// Room for three entries: adding the fourth evicts the oldest
	// unpinned one, with its compiled code and its index entry.
	d.mu.Lock()
	d.max = d.total + d.entries[modID(mid.key)].bytes/2
	d.mu.Unlock()
	d.useModule(newer, false)
	d.dropIndex([]string{old.key}) // runs in the background otherwise

	if d.has(old.key) || exists(old.path) || exists(oldCache) {
		t.Errorf("the least recently used module is still there (file %v, compiled code %v)", exists(old.path), exists(oldCache))
	}
	if exists(st.indexFile("/ipfs/old")) {
		t.Error("the evicted module's index entry is still there")
	}
	for _, m := range []*module{pinned, mid, newer} {
		if !d.has(m.key) || !exists(m.path) {
			t.Errorf("module %s was evicted", m.ref)
		}
	}
	if d.total > d.max {
		t.Errorf("store holds %d bytes, over its size %d", d.total, d.max)
	}
	// An evicted module that comes back is compiled, and counted, again.
	again, err := st.add(ctx, "old", tinyModule("old", 20000), 16, config.Default().Limits, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.useModule(again, false)
	if e := d.entries[modID(old.key)]; e == nil || e.cache != oldCache || !exists(oldCache) {
		t.Errorf("the module added again has no compiled code in the cache (entry %+v)", e)
	}

	// Pinned modules stay however old: fill the store with one big
	// module use after another and the pinned one is still there.
	for i, tag := range []string{"x", "y", "z"} {
		mod, err := st.add(ctx, tag, tinyModule(tag, 30000+i), 16, config.Default().Limits, nil)
		if err != nil {
			t.Fatal(err)
		}
		d.useModule(mod, false)
	}
	if !exists(pinned.path) || !d.has(pinned.key) {
		t.Error("the pinned module was evicted")
	}

	// A restart learns the store from the disk, pinned entries included.
	d2 := openDiskStore(&config.Config{StateDir: dir, IPFS: config.IPFS{StoreSize: 1 << 30}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if d2.total != d.total {
		t.Errorf("after a restart the store counts %d bytes, before it %d", d2.total, d.total)
	}
	// Entries known only from the disk are evicted with their compiled
	// code (found from the module's bytes at eviction time).
	d2.useModule(pinned, true)
	d2.mu.Lock()
	d2.max = d2.entries[modID(pinned.key)].bytes + 1
	d2.mu.Unlock()
	last, err := st.add(ctx, "last", tinyModule("last", 10), 16, config.Default().Limits, nil)
	if err != nil {
		t.Fatal(err)
	}
	d2.useModule(last, false)
	cacheFiles, _ := filepath.Glob(filepath.Join(dir, "compilation-cache", "*", "*"))
	modFiles, _ := filepath.Glob(filepath.Join(dir, "modules", "*.wasm"))
	if len(modFiles) != 2 || len(cacheFiles) != 2 || !exists(pinned.path) || !exists(last.path) {
		t.Errorf("after evicting all but the pinned module and the one in use: modules %v, compiled code %v", modFiles, cacheFiles)
	}
}

// The compile user owns the compilation cache and could make the directory
// of text modules' binaries a link to anywhere: evicting a text module
// then removes nothing outside the cache.
func TestEvictingATextModuleRemovesNothingThroughALink(t *testing.T) {
	cacheDir, elsewhere := t.TempDir(), t.TempDir()
	key := strings.Repeat("ab", 32)
	victim := filepath.Join(elsewhere, key+".wasm")
	if err := os.WriteFile(victim, []byte("not yours"), 0o644); err != nil {
		t.Fatal(err)
	}
	rel := compiler.TextBinaryPath("", key)
	if err := os.Symlink(elsewhere, filepath.Join(cacheDir, filepath.Dir(rel))); err != nil {
		t.Fatal(err)
	}
	removeTextBinary(cacheDir, key)
	if _, err := os.Stat(victim); err != nil {
		t.Fatalf("a file behind the link was removed: %v", err)
	}

	// Where the directory is real, the binary goes.
	if err := os.Remove(filepath.Join(cacheDir, filepath.Dir(rel))); err != nil {
		t.Fatal(err)
	}
	own := compiler.TextBinaryPath(cacheDir, key)
	if err := os.MkdirAll(filepath.Dir(own), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(own, []byte("\x00asm"), 0o644); err != nil {
		t.Fatal(err)
	}
	removeTextBinary(cacheDir, key)
	if _, err := os.Stat(own); !os.IsNotExist(err) {
		t.Fatalf("the text module's binary is still there: %v", err)
	}
}

// Files of the compilation cache the store found at start are removed when
// it is over its size; the compile user owns every directory under the
// cache and can swap one for a link after the scan. Root then removes
// nothing outside the cache, whatever the file is called.
func TestEvictingLooseCacheFilesRemovesNothingThroughALink(t *testing.T) {
	_, _, dir := newTestDiskStore(t, 1<<30)
	cacheDir := filepath.Join(dir, "compilation-cache")
	sub := filepath.Join(cacheDir, "wazero-planted")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "passwd"), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.IPFS.StoreSize = 1024 // the loose file alone is over it
	d := openDiskStore(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))

	// After the scan, the directory becomes a link to where root's files are.
	elsewhere := t.TempDir()
	victim := filepath.Join(elsewhere, "passwd")
	if err := os.WriteFile(victim, []byte("root:x:0:0"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(sub, sub+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, sub); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.evictLocked(nil)
	d.mu.Unlock()
	if _, err := os.Stat(victim); err != nil {
		t.Fatalf("eviction removed a file through a link the compile user made: %v", err)
	}

	// A loose file in a real directory of the cache still goes.
	own := filepath.Join(cacheDir, "wazero-real", "entry")
	if err := os.MkdirAll(filepath.Dir(own), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(own, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	d = openDiskStore(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	d.mu.Lock()
	d.evictLocked(nil)
	d.mu.Unlock()
	if _, err := os.Stat(own); !os.IsNotExist(err) {
		t.Fatalf("a loose cache file was not evicted: %v", err)
	}
}

// The compiled code of a text module is named after the binary the compile
// process made of it, not after the text: the store must find it all the
// same, or store_size does not bound it and eviction leaves it behind
// (anyone who can have modules compiled, a gateway's clients included,
// could then fill the disk).
func TestTheStoreCountsAndEvictsTheCompiledCodeOfATextModule(t *testing.T) {
	st, d, _ := newTestDiskStore(t, 1<<30)
	if st.wat2wasm == "" {
		t.Fatal("wat2wasm (Debian wabt) is needed")
	}
	ctx := context.Background()
	text := func(tag string) []byte {
		return []byte(`(module (memory 1) (data (i32.const 0) "` + tag + strings.Repeat("x", 5000) + `") (func (export "_start")))`)
	}
	mod, err := st.add(ctx, "text", text("a"), 16, config.Default().Limits, nil)
	if err != nil {
		t.Fatal(err)
	}
	if mod.text == "" {
		t.Fatal("not taken for a text module")
	}
	d.useModule(mod, false)
	e := d.entries[modID(mod.key)]
	if e == nil || e.cache == "" || !exists(e.cache) {
		t.Fatalf("the compiled code of text module %s was not found (entry %+v)", mod.key[:12], e)
	}
	code := e.cache

	other, err := st.add(ctx, "other", text("b"), 16, config.Default().Limits, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.max = d.total + 1 // the next entry pushes the text module out
	d.mu.Unlock()
	d.useModule(other, false)
	if d.has(mod.key) || exists(mod.path) || exists(mod.text) || exists(code) {
		t.Errorf("evicted text module left behind: module %v, binary %v, compiled code %v", exists(mod.path), exists(mod.text), exists(code))
	}
}

// The compile user writes the compilation cache: a sparse file of a
// terabyte there, or a cache entry swapped for a link to one, must not
// count as a terabyte and push every other module out of the store.
func TestTheCompileUserCannotInflateTheStoreWithSparseFilesOrLinks(t *testing.T) {
	st, _, dir := newTestDiskStore(t, 1<<30)
	mod, err := st.add(context.Background(), "a", tinyModule("a", 100), 16, config.Default().Limits, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.IPFS.StoreSize = 1 << 30
	d := openDiskStore(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	d.useModule(mod, false)
	code := d.entries[modID(mod.key)].cache
	if code == "" {
		t.Fatal("no compiled code found")
	}
	sparse := func(p string) {
		t.Helper()
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(1 << 40); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	// A loose sparse file, and the module's compiled code replaced by a
	// link to another.
	sparse(filepath.Join(dir, "compilation-cache", "huge"))
	elsewhere := filepath.Join(t.TempDir(), "huge")
	sparse(elsewhere)
	if err := os.Remove(code); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, code); err != nil {
		t.Fatal(err)
	}
	d = openDiskStore(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	d.useModule(mod, false)
	if d.total > 1<<20 {
		t.Fatalf("the store counts %d bytes for a 100-byte module and two sparse files", d.total)
	}
	if !exists(mod.path) {
		t.Fatal("the module was evicted")
	}
}

// tableModule is tinyModule with a table that has no maximum, which
// wasmbound.Apply caps: what the compile process compiles then differs
// from what the store holds, as for every Go (GOOS=wasip1) module.
func tableModule(tag string, pad int) []byte {
	b := tinyModule(tag, pad)
	const afterFunctions = 8 + 6 + 4                    // header, type section, function section
	table := []byte{0x04, 0x04, 0x01, 0x70, 0x00, 0x01} // one funcref table, min 1, no max
	return append(append(append([]byte{}, b[:afterFunctions]...), table...), b[afterFunctions:]...)
}

// wazero names compiled code after the bytes it compiled, which are the
// module within wagi-fcgi's bounds; the store finds that code by the IDs
// the compile process reports, counts it in store_size (also when it was
// found at start, before the module's first compile) and evicts it with
// its module.
func TestTheStoreCountsAndEvictsCompiledCodeThatDiffersFromTheStoredBytes(t *testing.T) {
	st, _, dir := newTestDiskStore(t, 1<<30)
	ctx := context.Background()
	bin := tableModule("a", 20000)
	bound, err := wasmbound.Apply(bin, wasmbound.Default)
	if err != nil || bytes.Equal(bound, bin) {
		t.Fatalf("wasmbound.Apply leaves the test module as it is (%v): the test proves nothing", err)
	}
	mod, err := st.add(ctx, "a", bin, 16, config.Default().Limits, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(mod.code, compiler.CodeIDs(bound)) {
		t.Fatalf("the compile reported code %v, want the IDs of the bounded bytes %v", mod.code, compiler.CodeIDs(bound))
	}

	// Found at start, as a loose cache file; the module's use ties it to
	// the module.
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.IPFS.StoreSize = 1 << 30
	d := openDiskStore(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, c := range d.cacheCandidates(compiler.CodeIDs(bin), -1, -1) {
		if exists(c.path) {
			t.Fatalf("the compiled code is named after the stored bytes (%s): the test proves nothing", c.path)
		}
	}
	if len(d.loose) != 1 {
		t.Fatalf("%d loose cache files at start, want the module's 1: %v", len(d.loose), d.loose)
	}
	d.useModule(mod, false)
	e := d.entries[modID(mod.key)]
	if e == nil || e.cache == "" || !exists(e.cache) {
		t.Fatalf("the compiled code of %s was not found (entry %+v)", mod.key[:12], e)
	}
	info, err := os.Stat(e.cache)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(mod.size) + cacheFileBytes(info); e.bytes != want || d.total != want || len(d.loose) != 0 {
		t.Errorf("entry counts %d bytes, store %d (loose %v); want module+compiled code = %d", e.bytes, d.total, d.loose, want)
	}
	code := e.cache

	other, err := st.add(ctx, "b", tableModule("b", 20000), 16, config.Default().Limits, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.max = d.total + 1 // the next entry pushes the first out
	d.mu.Unlock()
	d.useModule(other, false)
	if d.has(mod.key) || exists(mod.path) || exists(code) {
		t.Errorf("evicted module left behind: module %v, compiled code %v", exists(mod.path), exists(code))
	}
	if oe := d.entries[modID(other.key)]; oe == nil || oe.cache == "" || d.total != oe.bytes {
		t.Errorf("after eviction the store counts %d bytes, want the remaining entry's (%+v)", d.total, oe)
	}
}

// An entry found at start is evicted before its first compile: it has no
// reported IDs, and the store falls back to naming its code after its
// stored bytes, which finds the code of modules Apply leaves as they are.
func TestAnEntryFoundAtStartIsEvictedWithItsCodeBeforeItsFirstCompile(t *testing.T) {
	st, _, dir := newTestDiskStore(t, 1<<30)
	mod, err := st.add(context.Background(), "a", tinyModule("a", 20000), 16, config.Default().Limits, nil)
	if err != nil {
		t.Fatal(err)
	}
	codes, _ := filepath.Glob(filepath.Join(dir, "compilation-cache", "wazero-*", "*"))
	if len(codes) != 1 {
		t.Fatalf("compiled code files %v, want 1", codes)
	}
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.IPFS.StoreSize = 1 << 30
	d := openDiskStore(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	d.mu.Lock()
	d.max = 0
	d.evictLocked(nil)
	d.mu.Unlock()
	if exists(mod.path) || exists(codes[0]) || d.total != 0 {
		t.Errorf("after evicting everything: module %v, compiled code %v, %d bytes counted", exists(mod.path), exists(codes[0]), d.total)
	}
}
