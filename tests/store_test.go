package tests

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/internal/wasmbound"
	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// withCustomSection appends a custom section named "pad" holding tag and
// n zero bytes: the module behaves the same but has another content hash
// (another module, with a budget of its own) and another CID. tag must not
// be empty when n is 0: wazero v1.12.0 fails to read an empty custom
// section at the end of a module (a Read of 0 bytes at EOF).
func withCustomSection(wasm []byte, tag string, n int) []byte {
	payload := append([]byte{3}, "pad"...)
	payload = append(payload, tag...)
	payload = append(payload, make([]byte, n)...)
	out := append(append([]byte{}, wasm...), 0x00)
	for v := len(payload); ; {
		c := byte(v & 0x7f)
		v >>= 7
		if v == 0 {
			out = append(out, c)
			break
		}
		out = append(out, c|0x80)
	}
	return append(out, payload...)
}

// storeBytes adds up what state_dir holds of fetched content: the module
// store bounds exactly these directories.
func storeBytes(t *testing.T, state string) (total, largestModule, largestCompiled int64) {
	t.Helper()
	for _, sub := range []string{"modules", "ipfs-dirs", "compilation-cache"} {
		_ = filepath.WalkDir(filepath.Join(state, sub), func(p string, de fs.DirEntry, err error) error {
			if err != nil || !de.Type().IsRegular() {
				return nil
			}
			info, err := de.Info()
			if err != nil {
				return nil
			}
			total += info.Size()
			if sub == "modules" {
				largestModule = max(largestModule, info.Size())
			}
			if sub == "compilation-cache" {
				largestCompiled = max(largestCompiled, info.Size())
			}
			return nil
		})
	}
	return total, largestModule, largestCompiled
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestTheModuleStoreStaysWithinStoreSize serves many distinct CIDs in
// gateway mode through the real binary and a real kubo node, with a small
// [ipfs] store_size, and checks what stays in state_dir.
func TestTheModuleStoreStaysWithinStoreSize(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	mods := testenv.Modules(t)
	hello, err := os.ReadFile(filepath.Join(mods, "hello.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	const storeSize = 2 << 20
	const pad = 96 << 10

	// A configured module and a configured volume: pinned.
	pinnedBytes := withCustomSection(hello, "configured", pad)
	pinned := k.AddBytes(t, pinnedBytes)
	staticBytes, err := os.ReadFile(filepath.Join(mods, "static.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	assets := filepath.Join(dir, "assets")
	if err := os.MkdirAll(assets, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(assets, "a.txt"), []byte("asset\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	assetsCID := k.AddDir(t, assets)

	// Directories over the caps: one by bytes, one by entries.
	bigDir := filepath.Join(dir, "big")
	if err := os.MkdirAll(bigDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := os.WriteFile(filepath.Join(bigDir, fmt.Sprintf("f%d.bin", i)), make([]byte, 200<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bigCID := k.AddDir(t, bigDir)
	manyDir := filepath.Join(dir, "many")
	if err := os.MkdirAll(manyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if err := os.WriteFile(filepath.Join(manyDir, fmt.Sprintf("f%02d.txt", i)), []byte{byte(i)}, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	manyCID := k.AddDir(t, manyDir)

	// Bytes that start like a module but do not compile: rejected with
	// 502, and bounded like modules all the same.
	var junk []string
	for i := range 12 {
		b := append([]byte("\x00asm\x01\x00\x00\x00\x7f"), bytes.Repeat([]byte{byte(i)}, 200<<10)...)
		junk = append(junk, k.AddBytes(t, b))
	}

	// Distinct gateway modules, together well over store_size.
	var cids []string
	for i := range 24 {
		cids = append(cids, k.AddBytes(t, withCustomSection(hello, fmt.Sprintf("gw%02d", i), pad)))
	}

	port := freePort(t)
	cfg := fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 2

[ipfs]
api = %q
fetch_timeout = "20s"
gateway = "/ipfs/"
allow = ["*"]
max_module_size = "512KiB"
max_dir_size = "512KiB"
max_dir_files = 32
store_size = "2MiB"

[[module]]
route = "/pinned"
module = "ipfs://%s"

[[module]]
route = "/static/..."
module = %q
volumes = { "/assets" = "ipfs://%s" }

[[module]]
route = "/bigdir/..."
module = %q
volumes = { "/assets" = "ipfs://%s" }

[[module]]
route = "/manydir/..."
module = %q
volumes = { "/assets" = "ipfs://%s" }
`, k.API, pinned, filepath.Join(mods, "static.wasm"), assetsCID, filepath.Join(mods, "static.wasm"), bigCID,
		filepath.Join(mods, "static.wasm"), manyCID)
	w := startWagi(t, bin, dir, cfg, "--http", fmt.Sprintf("127.0.0.1:%d", port))
	c := newClient(t, fmt.Sprintf("http://127.0.0.1:%d", port))
	// startWagi waits for the FastCGI socket; --http may come up after it.
	waitListening(t, "tcp", fmt.Sprintf("127.0.0.1:%d", port), w.done, 20*time.Second, "--http", func() string { return "log:\n" + w.log.String() })
	state := filepath.Join(dir, "state")

	expect := func(path string, status int, body string) {
		t.Helper()
		r := c.get(path)
		if r.status != status || (body != "" && string(r.body) != body) {
			t.Fatalf("GET %s: got %d %q, want %d %q", path, r.status, r.body, status, body)
		}
	}
	expect("/pinned", 200, "Hello, world!\n")
	expect("/static/a.txt", 200, "asset\n")

	t.Run("serving many distinct CIDs keeps state_dir within store_size plus one module", func(t *testing.T) {
		var slack int64
		for _, cid := range cids {
			expect("/ipfs/"+cid+"/", 200, "Hello, world!\n")
			total, mod, compiled := storeBytes(t, state)
			slack = max(slack, mod+compiled)
			if total > storeSize+slack {
				t.Fatalf("after %s state_dir holds %d bytes of fetched content, over store_size %d + one module %d",
					cid, total, storeSize, slack)
			}
		}
		total, _, _ := storeBytes(t, state)
		t.Logf("after %d CIDs of ~%d KiB each: %d bytes held (store_size %d, one module with its compiled code ≤ %d)",
			len(cids), (len(hello)+pad)>>10, total, storeSize, slack)
		w.log.waitFor(t, 5*time.Second, "evicted from the module store")
	})

	t.Run("rejected bytes count against store_size too", func(t *testing.T) {
		for _, cid := range junk {
			if r := c.get("/ipfs/" + cid + "/"); r.status != 502 {
				t.Fatalf("GET %s: got %d %q, want 502; log:\n%s", cid, r.status, r.body, w.log)
			}
			total, mod, compiled := storeBytes(t, state)
			if slack := mod + compiled; total > storeSize+slack {
				t.Fatalf("after %s state_dir holds %d bytes of fetched content, over store_size %d + one module %d",
					cid, total, storeSize, slack)
			}
		}
	})

	t.Run("configured modules and volumes are never evicted", func(t *testing.T) {
		if _, err := os.Stat(filepath.Join(state, "modules", sha(pinnedBytes)+".wasm")); err != nil {
			t.Errorf("the configured IPFS module was evicted: %v", err)
		}
		if _, err := os.Stat(filepath.Join(state, "modules", sha(staticBytes)+".wasm")); err != nil {
			t.Errorf("the configured local module was evicted: %v", err)
		}
		if _, err := os.Stat(filepath.Join(state, "ipfs-dirs", assetsCID)); err != nil {
			t.Errorf("the configured IPFS volume was evicted: %v", err)
		}
		fetches := strings.Count(w.log.String(), "module fetched from IPFS")
		expect("/pinned", 200, "Hello, world!\n")
		expect("/static/a.txt", 200, "asset\n")
		if n := strings.Count(w.log.String(), "module fetched from IPFS"); n != fetches {
			t.Errorf("serving the configured module fetched it again")
		}
	})

	t.Run("an evicted CID is fetched again and served", func(t *testing.T) {
		first := cids[0]
		if _, err := os.Stat(filepath.Join(state, "modules", sha(withCustomSection(hello, "gw00", pad))+".wasm")); err == nil {
			t.Fatal("the least recently used CID is still in the store; the test proves nothing")
		}
		before := strings.Count(w.log.String(), first)
		expect("/ipfs/"+first+"/", 200, "Hello, world!\n")
		log := w.log.String()
		fetched := 0
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "module fetched from IPFS") && strings.Contains(line, first) {
				fetched++
			}
		}
		if fetched != 2 || strings.Count(log, first) <= before {
			t.Errorf("the evicted CID was fetched %d times, want 2 (once, evicted, again)", fetched)
		}
	})

	t.Run("an IPFS directory over max_dir_size is refused with 502 and leaves nothing", func(t *testing.T) {
		r := c.get("/bigdir/f0.bin")
		if r.status != 502 {
			t.Fatalf("got %d %q, want 502", r.status, r.body)
		}
		line := w.log.waitFor(t, 5*time.Second, "IPFS directory refused", bigCID)
		if !strings.Contains(line, "max_dir_size=524288") {
			t.Errorf("the log line does not name the cap: %s", line)
		}
	})

	t.Run("an IPFS directory with more entries than max_dir_files is refused with 502 and leaves nothing", func(t *testing.T) {
		r := c.get("/manydir/f00.txt")
		if r.status != 502 {
			t.Fatalf("got %d %q, want 502", r.status, r.body)
		}
		line := w.log.waitFor(t, 5*time.Second, "IPFS directory refused", manyCID)
		if !strings.Contains(line, "max_dir_files=32") {
			t.Errorf("the log line does not name the cap: %s", line)
		}
	})

	t.Run("nothing of a refused directory is in state_dir", func(t *testing.T) {
		des, err := os.ReadDir(filepath.Join(state, "ipfs-dirs"))
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range des {
			if strings.Contains(de.Name(), bigCID) || strings.Contains(de.Name(), manyCID) {
				t.Errorf("state_dir/ipfs-dirs holds %s", de.Name())
			}
		}
		// Asking again is refused again, not served from a half copy.
		if r := c.get("/bigdir/f0.bin"); r.status != 502 {
			t.Errorf("second request: got %d, want 502", r.status)
		}
	})
}

// goCodeFile is the compilation-cache file wazero v1.12.0 keeps the
// compiled code of wasm in, as children and compile processes compile it
// (the module within wagi-fcgi's bounds, ensureTermination off), or ""
// when there is none. The CPU feature flags in its name are tried.
func goCodeFile(t *testing.T, state string, wasm []byte) string {
	t.Helper()
	bound, err := wasmbound.Apply(wasm, wasmbound.Default)
	if err != nil {
		t.Fatal(err)
	}
	id := sha256.Sum256(append(bound, 0))
	dirs, _ := filepath.Glob(filepath.Join(state, "compilation-cache", "wazero-*"))
	for _, dir := range dirs {
		for flags := range uint64(8) {
			var le [8]byte
			binary.LittleEndian.PutUint64(le[:], flags)
			name := sha256.Sum256(append(append(id[:], "WAZEVO"...), le[:]...))
			if p := filepath.Join(dir, hex.EncodeToString(name[:])); fileExists(p) {
				return p
			}
		}
	}
	return ""
}

func fileExists(p string) bool { _, err := os.Lstat(p); return err == nil }

// TestTheModuleStoreBoundsTheCompiledCodeOfGoModules serves distinct Go
// modules (GOOS=wasip1: their table has no maximum, so what is compiled,
// the module within wagi-fcgi's bounds, is not the stored bytes) in
// gateway mode through the real binary and a real kubo node: their
// compiled code counts against store_size and goes with its module.
func TestTheModuleStoreBoundsTheCompiledCodeOfGoModules(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	mods := testenv.Modules(t)
	gohello, err := os.ReadFile(filepath.Join(mods, "gohello.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	if bound, err := wasmbound.Apply(gohello, wasmbound.Default); err != nil || bytes.Equal(bound, gohello) {
		t.Fatalf("wasmbound.Apply leaves the Go hello as it is (%v): the test proves nothing", err)
	}
	var variants [][]byte
	var cids []string
	for i := range 5 {
		b := withCustomSection(gohello, fmt.Sprintf("go%02d", i), 0)
		variants = append(variants, b)
		cids = append(cids, k.AddBytes(t, b))
	}
	// Room for the configured module and one Go module with its compiled
	// code, not two; the module files alone of four would fit.
	const storeSize = 16 << 20
	port := freePort(t)
	cfg := fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 2

[ipfs]
api = %q
fetch_timeout = "20s"
gateway = "/ipfs/"
allow = ["*"]
max_module_size = "4MiB"
max_dir_size = "4MiB"
store_size = "%d"

[[module]]
route = "/hello"
module = %q
`, k.API, storeSize, filepath.Join(mods, "hello.wasm"))
	w := startWagi(t, bin, dir, cfg, "--http", fmt.Sprintf("127.0.0.1:%d", port))
	c := newClient(t, fmt.Sprintf("http://127.0.0.1:%d", port))
	waitListening(t, "tcp", fmt.Sprintf("127.0.0.1:%d", port), w.done, 20*time.Second, "--http", func() string { return "log:\n" + w.log.String() })
	state := filepath.Join(dir, "state")
	get := func(cid string) {
		t.Helper()
		if r := c.get("/ipfs/" + cid + "/"); r.status != 200 || !strings.HasPrefix(string(r.body), "Hello from Go\n") {
			t.Fatalf("GET /ipfs/%s/: got %d %q; log:\n%s", cid, r.status, r.body, w.log)
		}
	}

	get(cids[0])
	first := goCodeFile(t, state, variants[0])
	if first == "" {
		t.Fatal("the compiled code of the first Go module is not in the compilation cache")
	}
	info, err := os.Stat(first)
	if err != nil {
		t.Fatal(err)
	}
	code := info.Size()
	t.Logf("Go hello: %d bytes, its compiled code %d bytes", len(gohello), code)
	if int64(len(variants[0]))*4 > storeSize || int64(len(variants[0]))+code > storeSize || 2*(int64(len(variants[0]))+code) <= storeSize {
		t.Fatalf("store_size %d does not sit between one Go module with its code (%d) and two: the test proves nothing", storeSize, int64(len(variants[0]))+code)
	}

	for _, cid := range cids[1:] {
		get(cid)
		total, mod, compiled := storeBytes(t, state)
		if slack := mod + compiled; total > storeSize+slack {
			t.Fatalf("after %s state_dir holds %d bytes of fetched content, over store_size %d + one module with its code %d",
				cid, total, storeSize, slack)
		}
	}
	key := sha(variants[0])
	line := w.log.waitFor(t, 5*time.Second, "evicted from the module store", "entry=m:"+key)
	if want := fmt.Sprintf("bytes=%d ", int64(len(variants[0]))+code); !strings.Contains(line, want) {
		t.Errorf("the evicted Go module was not counted with its compiled code (%s): %s", want, line)
	}
	if fileExists(filepath.Join(state, "modules", key+".wasm")) {
		t.Error("the evicted Go module is still in the store")
	}
	if fileExists(first) {
		t.Errorf("the compiled code of the evicted Go module is still there: %s", first)
	}
	codes, _ := filepath.Glob(filepath.Join(state, "compilation-cache", "wazero-*", "*"))
	total, _, _ := storeBytes(t, state)
	t.Logf("after %d Go modules: %d bytes held in %d compiled code files (store_size %d)", len(cids), total, len(codes), storeSize)
	if len(codes) > 3 { // the configured module's, and at most two Go modules'
		t.Errorf("%d compiled code files left after serving %d Go modules: %v", len(codes), len(cids), codes)
	}
}
