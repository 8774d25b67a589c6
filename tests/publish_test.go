package tests

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// snippetField is the value of a "# key: value" comment line of publish's
// output.
func snippetField(t testing.TB, out, key string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "# "+key+":"); ok {
			return strings.Fields(v)[0]
		}
	}
	t.Fatalf("no %q line in publish's output:\n%s", key, out)
	return ""
}

// resolvesTo fails the test unless the IPNS name resolves to /ipfs/cid on
// the node.
func resolvesTo(t *testing.T, k *testenv.Kubo, name, cid string) {
	t.Helper()
	if got := strings.TrimSpace(k.Run(t, "name", "resolve", "/ipns/"+name)); got != "/ipfs/"+cid {
		t.Fatalf("/ipns/%s resolves to %s, want /ipfs/%s", name, got, cid)
	}
}

// publishOK runs `wagi-fcgi publish args...`, which must succeed, and
// returns its stdout.
func publishOK(t *testing.T, bin string, args ...string) string {
	t.Helper()
	start := time.Now()
	out, errs, code := runBin(t, bin, nil, append([]string{"publish"}, args...)...)
	if code != 0 {
		t.Fatalf("publish %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errs)
	}
	t.Logf("publish %s: %v", args[len(args)-1], time.Since(start).Round(time.Millisecond))
	return out
}

// TestPublish publishes a C module, a directory and an IPNS name to a real
// (offline) kubo node, and serves the printed snippets as they are through
// wagi-fcgi behind nginx.
func TestPublish(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	mods := testenv.Modules(t)

	hello := publishOK(t, bin, "--api", k.API, filepath.Join(mods, "hello.wasm"))
	helloCID := snippetField(t, hello, "cid")
	static := publishOK(t, bin, "--api", k.API, filepath.Join(mods, "static.wasm"))

	site := filepath.Join(dir, "site")
	for name, content := range map[string]string{"index.html": "<p>published</p>\n", "docs/a.txt": "a text\n", ".env": "SECRET=1\n"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(site, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(site, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	volume := publishOK(t, bin, "--api", k.API, "--module", "ipfs://"+snippetField(t, static, "cid"), site)
	siteCID := snippetField(t, volume, "cid")

	app := publishOK(t, bin, "--api", k.API, "--route", "/app/...", "--name", "app", "--create-key", "--allow-offline", "--ttl", "1s",
		filepath.Join(mods, "hello.wasm"))
	name := strings.TrimPrefix(snippetField(t, app, "ipns"), "/ipns/")

	named := publishOK(t, bin, "--api", k.API, "--name", "assets", "--create-key", "--allow-offline", "--route", "/named/...",
		"--mount", "/assets", "--module", "ipfs://"+snippetField(t, static, "cid"), site)

	config := fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 2

[ipfs]
api = %q
fetch_timeout = "20s"
ipns_ttl = "1s"
`, k.API) + hello + volume + app + named
	w := startWagi(t, bin, dir, config)
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	t.Run("the printed snippet serves the module by its CID", func(t *testing.T) {
		for _, want := range []string{
			"[[module]]\nroute = \"/hello/...\"\nmodule = \"ipfs://" + helloCID + "\"\n",
			"# path: /ipfs/" + helloCID + "\n",
		} {
			if !strings.Contains(hello, want) {
				t.Fatalf("publish printed:\n%s\nwant %q in it", hello, want)
			}
		}
		if !strings.HasPrefix(helloCID, "bafk") {
			t.Fatalf("CID %s: want a CIDv1 of a raw leaf (bafk...)", helloCID)
		}
		if r := c.get("/hello/"); r.status != 200 || string(r.body) != "Hello, world!\n" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("what was published is pinned under a name that says wagi-fcgi did it", func(t *testing.T) {
		pins := k.Run(t, "pin", "ls", "--type=recursive", "--names")
		for _, want := range []string{helloCID + " recursive wagi-fcgi publish hello.wasm", siteCID + " recursive wagi-fcgi publish site"} {
			if !strings.Contains(pins, want) {
				t.Fatalf("ipfs pin ls:\n%s\nwant a line %q", pins, want)
			}
		}
	})

	t.Run("a published directory is a volume the module reads, without its hidden files", func(t *testing.T) {
		if !strings.Contains(volume, `volumes = { "/assets" = "ipfs://`+siteCID+`" }`) || !strings.Contains(volume, "(1 hidden left out)") {
			t.Fatalf("publish printed:\n%s", volume)
		}
		if r := c.get("/site/index.html"); r.status != 200 || string(r.body) != "<p>published</p>\n" {
			t.Fatalf("index.html: got %d %q", r.status, r.body)
		}
		if r := c.get("/site/docs/a.txt"); r.status != 200 || string(r.body) != "a text\n" {
			t.Fatalf("docs/a.txt: got %d %q", r.status, r.body)
		}
		if r := c.get("/site/.env"); r.status != 404 {
			t.Fatalf(".env: got %d %q, want 404: hidden files are not published", r.status, r.body)
		}
		if cli := strings.TrimSpace(k.Run(t, "add", "-Q", "-r", "--cid-version=1", "--pin=false", site)); cli != siteCID {
			t.Fatalf("ipfs add -r gives %s, publish %s: the same directory should be the same CID", cli, siteCID)
		}
	})

	t.Run("--name publishes an IPNS name that resolves to the CID and serves", func(t *testing.T) {
		if !strings.Contains(app, "module = \"/ipns/"+name+"\"\n") || !strings.Contains(app, `(key "app", created now)`) {
			t.Fatalf("publish printed:\n%s", app)
		}
		resolvesTo(t, k, name, helloCID)
		if r := c.get("/app/"); r.status != 200 || string(r.body) != "Hello, world!\n" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("a directory published under a name is mounted by the name and serves", func(t *testing.T) {
		dirName := strings.TrimPrefix(snippetField(t, named, "ipns"), "/ipns/")
		if !strings.Contains(named, `volumes = { "/assets" = "/ipns/`+dirName+`" }`) || !strings.Contains(named, "# cid:  "+siteCID+"\n") {
			t.Fatalf("publish printed:\n%s", named)
		}
		resolvesTo(t, k, dirName, siteCID)
		if r := c.get("/named/index.html"); r.status != 200 || string(r.body) != "<p>published</p>\n" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("a module lacking its entrypoint is published with serve's warning", func(t *testing.T) {
		out, errs, code := runBin(t, bin, nil, "publish", "--api", k.API, "--route", "/nope", "--entrypoint", "nope", filepath.Join(mods, "hello.wasm"))
		if code != 0 || !strings.Contains(out, "entrypoint = \"nope\"\n") ||
			!strings.Contains(errs, `warning: route /nope answers 500: entrypoint "nope" is not an exported function of `) {
			t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
		}
	})

	t.Run("a Go module is checked and published like a C one", func(t *testing.T) {
		out := publishOK(t, bin, "--api", k.API, filepath.Join(mods, "gohello.wasm"))
		if !strings.Contains(out, "route = \"/gohello/...\"\n") || !strings.HasPrefix(snippetField(t, out, "cid"), "bafy") {
			t.Fatalf("publish printed:\n%s\nwant a multi-block file's CIDv1 (bafy...)", out)
		}
	})

	t.Run("a second publish under the name moves it, and serve follows", func(t *testing.T) {
		again := publishOK(t, bin, "--api", k.API, "--route", "/app/...", "--name", "app", "--allow-offline", "--ttl", "1s",
			filepath.Join(mods, "exit.wasm"))
		if snippetField(t, again, "ipns") != "/ipns/"+name || strings.Contains(again, "created now") {
			t.Fatalf("publish printed:\n%s\nwant the same name %s, key not made again", again, name)
		}
		exitCID := snippetField(t, again, "cid")
		resolvesTo(t, k, name, exitCID)
		// ipns_ttl is 1 s; a refresh is waited for at most 2 s.
		deadline := time.Now().Add(30 * time.Second)
		for {
			r := c.get("/app/")
			if r.status == 200 && string(r.body) == "exiting\n" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("still %d %q 30 s after the name moved", r.status, r.body)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

// TestPublishRefuses: each way a publish can fail is one line on stderr
// naming what is wrong, a non-zero exit, nothing on stdout, and nothing
// of a refused module on the node.
func TestPublishRefuses(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	mods := testenv.Modules(t)
	hello := filepath.Join(mods, "hello.wasm")

	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	config := func(name, body string) string {
		return write(name, []byte(fmt.Sprintf("[ipfs]\napi = %q\n%s", k.API, body)))
	}
	badText := write("bad.wat", []byte("(module (func (export \"_start\") (no_such_instruction)))\n"))
	bomb := write("bomb.wasm", wasmCommand(compileBombs[0].body, "publish"))
	small := config("small.toml", "max_module_size = \"16KiB\"\nmax_dir_files = 10\nmax_dir_size = \"1KiB\"\n")
	bombCfg := config("bomb.toml", "\n[[module]]\nroute = \"/bomb\"\nmodule = \"ipfs://bafkqaaa\"\ncompile_cpu = \"1s\"\n")
	huge := write("huge.wasm", nil)
	if err := os.Truncate(huge, 10<<30); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.wasm")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	linkOut := filepath.Join(dir, "linkout")
	write("linkout/index.html", []byte("x"))
	if err := os.Symlink("/etc/shadow", filepath.Join(linkOut, "shadow")); err != nil {
		t.Fatal(err)
	}
	for i := range 11 {
		write(fmt.Sprintf("many/f%d", i), nil)
	}
	write("big/a", make([]byte, 2000))

	// Processes that pretend to be kubo.
	stop := make(chan struct{})
	node := func(h http.HandlerFunc) string {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		return srv.URL
	}
	garbage := node(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write([]byte("<html>not kubo</html>"))
	})
	endless := node(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		chunk := []byte(strings.Repeat(`{"Name":"x","Hash":"y"}`, 4096))
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	stall := node(func(w http.ResponseWriter, r *http.Request) { <-stop })
	// Nodes that take the add and then lie about, or flood, what the CID holds.
	addThen := func(cat func(w http.ResponseWriter)) string {
		return node(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			if r.URL.Path == "/api/v0/add" {
				w.Write([]byte(`{"Name":"x","Hash":"bafkreiedfk6r23ev4cjnrgxkhu3svrmsjycfnir46wrasvdqpcojhgbyai","Size":"1"}`))
				return
			}
			cat(w)
		})
	}
	liar := addThen(func(w http.ResponseWriter) { w.Write([]byte("\x00asm other bytes")) })
	flood := addThen(func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(500)
		for {
			if _, err := w.Write(make([]byte, 1<<16)); err != nil {
				return
			}
		}
	})
	t.Cleanup(func() { close(stop) }) // before the servers close: cleanups run last first

	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"bytes that are neither wasm nor WAT are not a module", []string{filepath.Join(mods, "notwasm.wasm")}, 1,
			"notwasm.wasm is not a WebAssembly module: not a WebAssembly binary (no \\0asm magic), and as WebAssembly text it does not convert"},
		{"WAT that does not convert is not a module, with wat2wasm's line", []string{badText}, 1,
			"bad.wat is not a WebAssembly module: not a WebAssembly binary (no \\0asm magic), and as WebAssembly text it does not convert: line 1"},
		{"a module over max_module_size is too large", []string{"-c", small, hello}, 1,
			"module too large: " + hello + " has"},
		{"a huge sparse file is refused before a byte is read", []string{huge}, 1,
			"module too large: " + huge + " has 10737418240 bytes, over max_module_size (64MiB)"},
		{"an import wagi-fcgi does not provide is named", []string{filepath.Join(mods, "badimport.wasm")}, 1,
			"badimport.wasm: serve would refuse it: imports env.missing_host_function, which wagi-fcgi does not provide"},
		{"a compile past the route's compile_cpu fails as in serve", []string{"-c", bombCfg, "--route", "/bomb", bomb}, 1,
			"bomb.wasm: serve would refuse it: compiling used more than compile_cpu (1s) of CPU"},
		{"a FIFO is refused without waiting for a writer", []string{fifo}, 1, "fifo.wasm is a FIFO, not a module file"},
		{"/dev/zero is refused without being read", []string{"/dev/zero"}, 1, "/dev/zero is a character device, not a module file"},
		{"a link out of a directory is refused, naming it", []string{linkOut}, 1,
			`linkout/shadow is a symbolic link (to "/etc/shadow"): publish does not follow links`},
		{"a directory over max_dir_files is too large", []string{"-c", small, filepath.Join(dir, "many")}, 1,
			"directory too large: " + filepath.Join(dir, "many") + " has more than max_dir_files (10) entries"},
		{"a directory over max_dir_size is too large", []string{"-c", small, filepath.Join(dir, "big")}, 1,
			"directory too large: " + filepath.Join(dir, "big") + " has more than max_dir_size (1KiB) in its files"},
		{"an unreachable node is named", []string{"--api", fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", freePort(t)), hello}, 1,
			"is unreachable: connect: connection refused"},
		{"a key the node lacks is named", []string{"--api", k.API, "--name", "nokey", hello}, 1,
			`has no IPNS key "nokey": create it with --create-key`},
		{"an offline node does not publish a name unless allowed", []string{"--api", k.API, "--name", "self", hello}, 1,
			"is offline, so the IPNS record for key \"self\" would stay on it"},
		{"a node answering garbage is not taken for kubo", []string{"--api", garbage, hello}, 1,
			"the IPFS node at " + garbage + ": adding and pinning: the node's answer is not kubo's"},
		{"a node answering without end is cut off", []string{"--api", endless, hello}, 1,
			"the node's answer is not kubo's: add answered more than"},
		{"a node that never answers times out", []string{"--api", stall, "--timeout", "1s", hello}, 1,
			"the IPFS node at " + stall + " did not answer adding and pinning within 1s"},
		{"a node that lies about what the CID holds is caught by the read-back", []string{"--api", liar, hello}, 1,
			"the node's answer is not kubo's: /ipfs/bafkreiedfk6r23ev4cjnrgxkhu3svrmsjycfnir46wrasvdqpcojhgbyai does not hold the bytes just added"},
		{"a node flooding the read-back with an error is read to a bound", []string{"--api", flood, hello}, 1,
			"reading back /ipfs/bafkreiedfk6r23ev4cjnrgxkhu3svrmsjycfnir46wrasvdqpcojhgbyai: cat: 500 Internal Server Error"},
		{"no file is a usage error", []string{}, 2, "publish needs one FILE.wasm, FILE.wat or DIR"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if !strings.Contains(strings.Join(args, " "), "--api") && !strings.Contains(strings.Join(args, " "), "-c ") {
				args = append([]string{"--api", k.API}, args...)
			}
			start := time.Now()
			out, errs, code := runBin(t, bin, nil, append([]string{"publish"}, args...)...)
			took := time.Since(start)
			if code != tc.code || !strings.Contains(errs, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, errs, tc.code, tc.want)
			}
			if out != "" || tc.code == 1 && strings.Count(errs, "\n") != 1 {
				t.Fatalf("stdout %q, stderr %q: want nothing on stdout and one line on stderr", out, errs)
			}
			t.Logf("refused in %v", took.Round(time.Millisecond))
		})
	}

	t.Run("nothing of a refused module was pinned", func(t *testing.T) {
		pins := k.Run(t, "pin", "ls", "--type=recursive", "--names")
		for _, name := range []string{"notwasm.wasm", "bad.wat", "badimport.wasm", "bomb.wasm", "shadow", "many", "big"} {
			if strings.Contains(pins, "wagi-fcgi publish "+name) {
				t.Fatalf("ipfs pin ls:\n%s\nhas a pin of %s", pins, name)
			}
		}
	})
}
