package tests

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// TestIPFS runs modules and volumes from a real (offline) kubo node
// through a real nginx.
func TestIPFS(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	mods := testenv.Modules(t)

	hello := k.AddFile(t, filepath.Join(mods, "hello.wasm"))
	goHello := k.AddFile(t, filepath.Join(mods, "gohello.wasm"))
	guestbook := k.AddFile(t, filepath.Join(mods, "guestbook.wasm"))
	static := k.AddFile(t, filepath.Join(mods, "static.wasm"))
	echo := k.AddFile(t, filepath.Join(mods, "echo.wasm"))
	raw := k.AddFile(t, filepath.Join(mods, "raw.wasm")) // never requested before kubo stops
	notWasm := k.AddBytes(t, []byte("this is not a wasm module\n"))
	big := k.AddBytes(t, append([]byte("\x00asm\x01\x00\x00\x00"), make([]byte, 5<<20)...))

	// A read-only asset directory with a PNG in it.
	assets := filepath.Join(dir, "assets")
	if err := os.MkdirAll(assets, 0o755); err != nil {
		t.Fatal(err)
	}
	img := image.NewRGBA(image.Rect(0, 0, 64, 64))
	for i := range img.Pix {
		img.Pix[i] = byte(i * 31)
	}
	img.Set(1, 1, color.RGBA{255, 0, 0, 255})
	var pngBytes bytes.Buffer
	if err := png.Encode(&pngBytes, img); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(assets, "logo.png"), pngBytes.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	assetsCID := k.AddDir(t, assets)

	config := fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 2

[ipfs]
api = %q
fetch_timeout = "20s"
gateway = "/ipfs/"
allow = [%q, %q, %q, %q]
max_module_size = "4MiB"

[[module]]
route = "/hello"
module = "ipfs://%s"

[[module]]
route = "/go/..."
module = "/ipfs/%s"

[[module]]
route = "/guestbook"
module = "ipfs://%s"
volumes = { "/data" = "mfs:/wagi/guestbook" }

[[module]]
route = "/static/..."
module = "ipfs://%s"
volumes = { "/assets" = "ipfs://%s" }

[[module]]
route = "/notwasm"
module = "ipfs://%s"

[[module]]
route = "/big"
module = "ipfs://%s"
`, k.API, hello, echo, notWasm, raw, hello, goHello, guestbook, static, assetsCID, notWasm, big)

	w := startWagi(t, bin, dir, config)
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	t.Run("a module added with ipfs add is served by CID from the config", func(t *testing.T) {
		r := c.get("/hello")
		if r.status != 200 || string(r.body) != "Hello, world!\n" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		w.log.waitFor(t, 5*time.Second, "module fetched from IPFS", hello)
	})

	t.Run("a Go module is served by /ipfs/ path", func(t *testing.T) {
		r := c.get("/go/x")
		if r.status != 200 || !strings.HasPrefix(string(r.body), "Hello from Go\n") {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("gateway mode runs an allowed CID as a /... route", func(t *testing.T) {
		r := c.do("POST", "/ipfs/"+echo+"/any/path", []byte("through the gateway"))
		if r.status != 200 || string(r.body) != "through the gateway" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("gateway mode refuses a CID that is not allowed with 403", func(t *testing.T) {
		if r := c.get("/ipfs/" + goHello + "/"); r.status != 403 {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("gateway mode answers a malformed CID with 404", func(t *testing.T) {
		if r := c.get("/ipfs/not!a!cid/"); r.status != 404 {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("a guestbook appends to an MFS file across requests", func(t *testing.T) {
		for i := 1; i <= 3; i++ {
			r := c.do("POST", "/guestbook", []byte(fmt.Sprintf("entry %d", i)))
			if r.status != 200 {
				t.Fatalf("post %d: %d %q", i, r.status, r.body)
			}
		}
		want := "entry 1\nentry 2\nentry 3\n"
		if r := c.get("/guestbook"); r.status != 200 || string(r.body) != want {
			t.Fatalf("book: %d %q", r.status, r.body)
		}
		if got := k.Run(t, "files", "read", "/wagi/guestbook/guestbook.txt"); got != want {
			t.Fatalf("ipfs files read: %q, want %q", got, want)
		}
	})

	t.Run("a PNG from a read-only IPFS volume arrives byte for byte", func(t *testing.T) {
		r := c.get("/static/logo.png")
		if r.status != 200 || r.header.Get("Content-Type") != "image/png" || !bytes.Equal(r.body, pngBytes.Bytes()) {
			t.Fatalf("got %d %s, %d bytes (want %d)", r.status, r.header.Get("Content-Type"), len(r.body), pngBytes.Len())
		}
	})

	t.Run("a CID that is not wasm is 502 and the log names it", func(t *testing.T) {
		if r := c.get("/notwasm"); r.status != 502 {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		w.log.waitFor(t, 5*time.Second, "module not available", notWasm, "not a WebAssembly binary")
		if r := c.get("/ipfs/" + notWasm + "/"); r.status != 502 {
			t.Fatalf("through the gateway: %d %q", r.status, r.body)
		}
	})

	t.Run("a module over max_module_size is 502", func(t *testing.T) {
		if r := c.get("/big"); r.status != 502 {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		w.log.waitFor(t, 5*time.Second, "module not available", "too large")
	})

	t.Run("twenty concurrent first requests for one new CID fetch it once", func(t *testing.T) {
		before := strings.Count(w.log.String(), "module fetched from IPFS")
		var wg sync.WaitGroup
		errs := make(chan string, 20)
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := c.do("POST", "/ipfs/"+echo+"/", []byte("x"))
				if r.status != 200 {
					errs <- fmt.Sprintf("%d %q", r.status, r.body)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Fatal(e)
		}
		// echo was fetched once already by the gateway test above: the
		// cache answers now. A fresh manager proves the single fetch.
		if got := strings.Count(w.log.String(), "module fetched from IPFS") - before; got != 0 {
			t.Fatalf("%d fetches for an already loaded module", got)
		}
	})

	t.Run("an IPNS name is resolved to its module", func(t *testing.T) {
		// Publishing works offline with --allow-offline; the name is the
		// node's own key.
		name := strings.TrimSpace(k.Run(t, "id", "-f", "<id>"))
		k.Run(t, "name", "publish", "--allow-offline", "--key", "self", "/ipfs/"+hello)
		dir2 := t.TempDir()
		w2 := startWagi(t, bin, dir2, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 1
[ipfs]
api = %q
[[module]]
route = "/named"
module = "/ipns/%s"
`, k.API, name))
		n2 := startNginx(t, dir2, w2.sock)
		if r := newClient(t, n2.base).get("/named"); r.status != 200 || string(r.body) != "Hello, world!\n" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("wagi-fcgi run mounts an MFS directory", func(t *testing.T) {
		out, errs, code := runBin(t, bin, []byte("from run"), "run", "--state-dir", filepath.Join(dir, "runstate"),
			"--ipfs", k.API, "--dir", "/data=mfs:/wagi/run", filepath.Join(mods, "files.wasm"), "write", "/data/note.txt")
		if code != 0 || !strings.Contains(out, "wrote 8") {
			t.Fatalf("exit %d: %q %q", code, out, errs)
		}
		if got := k.Run(t, "files", "read", "/wagi/run/note.txt"); got != "from run" {
			t.Fatalf("ipfs files read: %q", got)
		}
		out, _, code = runBin(t, bin, nil, "run", "--state-dir", filepath.Join(dir, "runstate"), "--ipfs", k.API, "ipfs://"+hello)
		if code != 0 || !strings.Contains(out, "Hello, world!") {
			t.Fatalf("run ipfs://: exit %d %q", code, out)
		}
	})

	t.Run("with kubo stopped a cached module still answers and a new CID is 503", func(t *testing.T) {
		k.Stop(t)
		defer k.Restart(t)
		if r := c.get("/hello"); r.status != 200 {
			t.Fatalf("cached module: %d %q", r.status, r.body)
		}
		r := c.get("/ipfs/" + raw + "/")
		if r.status != 503 || r.header.Get("Retry-After") == "" {
			t.Fatalf("new CID with kubo down: %d %v %q", r.status, r.header, r.body)
		}
	})

	t.Run("after a restart cached modules answer without kubo", func(t *testing.T) {
		k.Stop(t)
		defer k.Restart(t)
		w.stop(t)
		w2 := startWagi(t, bin, dir, config)
		if r := c.get("/hello"); r.status != 200 {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		if strings.Contains(w2.log.String(), "module fetched from IPFS") {
			t.Fatal("a restarted manager fetched a cached module")
		}
	})
}

// TestIPFSConcurrentFirstRequestsFetchOnce starts a manager that has never
// seen a CID and sends it twenty requests at once.
func TestIPFSConcurrentFirstRequestsFetchOnce(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	echo := k.AddFile(t, filepath.Join(testenv.Modules(t), "echo.wasm"))
	w := startWagi(t, bin, dir, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 2
queue = 64
[ipfs]
api = %q
[[module]]
route = "/echo"
module = "ipfs://%s"
`, k.API, echo))
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)
	var wg sync.WaitGroup
	errs := make(chan string, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			body := []byte(fmt.Sprint("request ", i))
			if r := c.do("POST", "/echo", body); r.status != 200 || !bytes.Equal(r.body, body) {
				errs <- fmt.Sprintf("%d %q", r.status, r.body)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	if got := strings.Count(w.log.String(), "module fetched from IPFS"); got != 1 {
		t.Fatalf("%d fetches, want 1", got)
	}
}

// BenchmarkIPFSFirstRequest measures the first request for a module by CID
// that the manager has never seen (fetch from kubo, validate, compile, run),
// and the first request after a manager restart with the cache warm (no
// fetch, compile from the file cache), for a small C module and a Go one.
func BenchmarkIPFSFirstRequest(b *testing.B) {
	k := testenv.StartKubo(b)
	mods := testenv.Modules(b)
	for _, name := range []string{"hello", "gohello"} {
		b.Run(name, func(b *testing.B) {
			var cold, warm time.Duration
			for i := 0; i < b.N; i++ {
				dir := b.TempDir()
				bin := buildBinary(b, dir)
				cid := k.AddFile(b, filepath.Join(mods, name+".wasm"))
				config := fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 2
[ipfs]
api = %q
[[module]]
route = "/m/..."
module = "ipfs://%s"
`, k.API, cid)
				w := startWagi(b, bin, dir, config)
				n := startNginx(b, dir, w.sock)
				c := newClient(b, n.base)
				start := time.Now()
				if r := c.get("/m/"); r.status != 200 {
					b.Fatalf("cold: %d %q", r.status, r.body)
				}
				cold += time.Since(start)
				w.stop(b)
				startWagi(b, bin, dir, config)
				start = time.Now()
				if r := c.get("/m/"); r.status != 200 {
					b.Fatalf("warm: %d %q", r.status, r.body)
				}
				warm += time.Since(start)
			}
			b.ReportMetric(float64(cold.Microseconds())/1000/float64(b.N), "ms-new-cid")
			b.ReportMetric(float64(warm.Microseconds())/1000/float64(b.N), "ms-after-restart")
		})
	}
}
