package tests

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// TestApache runs the core cases of TestNginx through a real Apache httpd
// using the shipped conf/apache/wagi-fcgi.conf, against one wagi-fcgi, and
// then proves mod_proxy_fcgi's quirks (split, unpadded PARAMS; chunked
// bodies without CONTENT_LENGTH) by recording the FastCGI records Apache
// sends.
func TestApache(t *testing.T) {
	// Apache refuses to serve as root, so started as root its workers are
	// www-data (see startApache); the socket's group lets them in, as the
	// README tells users to set up.
	config := coreConfig
	if os.Geteuid() == 0 {
		config = "listen_group = \"www-data\"\n" + config
	}
	dir, w := startCoreWagi(t, config)
	// www-data must also be able to reach the sockets in the test's
	// private temporary directory.
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	rec := startRecorder(t, filepath.Join(dir, "rec.sock"), w.sock)
	// Two sites from the same shipped file: one talks to wagi-fcgi
	// directly, one through the recorder.
	a := startApache(t, dir, w.sock, rec.path)
	direct, recorded := a.sites[0], a.sites[1]

	runCoreCases(t, dir, w, frontEnd{name: "apache", base: direct.base, port: direct.port})

	t.Run("the status page is served to localhost", func(t *testing.T) {
		r := newClient(t, direct.base).get("/_wagi/status?json")
		if r.status != 200 || r.header.Get("Content-Type") != "application/json" || !bytes.HasPrefix(r.body, []byte("{")) {
			t.Fatalf("got %d %v %q", r.status, r.header, r.body)
		}
	})

	t.Run("an encoded slash reaches the module (AllowEncodedSlashes NoDecode)", func(t *testing.T) {
		r := newClient(t, direct.base).get("/env/a%2Fb")
		if r.status != 200 {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		_, env := parseEnvOutput(t, r.body)
		if env["X_RAW_PATH_INFO"] != "/a%2Fb" || env["PATH_INFO"] != "/a/b" {
			t.Fatalf("got %d, X_RAW_PATH_INFO=%q PATH_INFO=%q", r.status, env["X_RAW_PATH_INFO"], env["PATH_INFO"])
		}
	})

	c := newClient(t, recorded.base)

	t.Run("the recorder passes requests on unchanged", func(t *testing.T) {
		if r := c.get("/hello?through-recorder"); r.status != 200 || string(r.body) != "Hello, world!\n" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		if req := rec.request(t, "/hello?through-recorder"); req == nil {
			t.Fatal("the request did not go through the recorder")
		}
	})

	t.Run("Apache sends what wagi-fcgi needs, omits what is empty and keeps credentials", func(t *testing.T) {
		r := rawRequest(t, fmt.Sprintf("127.0.0.1:%d", recorded.port), "GET /env/vars?a=1&b HTTP/1.1\r\n"+
			"Host: Example.test:1234\r\nAuthorization: Bearer secret\r\nProxy: http://evil.example\r\nConnection: close\r\n\r\n")
		if r.status != 200 {
			t.Fatalf("status %d: %q", r.status, r.body)
		}
		req := rec.request(t, "/env/vars?a=1&b")
		want := map[string]string{
			"REQUEST_URI":     "/env/vars?a=1&b",
			"QUERY_STRING":    "a=1&b",
			"REQUEST_METHOD":  "GET",
			"SERVER_PROTOCOL": "HTTP/1.1",
			"HTTP_HOST":       "Example.test:1234",
			"SERVER_NAME":     "example.test", // Apache lower-cases it; wagi-fcgi takes the name from HTTP_HOST
			"SERVER_PORT":     "1234",         // UseCanonicalName Off: the Host header's port
			"REMOTE_ADDR":     "127.0.0.1",
			"SCRIPT_FILENAME": "/env/vars", // ProxyFCGIBackendType GENERIC: no "proxy:fcgi://" prefix
		}
		for k, v := range want {
			if got, ok := req.env[k]; !ok || got != v {
				t.Errorf("Apache sent %s=%q (present %v), want %q", k, got, ok, v)
			}
		}
		if req.env["REMOTE_PORT"] == "" {
			t.Error("Apache sent no REMOTE_PORT")
		}
		// Absent, not empty (nginx's fastcgi_params send them empty):
		// wagi-fcgi still gives the module CONTENT_LENGTH=0 and an empty
		// CONTENT_TYPE. No credentials (CGIPassAuth Off) and no
		// HTTP_PROXY (httpoxy) on the wire at all.
		for _, k := range []string{"CONTENT_LENGTH", "CONTENT_TYPE", "HTTP_AUTHORIZATION", "HTTP_PROXY", "HTTPS"} {
			if v, ok := req.env[k]; ok {
				t.Errorf("Apache sent %s=%q", k, v)
			}
		}
		_, env := parseEnvOutput(t, r.body)
		if v, ok := env["CONTENT_LENGTH"]; !ok || v != "0" {
			t.Errorf("module sees CONTENT_LENGTH=%q (present %v), want 0", v, ok)
		}
		if v, ok := env["CONTENT_TYPE"]; !ok || v != "" {
			t.Errorf("module sees CONTENT_TYPE=%q (present %v), want empty", v, ok)
		}
		if env["SERVER_NAME"] != "Example.test" || env["X_FULL_URL"] != "http://Example.test:1234/env/vars?a=1&b" {
			t.Errorf("module sees SERVER_NAME=%q X_FULL_URL=%q", env["SERVER_NAME"], env["X_FULL_URL"])
		}
	})

	t.Run("PARAMS over 16 KiB are split into records of at most 16 KiB and arrive intact", func(t *testing.T) {
		// Six headers of 7000 bytes: each under LimitRequestFieldSize
		// (8190), about 41 KiB together.
		var hdr []string
		for i := range 6 {
			hdr = append(hdr, fmt.Sprintf("X-Big-%d", i), strings.Repeat(string(rune('a'+i)), 7000))
		}
		r := c.get("/env/big?quirk-a", hdr...)
		if r.status != 200 {
			t.Fatalf("status %d: %q", r.status, r.body)
		}
		_, env := parseEnvOutput(t, r.body)
		for i := 0; i < len(hdr); i += 2 {
			k := "HTTP_" + strings.ReplaceAll(strings.ToUpper(hdr[i]), "-", "_")
			if env[k] != hdr[i+1] {
				t.Errorf("%s: %d bytes, want %d intact", k, len(env[k]), len(hdr[i+1]))
			}
		}
		req := rec.request(t, "/env/big?quirk-a")
		var sizes []int
		total := 0
		for _, p := range req.params {
			if p.length > 0 {
				sizes = append(sizes, p.length)
				total += p.length
			}
			if p.length > 16384 {
				t.Errorf("a PARAMS record of %d bytes, want at most 16384", p.length)
			}
		}
		if len(sizes) < 2 || total < 42000 {
			t.Fatalf("non-empty PARAMS records %v (%d bytes); want several, over 42000 bytes", sizes, total)
		}
		if last := req.params[len(req.params)-1]; last.length != 0 {
			t.Errorf("PARAMS not ended by an empty record: last is %d bytes", last.length)
		}
		t.Logf("Apache sent %d bytes of PARAMS in %d non-empty records of %v bytes", total, len(sizes), sizes)
	})

	t.Run("a chunked body over 16 KiB is streamed without CONTENT_LENGTH and the module gets its real length", func(t *testing.T) {
		body := make([]byte, 100<<10+123)
		for i := range body {
			body[i] = byte(i*13 + i/251)
		}
		for _, path := range []string{"/echo?quirk-c", "/env/chunked?quirk-c"} {
			r := rawRequest(t, fmt.Sprintf("127.0.0.1:%d", recorded.port), chunkedPost(path, body, 8000))
			if r.status != 200 {
				t.Fatalf("%s: status %d: %q", path, r.status, r.body)
			}
			if strings.HasPrefix(path, "/echo") {
				if !bytes.Equal(r.body, body) {
					t.Fatalf("%s: %d bytes back, want the %d sent byte for byte", path, len(r.body), len(body))
				}
			} else {
				_, env := parseEnvOutput(t, r.body)
				if env["CONTENT_LENGTH"] != fmt.Sprint(len(body)) || env["CONTENT_TYPE"] != "application/octet-stream" {
					t.Fatalf("%s: module sees CONTENT_LENGTH=%q CONTENT_TYPE=%q, want %d", path, env["CONTENT_LENGTH"], env["CONTENT_TYPE"], len(body))
				}
			}
			req := rec.request(t, path)
			if v, ok := req.env["CONTENT_LENGTH"]; ok {
				t.Errorf("%s: Apache sent CONTENT_LENGTH=%q for a streamed chunked body; the quirk is gone", path, v)
			}
			if te := req.env["HTTP_TRANSFER_ENCODING"]; te != "chunked" {
				t.Errorf("%s: Apache sent HTTP_TRANSFER_ENCODING=%q, want chunked", path, te)
			}
			if n := req.stdinBytes(); n != len(body) {
				t.Errorf("%s: Apache sent %d bytes of STDIN, want %d", path, n, len(body))
			}
			if path == "/echo?quirk-c" {
				var sizes []int
				for _, s := range req.stdin {
					sizes = append(sizes, s.length)
				}
				t.Logf("Apache sent no CONTENT_LENGTH, HTTP_TRANSFER_ENCODING=%q, %d bytes of STDIN in records of %v bytes",
					req.env["HTTP_TRANSFER_ENCODING"], req.stdinBytes(), sizes)
			}
		}
	})

	t.Run("a small chunked body is prefetched and sent with CONTENT_LENGTH", func(t *testing.T) {
		body := []byte(strings.Repeat("small chunked body\n", 50))
		r := rawRequest(t, fmt.Sprintf("127.0.0.1:%d", recorded.port), chunkedPost("/env/small?quirk-c2", body, 100))
		_, env := parseEnvOutput(t, r.body)
		if r.status != 200 || env["CONTENT_LENGTH"] != fmt.Sprint(len(body)) {
			t.Fatalf("status %d, module sees CONTENT_LENGTH=%q, want %d", r.status, env["CONTENT_LENGTH"], len(body))
		}
		req := rec.request(t, "/env/small?quirk-c2")
		if v := req.env["CONTENT_LENGTH"]; v != fmt.Sprint(len(body)) {
			t.Errorf("Apache sent CONTENT_LENGTH=%q for a prefetched chunked body of %d bytes", v, len(body))
		}
	})

	t.Run("Apache pads no record and keeps its FastCGI connections", func(t *testing.T) {
		for range 20 {
			if r := c.get("/hello?keepalive"); r.status != 200 {
				t.Fatalf("status %d", r.status)
			}
		}
		recs := rec.records()
		types := map[byte]int{}
		for _, r := range recs {
			types[r.typ]++
			if r.padding != 0 {
				t.Errorf("a record of type %d with %d bytes of padding", r.typ, r.padding)
			}
		}
		reqs := rec.requests()
		perConn := map[int]int{}
		for _, q := range reqs {
			if q.flags&1 == 0 {
				t.Errorf("BEGIN_REQUEST without FCGI_KEEP_CONN (flags %d) for %s", q.flags, q.env["REQUEST_URI"])
			}
			perConn[q.conn]++
		}
		most := 0
		for _, n := range perConn {
			most = max(most, n)
		}
		if most < 2 {
			t.Errorf("%d requests on %d FastCGI connections, none reused", len(reqs), len(perConn))
		}
		t.Logf("%d records (by type %v), none padded; %d requests on %d FastCGI connections, up to %d on one",
			len(recs), types, len(reqs), len(perConn), most)
	})
}

// chunkedPost is a raw HTTP/1.1 POST of body in chunks of at most size bytes.
func chunkedPost(path string, body []byte, size int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n"+
		"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n", path)
	for i := 0; i < len(body); i += size {
		chunk := body[i:min(i+size, len(body))]
		fmt.Fprintf(&b, "%x\r\n%s\r\n", len(chunk), chunk)
	}
	b.WriteString("0\r\n\r\n")
	return b.String()
}

// apacheSite is one <VirtualHost> of the shipped config.
type apacheSite struct {
	base string // http://127.0.0.1:port
	port int
}

// apacheProc is a real Apache httpd using conf/apache/wagi-fcgi.conf.
type apacheProc struct {
	cmd   *exec.Cmd
	dir   string
	sites []apacheSite
	done  chan struct{}
}

// apacheModules are the modules the tests' Apache loads, from Debian's
// /usr/lib/apache2/modules (log_config and unixd are built in).
var apacheModules = []string{"mpm_event", "authz_core", "authz_host", "proxy", "proxy_fcgi", "alias"}

// startApache runs Apache httpd in the foreground with a minimal
// self-contained main config (not Debian's apache2.conf, which wants
// APACHE_RUN_DIR and friends) that includes the shipped site once per
// socket, each on a free loopback port: sites[i] passes to socks[i].
func startApache(t testing.TB, dir string, socks ...string) *apacheProc {
	t.Helper()
	return startApacheWith(t, dir, "", socks...)
}

// startApacheWith is startApache with extra directives at the end of each
// shipped virtual host (after its <Location> sections, so they win).
func startApacheWith(t testing.TB, dir, extra string, socks ...string) *apacheProc {
	t.Helper()
	bin, err := exec.LookPath("apache2")
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/apache2"); err2 != nil {
			t.Fatalf("apache2 is not installed (run tests/setup.sh): %v", err)
		}
		bin = "/usr/sbin/apache2"
	}
	root := testenv.RepoRoot(t)
	site, err := os.ReadFile(filepath.Join(root, "conf/apache/wagi-fcgi.conf"))
	if err != nil {
		t.Fatal(err)
	}
	adir := filepath.Join(dir, "apache")
	for _, d := range []string{"run", "logs"} {
		if err := os.MkdirAll(filepath.Join(adir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a := &apacheProc{dir: adir, done: make(chan struct{})}
	var main strings.Builder
	fmt.Fprintf(&main, `# generated by the wagi-fcgi tests
ServerRoot %[1]s
DefaultRuntimeDir %[1]s/run
PidFile %[1]s/run/httpd.pid
ErrorLog %[1]s/logs/error.log
LogLevel info
ServerName localhost
`, adir)
	for _, m := range apacheModules {
		fmt.Fprintf(&main, "LoadModule %s_module /usr/lib/apache2/modules/mod_%s.so\n", m, m)
	}
	if os.Geteuid() == 0 {
		// Started as root, Apache switches its workers to this user (it
		// refuses to serve as root), like Debian's packaged server.
		main.WriteString("User www-data\nGroup www-data\n")
	}
	used := map[int]bool{}
	for i, sock := range socks {
		// Two ports closed and asked for again can be the same one; Apache
		// refuses a second Listen on it.
		port := freePort(t)
		for used[port] {
			port = freePort(t)
		}
		used[port] = true
		s := string(site)
		for _, sub := range [][2]string{
			{"<VirtualHost *:80>", fmt.Sprintf("<VirtualHost 127.0.0.1:%d>", port)},
			{"</VirtualHost>", extra + "</VirtualHost>"},
			{"unix:/run/wagi.sock|", "unix:" + sock + "|"},
		} {
			if n := strings.Count(s, sub[0]); n != 1 {
				t.Fatalf("conf/apache/wagi-fcgi.conf has %q %d times, the tests expect it once", sub[0], n)
			}
			s = strings.Replace(s, sub[0], sub[1], 1)
		}
		name := filepath.Join(adir, fmt.Sprintf("site%d.conf", i))
		if err := os.WriteFile(name, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&main, "Listen 127.0.0.1:%d\nInclude %s\n", port, name)
		a.sites = append(a.sites, apacheSite{base: fmt.Sprintf("http://127.0.0.1:%d", port), port: port})
	}
	confPath := filepath.Join(adir, "httpd.conf")
	if err := os.WriteFile(confPath, []byte(main.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	var out logBuffer
	a.cmd = exec.Command(bin, "-d", adir, "-f", confPath, "-DFOREGROUND")
	a.cmd.Stdout, a.cmd.Stderr = &out, &out
	// Its own process group, so that nothing of it can outlive the test.
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		a.stop(t)
		if t.Failed() {
			t.Logf("Apache's error log:\n%s", a.errorLog())
		}
	})
	for _, s := range a.sites {
		waitListening(t, "tcp", fmt.Sprintf("127.0.0.1:%d", s.port), a.done, 10*time.Second, "apache2", func() string {
			return fmt.Sprintf("%v\n%s\nerror log:\n%s", a.cmd.ProcessState, out.String(), a.errorLog())
		})
	}
	return a
}

// stop ends Apache with SIGTERM (it stops its children and exits), or
// kills its process group after 10 s.
func (a *apacheProc) stop(t testing.TB) {
	pgid := a.cmd.Process.Pid
	select {
	case <-a.done:
	default:
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(10 * time.Second):
			t.Errorf("apache2 did not stop within 10s of SIGTERM")
		}
	}
	// Children left behind, if any (normally none: ESRCH).
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-a.done
}

func (a *apacheProc) errorLog() string {
	b, _ := os.ReadFile(filepath.Join(a.dir, "logs/error.log"))
	return string(b)
}

// fcgiRecord is one FastCGI record as the web server sent it.
type fcgiRecord struct {
	conn    int // the connection, in accept order
	typ     byte
	id      uint16
	length  int // content length
	padding int
	content []byte // kept for BEGIN_REQUEST and PARAMS only
}

// fcgiRecorder is a unix socket between a web server and wagi-fcgi: it
// passes bytes on unchanged both ways and records the header of every
// record the web server sends.
type fcgiRecorder struct {
	path     string
	upstream string
	ln       net.Listener
	wg       sync.WaitGroup

	mu     sync.Mutex
	recs   []fcgiRecord
	nconn  int
	open   map[net.Conn]bool
	closed bool
}

func startRecorder(t testing.TB, path, upstream string) *fcgiRecorder {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	// Apache's workers (www-data) connect here.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	r := &fcgiRecorder{path: path, upstream: upstream, ln: ln, open: map[net.Conn]bool{}}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		r.closed = true
		for c := range r.open {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *fcgiRecorder) accept() {
	defer r.wg.Done()
	for {
		down, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		n := r.nconn
		r.nconn++
		r.mu.Unlock()
		r.wg.Add(1)
		go r.relay(n, down)
	}
}

// track remembers c for the cleanup, or closes it if that already ran.
func (r *fcgiRecorder) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		c.Close()
		return false
	}
	r.open[c] = true
	return true
}

func (r *fcgiRecorder) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.open, c)
	r.mu.Unlock()
	c.Close()
}

// relay passes one connection on, record by record towards wagi-fcgi and
// as a byte stream back. An end of either side ends the other: a web
// server closing its end (a client abort) is seen by wagi-fcgi at once.
func (r *fcgiRecorder) relay(n int, down net.Conn) {
	defer r.wg.Done()
	if !r.track(down) {
		return
	}
	defer r.untrack(down)
	up, err := net.Dial("unix", r.upstream)
	if err != nil || !r.track(up) {
		return
	}
	defer r.untrack(up)
	back := make(chan struct{})
	go func() {
		_, _ = io.Copy(down, up)
		down.Close()
		close(back)
	}()
	br := bufio.NewReader(down)
	for {
		h := make([]byte, 8)
		if _, err := io.ReadFull(br, h); err != nil {
			break
		}
		rec := fcgiRecord{conn: n, typ: h[1], id: binary.BigEndian.Uint16(h[2:]),
			length: int(binary.BigEndian.Uint16(h[4:])), padding: int(h[6])}
		body := make([]byte, rec.length+rec.padding)
		got, err := io.ReadFull(br, body)
		if err == nil && (rec.typ == 1 || rec.typ == 4) {
			rec.content = body[:rec.length]
		}
		if err == nil {
			r.mu.Lock()
			r.recs = append(r.recs, rec)
			r.mu.Unlock()
		}
		if _, werr := up.Write(append(h, body[:got]...)); werr != nil || err != nil {
			break
		}
	}
	if uc, ok := up.(*net.UnixConn); ok {
		_ = uc.CloseWrite()
	}
	<-back
}

func (r *fcgiRecorder) records() []fcgiRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]fcgiRecord(nil), r.recs...)
}

// recRequest is one recorded request: BEGIN_REQUEST, its PARAMS records
// (the empty one included) and its STDIN records (likewise).
type recRequest struct {
	conn   int
	flags  byte
	params []fcgiRecord
	stdin  []fcgiRecord
	env    map[string]string
	err    error // decoding the params
}

func (q *recRequest) stdinBytes() int {
	n := 0
	for _, s := range q.stdin {
		n += s.length
	}
	return n
}

// requests groups the records into requests, per connection.
func (r *fcgiRecorder) requests() []*recRequest {
	var out []*recRequest
	cur := map[int]*recRequest{}
	for _, rec := range r.records() {
		switch rec.typ {
		case 1: // BEGIN_REQUEST
			q := &recRequest{conn: rec.conn}
			if len(rec.content) >= 3 {
				q.flags = rec.content[2]
			}
			cur[rec.conn] = q
			out = append(out, q)
		case 4: // PARAMS
			if q := cur[rec.conn]; q != nil {
				q.params = append(q.params, rec)
			}
		case 5: // STDIN
			if q := cur[rec.conn]; q != nil {
				q.stdin = append(q.stdin, rec)
			}
		}
	}
	for _, q := range out {
		var all []byte
		for _, p := range q.params {
			all = append(all, p.content...)
		}
		q.env, q.err = decodeParams(all)
	}
	return out
}

// request returns the recorded request with this REQUEST_URI, failing the
// test when there is none or its params do not decode.
func (r *fcgiRecorder) request(t testing.TB, uri string) *recRequest {
	t.Helper()
	for _, q := range r.requests() {
		if q.env["REQUEST_URI"] == uri {
			if q.err != nil {
				t.Fatalf("params of %s: %v", uri, q.err)
			}
			return q
		}
	}
	t.Fatalf("no recorded request for %s", uri)
	return nil
}

// decodeParams decodes FastCGI name-value pairs.
func decodeParams(b []byte) (map[string]string, error) {
	env := map[string]string{}
	length := func() (int, error) {
		if len(b) == 0 {
			return 0, errors.New("truncated length")
		}
		if b[0]&0x80 == 0 {
			n := int(b[0])
			b = b[1:]
			return n, nil
		}
		if len(b) < 4 {
			return 0, errors.New("truncated long length")
		}
		n := int(binary.BigEndian.Uint32(b) & 0x7fffffff)
		b = b[4:]
		return n, nil
	}
	for len(b) > 0 {
		nl, err := length()
		if err != nil {
			return env, err
		}
		vl, err := length()
		if err != nil {
			return env, err
		}
		if len(b) < nl+vl {
			return env, fmt.Errorf("pair of %d+%d bytes with %d left", nl, vl, len(b))
		}
		env[string(b[:nl])] = string(b[nl : nl+vl])
		b = b[nl+vl:]
	}
	return env, nil
}

// clientAbortRunsToEnd is the client-abort case for a web server that does
// not watch its client while the module runs. Apache's mod_proxy_fcgi polls
// only the backend until the answer comes and finds the client gone when it
// writes the response, so it never closes the FastCGI connection early and
// wagi-fcgi cannot know of the abort: the module runs to its end (its
// limits still bound it), and nothing else is disturbed.
func clientAbortRunsToEnd(t *testing.T, w *wagiProc, c *client, fe frontEnd) {
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", fe.port))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /sleep?2000 HTTP/1.1\r\nHost: x\r\n\r\n")
	// Let the server pass the request on and a child start sleeping.
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	conn.Close()
	line := w.log.waitFor(t, 5*time.Second, "msg=request", "path=/sleep")
	if !strings.Contains(line, "status=200") || time.Since(start) < time.Second {
		t.Fatalf("want the module to run its 2 s to the end, %s after the client left: %s", time.Since(start), line)
	}
	if strings.Contains(w.log.String(), `reason="client abort"`) {
		t.Fatalf("%s closed its FastCGI connection on the client abort after all; use the nginx assertions", fe.name)
	}
	w.waitChildren(t, 2, 5*time.Second)
	if r := c.get("/hello"); r.status != 200 {
		t.Fatalf("after the abort: %d", r.status)
	}
}
