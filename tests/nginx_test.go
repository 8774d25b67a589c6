package tests

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// coreConfig routes every test module; {{dir}} and {{mods}} are expanded.
const coreConfig = `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 2
queue = 64

[limits]
timeout = "10s"
max_body = "1MiB"

[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"

[[module]]
route = "/env/..."
module = "{{mods}}/env.wasm"
environment = { GREETING = "hi", SERVER_PORT = "module-env-loses" }

[[module]]
route = "/envexact"
module = "{{mods}}/env.wasm"

[[module]]
route = "/argv/..."
module = "{{mods}}/env.wasm"
argv = "${SCRIPT_NAME} extra ${ARGS}"

[[module]]
route = "/echo"
module = "{{mods}}/echo.wasm"

[[module]]
route = "/raw"
module = "{{mods}}/raw.wasm"

[[module]]
route = "/exit"
module = "{{mods}}/exit.wasm"

[[module]]
route = "/trap"
module = "{{mods}}/trap.wasm"

[[module]]
route = "/noheaders"
module = "{{mods}}/noheaders.wasm"

[[module]]
route = "/routes/..."
module = "{{mods}}/routes.wasm"

[[module]]
route = "/other"
module = "{{mods}}/routes.wasm"
entrypoint = "other"

[[module]]
route = "/go/..."
module = "{{mods}}/gohello.wasm"

[[module]]
route = "/goecho"
module = "{{mods}}/goecho.wasm"

[[module]]
route = "/sleep"
module = "{{mods}}/sleep.wasm"

[[module]]
route = "/stderr"
module = "{{mods}}/stderr.wasm"

[[module]]
route = "/files"
module = "{{mods}}/files.wasm"
volumes = { "/static" = "{{dir}}/static:ro", "/data" = "{{dir}}/data" }
`

// TestNginx runs the core cases through a real nginx using the shipped
// conf/nginx files, against one wagi-fcgi.
func TestNginx(t *testing.T) {
	dir, w := startCoreWagi(t, coreConfig)
	n := startNginx(t, dir, w.sock)
	runCoreCases(t, dir, w, frontEnd{name: "nginx", base: n.base, port: n.port, abortsUpstream: true})
}

// startCoreWagi starts one wagi-fcgi with config (coreConfig, perhaps with
// settings of its own in front), with the directories its /files volumes
// need, and checks that its children are up before any request.
func startCoreWagi(t *testing.T, config string) (string, *wagiProc) {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"static", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "static", "hello.txt"), []byte("static file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	childWritable(t, filepath.Join(dir, "data"))
	bin := buildBinary(t, dir)
	w := startWagi(t, bin, dir, config)

	t.Run("children are running before the first request", func(t *testing.T) {
		w.waitChildren(t, 2, 5*time.Second)
	})
	return dir, w
}

// frontEnd is the web server the core cases go through.
type frontEnd struct {
	name string // "nginx", "apache"
	base string // http://127.0.0.1:port
	port int
	// abortsUpstream: the server closes its FastCGI connection as soon as
	// its client goes away while the module is still running (so
	// wagi-fcgi kills the child at once).
	abortsUpstream bool
}

// runCoreCases runs the request cases every supported web server must
// pass, through fe, against w (started by startCoreWagi in dir).
func runCoreCases(t *testing.T, dir string, w *wagiProc, fe frontEnd) {
	c := newClient(t, fe.base)

	t.Run("hello answers 200 with the module's body", func(t *testing.T) {
		r := c.get("/hello")
		if r.status != 200 || string(r.body) != "Hello, world!\n" || r.header.Get("Content-Type") != "text/plain" {
			t.Fatalf("got %d %q %v", r.status, r.body, r.header)
		}
	})

	t.Run("an exact route does not match a trailing slash", func(t *testing.T) {
		if r := c.get("/hello/"); r.status != 404 {
			t.Fatalf("got %d", r.status)
		}
	})

	t.Run("an unknown path is 404 with a request id", func(t *testing.T) {
		r := c.get("/no/such/route")
		if r.status != 404 || !strings.Contains(string(r.body), "request id: ") || r.header.Get("X-Request-Id") == "" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("every CGI variable has the value the compat table gives", func(t *testing.T) {
		host := fmt.Sprintf("Example.test:%d", fe.port)
		req := "GET /env/a%3bb/c?x=1&y=%20&&z HTTP/1.1\r\n" +
			"Host: " + host + "\r\n" +
			"X-Test: v1\r\n" +
			"X-Dup: one\r\nX-Dup: two\r\n" +
			"Authorization: Bearer secret\r\n" +
			"Proxy: http://evil.example\r\n" +
			"Content-Type: text/x-test\r\n" +
			"Connection: close\r\n\r\n"
		r := rawRequest(t, fmt.Sprintf("127.0.0.1:%d", fe.port), req)
		if r.status != 200 {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		argv, env := parseEnvOutput(t, r.body)
		wantEnv := map[string]string{
			"GATEWAY_INTERFACE": "CGI/1.1",
			"SERVER_SOFTWARE":   "wagi-fcgi/" + testVersion,
			"SERVER_PROTOCOL":   "HTTP/1.1",
			"REQUEST_METHOD":    "GET",
			"QUERY_STRING":      "x=1&y=%20&&z",
			"REMOTE_ADDR":       "127.0.0.1",
			"REMOTE_HOST":       "127.0.0.1",
			"AUTH_TYPE":         "",
			"REMOTE_USER":       "",
			"SERVER_NAME":       "Example.test",
			"SERVER_PORT":       fmt.Sprint(fe.port),
			"CONTENT_LENGTH":    "0",
			"CONTENT_TYPE":      "text/x-test",
			"SCRIPT_NAME":       "/env",
			"PATH_INFO":         "/a;b/c",
			"PATH_TRANSLATED":   "/a;b/c",
			"X_RAW_PATH_INFO":   "/a%3bb/c",
			"X_MATCHED_ROUTE":   "/env/...",
			"X_FULL_URL":        fmt.Sprintf("http://Example.test:%d/env/a%%3bb/c?x=1&y=%%20&&z", fe.port),
			"HTTP_X_TEST":       "v1",
			"HTTP_X_DUP":        "one, two",
			"HTTP_HOST":         host,
			"GREETING":          "hi",
		}
		for k, v := range wantEnv {
			got, ok := env[k]
			if !ok {
				t.Errorf("%s missing", k)
			} else if got != v {
				t.Errorf("%s = %q, want %q", k, got, v)
			}
		}
		if !regexp.MustCompile(`^[0-9]+$`).MatchString(env["REMOTE_PORT"]) {
			t.Errorf("REMOTE_PORT = %q", env["REMOTE_PORT"])
		}
		for _, k := range []string{"HTTP_AUTHORIZATION", "HTTP_CONNECTION", "HTTP_PROXY", "WAGI_TEST_CANARY", "PATH", "HOME"} {
			if v, ok := env[k]; ok {
				t.Errorf("%s must not reach the module, got %q", k, v)
			}
		}
		wantArgv := []string{"/env/a%3bb/c", "x=1", "y=%20", "", "z"}
		if fmt.Sprint(argv) != fmt.Sprint(wantArgv) {
			t.Errorf("argv = %q, want %q", argv, wantArgv)
		}
	})

	t.Run("an exact route has an empty PATH_INFO", func(t *testing.T) {
		_, env := parseEnvOutput(t, c.get("/envexact").body)
		if env["SCRIPT_NAME"] != "/envexact" || env["PATH_INFO"] != "" || env["X_MATCHED_ROUTE"] != "/envexact" {
			t.Fatalf("SCRIPT_NAME=%q PATH_INFO=%q", env["SCRIPT_NAME"], env["PATH_INFO"])
		}
	})

	t.Run("a POST body arrives with its length and type", func(t *testing.T) {
		r := c.do("POST", "/env/x", []byte("a=1&b=2"), "Content-Type", "application/x-www-form-urlencoded")
		_, env := parseEnvOutput(t, r.body)
		if env["REQUEST_METHOD"] != "POST" || env["CONTENT_LENGTH"] != "7" || env["CONTENT_TYPE"] != "application/x-www-form-urlencoded" {
			t.Fatalf("env %v", env)
		}
	})

	t.Run("an argv template expands SCRIPT_NAME and ARGS", func(t *testing.T) {
		argv, _ := parseEnvOutput(t, c.get("/argv/p?a=1&b=2").body)
		want := []string{"/argv/p", "extra", "a=1", "b=2"}
		if fmt.Sprint(argv) != fmt.Sprint(want) {
			t.Fatalf("argv = %q, want %q", argv, want)
		}
	})

	t.Run("a POST body is echoed back exactly", func(t *testing.T) {
		body := []byte("hello\r\nworld\n")
		r := c.do("POST", "/echo", body)
		if r.status != 200 || !bytes.Equal(r.body, body) {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("a binary body survives byte for byte through C and Go modules", func(t *testing.T) {
		body := make([]byte, 300<<10)
		for i := range body {
			body[i] = byte(i*7 + i/256)
		}
		for _, path := range []string{"/echo", "/goecho"} {
			r := c.do("POST", path, body, "Content-Type", "application/octet-stream")
			if r.status != 200 || !bytes.Equal(r.body, body) {
				t.Fatalf("%s: status %d, %d bytes back, equal=%v", path, r.status, len(r.body), bytes.Equal(r.body, body))
			}
		}
	})

	t.Run("an empty body is an empty stdin", func(t *testing.T) {
		r := c.do("POST", "/echo", []byte{})
		if r.status != 200 || len(r.body) != 0 {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("a body over max_body is 413", func(t *testing.T) {
		r := c.do("POST", "/echo", bytes.Repeat([]byte("x"), 2<<20))
		if r.status != 413 {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		if r := c.get("/hello"); r.status != 200 {
			t.Fatalf("after 413: %d", r.status)
		}
	})

	rawCases := []struct {
		name    string
		output  string
		status  int
		headers map[string][]string
		body    string
	}{
		{"Status with a reason sets the code", "Status: 404 Not Found\nContent-Type: text/plain\n\ngone\n", 404, nil, "gone\n"},
		{"Status without a reason sets the code", "Status: 201\r\nContent-Type: text/plain\r\n\r\nmade", 201, nil, "made"},
		{"Location without Status redirects with 302", "Location: /elsewhere\n\n", 302, map[string][]string{"Location": {"/elsewhere"}}, ""},
		{"Status wins over Location", "Status: 301 Moved Permanently\nLocation: /new\nContent-Type: text/plain\n\nmoved", 301, map[string][]string{"Location": {"/new"}}, "moved"},
		{"several Set-Cookie lines all reach the client", "Content-Type: text/plain\nSet-Cookie: a=1\nSet-Cookie: b=2\nSet-Cookie: c=3\n\ncookies", 200,
			map[string][]string{"Set-Cookie": {"a=1", "b=2", "c=3"}}, "cookies"},
		{"other headers pass through", "Content-Type: text/html\nX-Custom: yes\nCache-Control: no-store\n\n<p>", 200,
			map[string][]string{"X-Custom": {"yes"}, "Cache-Control": {"no-store"}, "Content-Type": {"text/html"}}, "<p>"},
		{"output without Content-Type, Status or Location is 502", "X-Only: this\n\nbody", 502, nil, ""},
		{"output without any header is 502", "just text\n", 502, nil, ""},
		{"a malformed Status is 502", "Status: abc\nContent-Type: text/plain\n\n", 502, nil, ""},
		{"a header with a control character is 502", "Content-Type: text/plain\nX-Bad: a\x01b\n\n", 502, nil, ""},
		{"no output at all is 502", "", 502, nil, ""},
	}
	for _, tc := range rawCases {
		t.Run(tc.name, func(t *testing.T) {
			r := c.do("POST", "/raw", []byte(tc.output))
			if r.status != tc.status {
				t.Fatalf("status %d, want %d; body %q", r.status, tc.status, r.body)
			}
			for k, want := range tc.headers {
				if got := r.header.Values(k); fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if tc.status < 500 && string(r.body) != tc.body {
				t.Errorf("body %q, want %q", r.body, tc.body)
			}
			if tc.status >= 500 && !strings.Contains(string(r.body), "request id: ") {
				t.Errorf("a 5xx from wagi-fcgi needs a request id, got %q", r.body)
			}
		})
	}

	routeCases := []struct {
		path   string
		status int
		body   string
	}{
		{"/routes", 200, "parent\n"},
		{"/routes/", 200, "parent\n"},
		{"/routes/a", 200, "a\n"},
		{"/routes/a/deeper", 200, "parent\n"}, // /a is exact
		{"/routes/b", 200, "b\n"},
		{"/routes/b/anything", 200, "b\n"},
		{"/routes/c", 200, "parent\n"},
		{"/routesx", 404, ""},
		{"/other", 200, "other entrypoint\n"},
	}
	for _, tc := range routeCases {
		t.Run("route "+tc.path, func(t *testing.T) {
			r := c.get(tc.path)
			if r.status != tc.status || (tc.status == 200 && string(r.body) != tc.body) {
				t.Fatalf("got %d %q, want %d %q", r.status, r.body, tc.status, tc.body)
			}
		})
	}

	t.Run("a trap is 500 and the log has the request id", func(t *testing.T) {
		r := c.get("/trap")
		if r.status != 500 {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		id := r.header.Get("X-Request-Id")
		if id == "" || strings.Contains(string(r.body), "unreachable") {
			t.Fatalf("want a request id and no details in the body, got %q", r.body)
		}
		w.log.waitFor(t, 5*time.Second, "id="+id, "module failed")
	})

	t.Run("a non-zero exit is 500", func(t *testing.T) {
		if r := c.get("/exit?3"); r.status != 500 {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("exit code 0 is success", func(t *testing.T) {
		if r := c.get("/exit?0"); r.status != 200 || string(r.body) != "exiting\n" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("a module without headers is 502", func(t *testing.T) {
		if r := c.get("/noheaders"); r.status != 502 {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("a Go module runs and proc_exit(0) is success", func(t *testing.T) {
		r := c.get("/go/some/path")
		want := "Hello from Go\nmethod=GET\npath_info=/some/path\n"
		if r.status != 200 || string(r.body) != want {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	})

	t.Run("stderr goes to the log with the request id", func(t *testing.T) {
		r := c.get("/stderr?2")
		if r.status != 200 {
			t.Fatalf("got %d", r.status)
		}
		id := r.header.Get("X-Request-Id")
		if id != "" {
			t.Fatalf("a module's own response carries no X-Request-Id, got %q", id)
		}
		w.log.waitFor(t, 5*time.Second, "module stderr", "line 2 to stderr", "route=/stderr")
	})

	t.Run("a read-only volume can be read but not written", func(t *testing.T) {
		if r := c.get("/files?read&/static/hello.txt"); r.status != 200 || string(r.body) != "static file\n" {
			t.Fatalf("read: %d %q", r.status, r.body)
		}
		if r := c.do("POST", "/files?write&/static/new.txt", []byte("x")); r.status != 500 {
			t.Fatalf("write to :ro volume: %d %q", r.status, r.body)
		}
		if _, err := os.Stat(filepath.Join(dir, "static", "new.txt")); err == nil {
			t.Fatal("a file appeared in the read-only volume")
		}
	})

	t.Run("a read-write volume keeps what a request wrote", func(t *testing.T) {
		if r := c.do("POST", "/files?write&/data/note.txt", []byte("written by a module")); r.status != 200 {
			t.Fatalf("write: %d %q", r.status, r.body)
		}
		if r := c.get("/files?read&/data/note.txt"); string(r.body) != "written by a module" {
			t.Fatalf("read back: %d %q", r.status, r.body)
		}
		b, err := os.ReadFile(filepath.Join(dir, "data", "note.txt"))
		if err != nil || string(b) != "written by a module" {
			t.Fatalf("on disk: %q %v", b, err)
		}
	})

	t.Run("many requests share few kept-alive FastCGI connections", func(t *testing.T) {
		burst := func() {
			var wg sync.WaitGroup
			errs := make(chan error, 100)
			for i := 0; i < 4; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := 0; j < 25; j++ {
						if r := c.get("/hello"); r.status != 200 {
							errs <- fmt.Errorf("status %d", r.status)
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
		}
		burst()
		first := fcgiConns(t, w.sock)
		burst()
		second := fcgiConns(t, w.sock)
		reused := 0
		for ino := range second {
			if first[ino] {
				reused++
			}
		}
		if len(second) == 0 || len(second) > 8 || reused == 0 {
			t.Fatalf("after 200 requests: %d open FastCGI connections, %d of them also open before the second 100; want 1..8 and reuse",
				len(second), reused)
		}
	})

	t.Run("malformed FastCGI records close that connection and nothing else", func(t *testing.T) {
		cases := []struct {
			name  string
			bytes []byte
		}{
			{"a record of version 2", []byte{2, 1, 0, 1, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0}},
			{"a truncated header", []byte{1, 1, 0}},
			{"a record cut inside its content", []byte{1, 1, 0, 1, 0, 8, 0, 0, 0, 1}},
			{"random bytes", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		}
		for _, tc := range cases {
			conn, err := net.Dial("unix", w.sock)
			if err != nil {
				t.Fatal(err)
			}
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Write(tc.bytes); err != nil {
				t.Fatal(err)
			}
			if uc, ok := conn.(*net.UnixConn); ok {
				_ = uc.CloseWrite()
			}
			// The server answers nothing useful and closes.
			buf := make([]byte, 1024)
			for {
				if _, err := conn.Read(buf); err != nil {
					break
				}
			}
			conn.Close()
		}
		// Oversized params: a request with 2 MiB of params.
		conn, err := net.Dial("unix", w.sock)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		writeRecord(conn, 1, 1, []byte{0, 1, 0, 0, 0, 0, 0, 0}) // BEGIN_REQUEST, responder
		pair := append([]byte{9, 0x80, 0, 0xff, 0xf0}, "HTTP_HUGE"...)
		pair = append(pair, bytes.Repeat([]byte("x"), 0xfff0)...)
		for sent := 0; sent < 2<<20; sent += len(pair) {
			for i := 0; i < len(pair); i += 0xfff8 {
				writeRecord(conn, 4, 1, pair[i:min(i+0xfff8, len(pair))])
			}
		}
		out := readAll(conn)
		conn.Close()
		if !bytes.Contains(out, []byte("Status: 431")) {
			t.Fatalf("oversized params: got %q", out[:min(len(out), 200)])
		}
		for i := 0; i < 3; i++ {
			if r := c.get("/hello"); r.status != 200 {
				t.Fatalf("after malformed input: %d", r.status)
			}
		}
	})

	t.Run("a client that goes away mid-request gets its child killed", func(t *testing.T) {
		if !fe.abortsUpstream {
			clientAbortRunsToEnd(t, w, c, fe)
			return
		}
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", fe.port))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET /sleep?20000 HTTP/1.1\r\nHost: x\r\n\r\n")
		// Let nginx pass the request on and a child start sleeping.
		time.Sleep(500 * time.Millisecond)
		start := time.Now()
		conn.Close()
		w.log.waitFor(t, 5*time.Second, "child killed", `reason="client abort"`)
		w.waitChildren(t, 2, 5*time.Second)
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("the child was freed %s after the client left", d)
		}
		if r := c.get("/hello"); r.status != 200 {
			t.Fatalf("after the abort: %d", r.status)
		}
	})
}

// writeRecord writes one FastCGI record, ignoring errors (the server may
// have closed the connection already, which is what some tests expect).
func writeRecord(c net.Conn, typ byte, id uint16, content []byte) {
	pad := (8 - len(content)%8) % 8
	h := []byte{1, typ, byte(id >> 8), byte(id), byte(len(content) >> 8), byte(len(content)), byte(pad), 0}
	_, _ = c.Write(append(append(h, content...), make([]byte, pad)...))
}

// readAll reads until the server closes the connection or the deadline.
func readAll(c net.Conn) []byte {
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			return out
		}
	}
}

// fcgiConns returns the inodes of the manager's accepted (connected) unix
// sockets on sock, read from /proc/net/unix.
func fcgiConns(t testing.TB, sock string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// Num RefCount Protocol Flags Type St Inode Path; St 03 = connected.
		if len(f) == 8 && f[7] == sock && f[5] == "03" {
			out[f[6]] = true
		}
	}
	return out
}

// parseEnvOutput splits env.wasm's body into argv and environment.
func parseEnvOutput(t testing.TB, body []byte) ([]string, map[string]string) {
	t.Helper()
	var argv []string
	env := map[string]string{}
	for _, line := range strings.Split(strings.TrimSuffix(string(body), "\n"), "\n") {
		switch {
		case strings.HasPrefix(line, "argv["):
			_, v, _ := strings.Cut(line, "]=")
			argv = append(argv, v)
		case strings.HasPrefix(line, "env:"):
			k, v, _ := strings.Cut(strings.TrimPrefix(line, "env:"), "=")
			env[k] = v
		case line == "":
		default:
			t.Fatalf("unexpected env.wasm line %q in %q", line, body)
		}
	}
	return argv, env
}
