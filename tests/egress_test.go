package tests

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestOutboundHTTPGoesThroughTheAllowlist runs a C module written against
// WAGI's wasi_experimental_http ABI (outbound.c) through the real binary
// behind nginx, against an upstream that is a second server block of the
// same nginx on loopback: fixed content, a redirect to a host the module
// may not reach, and a response larger than the module's cap. The slow
// upstream is a Go server in this test (nginx cannot wait on demand).
// Every refusal must come with WAGI's error code, a log line with the
// request id, and no connection in the upstream's access log.
func TestOutboundHTTPGoesThroughTheAllowlist(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)

	// The upstream: its own server block, with its own access log.
	uport := freePort(t)
	upDir := filepath.Join(dir, "upstream")
	if err := os.MkdirAll(upDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(upDir, "huge.bin"), make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	ndir := filepath.Join(dir, "nginx")
	if err := os.MkdirAll(filepath.Join(ndir, "conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	upstreamLog := filepath.Join(ndir, "logs", "upstream.log")
	upConf := fmt.Sprintf(`
log_format upstream '$request_uri from=$http_x_from_guest host=$http_host';
server {
    listen 127.0.0.1:%[1]d;
    access_log %[2]s upstream;
    location = /fixed { default_type text/plain; return 200 "hello from upstream\n"; }
    location = /redirect { return 302 http://localhost:%[1]d/redirected-target; }
    location = /huge { default_type application/octet-stream; alias %[3]s/huge.bin; }
    location / { default_type text/plain; return 200 "probe\n"; }
}
`, uport, upstreamLog, upDir)
	if err := os.WriteFile(filepath.Join(ndir, "conf.d", "upstream.conf"), []byte(upConf), 0o644); err != nil {
		t.Fatal(err)
	}

	// The slow upstream: a Go server on loopback (nginx cannot sleep on
	// request), holding each request until its client goes away.
	cancelled := make(chan struct{}, 16)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			cancelled <- struct{}{}
		case <-time.After(2 * time.Minute):
		}
	}))
	defer slow.Close()
	sport := slow.Listener.Addr().String()

	up := fmt.Sprintf("http://127.0.0.1:%d", uport)
	w := startWagi(t, bin, dir, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 2
[[module]]
route = "/allowed"
module = "{{mods}}/outbound.wasm"
allowed_hosts = ["%[1]s"]
http_max_response = "1MiB"
http_max_requests = 3
http_max_concurrency = 2
[[module]]
route = "/abi"
module = "{{mods}}/outbound.wasm"
allowed_hosts = ["%[1]s"]
[[module]]
route = "/gohttp"
module = "{{mods}}/gohttp.wasm"
allowed_hosts = ["%[1]s"]
[[module]]
route = "/none"
module = "{{mods}}/outbound.wasm"
[[module]]
route = "/allowall"
module = "{{mods}}/outbound.wasm"
allowed_hosts = ["insecure:allow-all"]
[[module]]
route = "/slow"
module = "{{mods}}/outbound.wasm"
allowed_hosts = ["http://%[2]s"]
timeout = "2s"
[[module]]
route = "/slowcall"
module = "{{mods}}/outbound.wasm"
allowed_hosts = ["http://%[2]s"]
http_timeout = "1s"
`, up, sport))
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	upstreamSaw := func(path string) bool {
		b, _ := os.ReadFile(upstreamLog)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, path+" ") {
				return true
			}
		}
		return false
	}
	page := func(t *testing.T, path string) string {
		t.Helper()
		r := c.get(path)
		if r.status != 200 {
			t.Fatalf("GET %s: %d %q", path, r.status, r.body)
		}
		return string(r.body)
	}

	t.Run("an allowed fetch shows the upstream's body", func(t *testing.T) {
		body := page(t, "/allowed?get&"+up+"/fixed")
		for _, want := range []string{"status 200\n", "content-type text/plain\n", "headers ok", "body:hello from upstream\n", "read 20 bytes, close 0"} {
			if !strings.Contains(body, want) {
				t.Fatalf("page lacks %q:\n%s", want, body)
			}
		}
		b, _ := os.ReadFile(upstreamLog)
		if !strings.Contains(string(b), "/fixed from=outbound.c host=127.0.0.1:") {
			t.Fatalf("upstream log lacks the guest's request with its header:\n%s", b)
		}
		w.log.waitFor(t, 5*time.Second, "outbound HTTP", "module=", "url="+up+"/fixed", "status=200", "received=20")
	})

	t.Run("a Go module fetches through the same ABI", func(t *testing.T) {
		body := page(t, "/gohttp?"+up+"/fixed-from-go")
		if body != "status 200\nbody:probe\n" {
			t.Fatalf("page: %q", body)
		}
		if !upstreamSaw("/fixed-from-go") {
			t.Fatal("the upstream did not see the request")
		}
		if body := page(t, fmt.Sprintf("/gohttp?http://localhost:%d/go-denied", uport)); body != "error 7\n" || upstreamSaw("/go-denied") {
			t.Fatalf("page: %q", body)
		}
	})

	t.Run("misuse of the functions gets WAGI's error codes", func(t *testing.T) {
		// The calls refused by the proxy count towards
		// http_max_requests (16 here) like any other.
		body := page(t, "/abi?abi&"+up+"/abi")
		want := "range 4 utf8 6 url 10 method 8 headers 9 handle 1 req 0 missing 5 small 4 allsmall 4 bodyhandle 1 close 0 closeunknown 0 closed 1"
		if strings.TrimSpace(body) != want {
			t.Fatalf("page:\n%s\nwant:\n%s", body, want)
		}
	})

	t.Run("a module with no allowed_hosts loads and is refused without a connection", func(t *testing.T) {
		body := page(t, "/none?get&"+up+"/none-probe")
		if strings.TrimSpace(body) != "error 7" {
			t.Fatalf("page: %q, want DestinationNotAllowed (7)", body)
		}
		w.log.waitFor(t, 5*time.Second, "outbound HTTP refused", "url="+up+"/none-probe", "error=7", "no allowed_hosts")
		if upstreamSaw("/none-probe") {
			t.Fatal("the upstream was reached")
		}
	})

	t.Run("a host not in allowed_hosts is refused without a connection", func(t *testing.T) {
		body := page(t, fmt.Sprintf("/allowed?get&http://localhost:%d/other-host-probe", uport))
		if strings.TrimSpace(body) != "error 7" {
			t.Fatalf("page: %q, want DestinationNotAllowed (7)", body)
		}
		if upstreamSaw("/other-host-probe") {
			t.Fatal("the upstream was reached")
		}
	})

	t.Run("insecure:allow-all does not open loopback", func(t *testing.T) {
		body := page(t, "/allowall?get&"+up+"/allowall-probe")
		if strings.TrimSpace(body) != "error 7" {
			t.Fatalf("page: %q, want DestinationNotAllowed (7)", body)
		}
		w.log.waitFor(t, 5*time.Second, "outbound HTTP refused", "url="+up+"/allowall-probe", "loopback address")
		if upstreamSaw("/allowall-probe") {
			t.Fatal("the upstream was reached")
		}
	})

	t.Run("a redirect to a denied host is refused", func(t *testing.T) {
		body := page(t, "/allowed?get&"+up+"/redirect")
		if strings.TrimSpace(body) != "error 7" {
			t.Fatalf("page: %q, want DestinationNotAllowed (7)", body)
		}
		if !upstreamSaw("/redirect") || upstreamSaw("/redirected-target") {
			b, _ := os.ReadFile(upstreamLog)
			t.Fatalf("want the first hop only in the upstream log:\n%s", b)
		}
		w.log.waitFor(t, 5*time.Second, "outbound HTTP refused", "url="+up+"/redirect", "redirect to http://localhost")
	})

	t.Run("a response over http_max_response is refused", func(t *testing.T) {
		body := page(t, "/allowed?get&"+up+"/huge")
		if strings.TrimSpace(body) != "error 11" {
			t.Fatalf("page: %q, want RequestError (11)", body)
		}
		w.log.waitFor(t, 5*time.Second, "outbound HTTP refused", "url="+up+"/huge", "http_max_response")
	})

	t.Run("more open responses than http_max_concurrency are TooManySessions", func(t *testing.T) {
		body := page(t, "/allowed?many&3&"+up+"/fixed")
		if strings.TrimSpace(body) != "1:200 2:200 3:error 13" {
			t.Fatalf("page: %q", body)
		}
	})

	t.Run("more requests than http_max_requests are TooManySessions", func(t *testing.T) {
		body := page(t, "/allowed?seq&5&"+up+"/fixed")
		if strings.TrimSpace(body) != "1:200 2:200 3:200 4:error 13 5:error 13" {
			t.Fatalf("page: %q", body)
		}
		w.log.waitFor(t, 5*time.Second, "outbound HTTP refused", "http_max_requests")
	})

	t.Run("http_timeout ends a slow call and the guest goes on", func(t *testing.T) {
		start := time.Now()
		body := page(t, "/slowcall?get&http://"+sport+"/slowcall")
		if strings.TrimSpace(body) != "error 11" {
			t.Fatalf("page: %q, want RequestError (11)", body)
		}
		// http_timeout is wall time: bounded, generously.
		if d := time.Since(start); d > 15*time.Second {
			t.Fatalf("took %v with http_timeout = 1s", d)
		}
		select {
		case <-cancelled:
		case <-time.After(10 * time.Second):
			t.Fatal("the slow upstream's request was not cancelled")
		}
	})

	t.Run("a guest waiting on a slow upstream is killed on time", func(t *testing.T) {
		start := time.Now()
		r := c.get("/slow?get&http://" + sport + "/slow")
		// The request's timeout is wall time (2s): bounded, generously.
		if d := time.Since(start); r.status != 504 || d > 20*time.Second {
			t.Fatalf("got %d after %v, want 504 on time", r.status, d)
		}
		id := r.header.Get("X-Request-Id")
		if !regexp.MustCompile(`^\S+$`).MatchString(id) {
			t.Fatalf("no request id: %q", id)
		}
		w.log.waitFor(t, 10*time.Second, "child killed", "reason=timeout")
		w.log.waitFor(t, 10*time.Second, "outbound HTTP refused", "id="+id, "url=http://"+sport+"/slow")
		select {
		case <-cancelled:
		case <-time.After(10 * time.Second):
			t.Fatal("the outbound request was not cancelled when its guest was killed")
		}
		w.waitChildren(t, 2, 20*time.Second)
		// The replacement serves.
		if body := page(t, "/allowed?get&"+up+"/fixed"); !strings.Contains(body, "hello from upstream") {
			t.Fatalf("after the kill: %q", body)
		}
	})
}
