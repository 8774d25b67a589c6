// Package tests holds wagi-fcgi's end-to-end tests: the real binary behind a
// real nginx, talking to real WASI modules built from tests/testdata.
package tests

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// testVersion is stamped into the binary, so SERVER_SOFTWARE is known.
const testVersion = "v0.0.0-e2e"

// buildBinary builds cmd/wagi-fcgi into dir.
func buildBinary(t testing.TB, dir string) string {
	t.Helper()
	root := testenv.RepoRoot(t)
	bin := filepath.Join(dir, "wagi-fcgi")
	cmd := exec.Command("go", "build", "-o", bin, "-ldflags", "-X main.version="+testVersion, "./cmd/wagi-fcgi")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	makeReachable(t, dir)
	return bin
}

// childWritable gives dir to the children's default user (wagi-fcgi) when
// the suite runs as root, so a read-write volume there can be written: the
// children's effective uid is that user's, never root's.
func childWritable(t testing.TB, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		return
	}
	u, err := user.Lookup("wagi-fcgi")
	if err != nil {
		t.Fatalf("the children's default user: %v (tests/setup.sh creates it)", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
}

// makeReachable lets children reach dir when the suite runs as root: they
// run as the wagi-fcgi user then, never as root, and must traverse dir and
// its parents to exec the binary and read the state directory (t.TempDir
// makes them 0700).
func makeReachable(t testing.TB, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		return
	}
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// logBuffer collects a process's output and lets tests wait for a line.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// waitFor polls the log until it contains every one of subs.
func (l *logBuffer) waitFor(t testing.TB, d time.Duration, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := l.String()
		for _, line := range strings.Split(s, "\n") {
			all := true
			for _, sub := range subs {
				if !strings.Contains(line, sub) {
					all = false
					break
				}
			}
			if all {
				return line
			}
		}
		if time.Now().After(deadline) {
			lines := strings.Split(s, "\n")
			t.Fatalf("no log line with %q within %s; last lines of the log:\n%s", subs, d,
				strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wagiProc is a running `wagi-fcgi serve`.
type wagiProc struct {
	cmd  *exec.Cmd
	sock string
	log  *logBuffer
	done chan struct{}
}

// startWagi writes config (with {{dir}} and {{mods}} expanded) and runs
// `wagi-fcgi serve` on it until the test ends. It returns once the FastCGI
// socket accepts connections.
func startWagi(t testing.TB, bin, dir, config string, extraArgs ...string) *wagiProc {
	t.Helper()
	config = expand(t, config, dir)
	makeReachable(t, dir)
	cfgPath := filepath.Join(dir, "wagi.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	w := &wagiProc{sock: filepath.Join(dir, "wagi.sock"), log: &logBuffer{}, done: make(chan struct{})}
	args := append([]string{"serve", "-c", cfgPath}, extraArgs...)
	w.cmd = exec.Command(bin, args...)
	// A canary: nothing of the server's environment may reach a module.
	w.cmd.Env = append(os.Environ(), "WAGI_TEST_CANARY=leaked")
	w.cmd.Stdout = w.log
	w.cmd.Stderr = w.log
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = w.cmd.Wait(); close(w.done) }()
	t.Cleanup(func() { w.stop(t) })
	waitListening(t, "unix", w.sock, w.done, 20*time.Second, "wagi-fcgi", func() string {
		return fmt.Sprintf("%v; log:\n%s", w.cmd.ProcessState, w.log)
	})
	return w
}

func (w *wagiProc) stop(t testing.TB) {
	select {
	case <-w.done:
		return
	default:
	}
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		_ = w.cmd.Process.Kill()
		<-w.done
		t.Errorf("wagi-fcgi did not stop within 10s of SIGTERM")
	}
}

// children returns the pids of the manager's child processes.
func (w *wagiProc) children(t testing.TB) []int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", w.cmd.Process.Pid, w.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	// Children started by other threads of the manager are listed under
	// those threads; gather them all.
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", w.cmd.Process.Pid))
	seen := map[int]bool{}
	for _, task := range tasks {
		b2, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", w.cmd.Process.Pid, task.Name()))
		if err != nil {
			continue
		}
		b = append(b, ' ')
		b = append(b, b2...)
	}
	for _, f := range strings.Fields(string(b)) {
		n, err := strconv.Atoi(f)
		if err == nil && !seen[n] {
			seen[n] = true
			pids = append(pids, n)
		}
	}
	return pids
}

// waitChildren waits until the manager has n children.
func (w *wagiProc) waitChildren(t testing.TB, n int, d time.Duration) []int {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		pids := w.children(t)
		if len(pids) == n {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("manager has %d children, want %d", len(pids), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func expand(t testing.TB, s, dir string) string {
	mods := testenv.Modules(t)
	return strings.NewReplacer("{{dir}}", dir, "{{mods}}", mods).Replace(s)
}

// nginxProc is a real nginx using the shipped conf/nginx files.
type nginxProc struct {
	cmd  *exec.Cmd
	base string // http://127.0.0.1:port
	port int
	dir  string
	done chan struct{}
}

// startNginx runs nginx with conf/nginx/wagi-fcgi.conf, pointed at sock and
// a free loopback port.
func startNginx(t testing.TB, dir, sock string) *nginxProc {
	t.Helper()
	return startNginxWith(t, dir, sock, "")
}

// startNginxWith is startNginx with extra directives at the top of the
// shipped server block.
func startNginxWith(t testing.TB, dir, sock, extra string) *nginxProc {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		t.Fatalf("nginx is not installed (run tests/setup.sh): %v", err)
	}
	root := testenv.RepoRoot(t)
	ndir := filepath.Join(dir, "nginx")
	for _, d := range []string{"snippets", "conf.d", "logs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(ndir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, filepath.Join(root, "conf/nginx/wagi_fcgi_params"), filepath.Join(ndir, "wagi_fcgi_params"))
	copyFile(t, filepath.Join(root, "conf/nginx/wagi-fcgi-location.conf"), filepath.Join(ndir, "snippets/wagi-fcgi-location.conf"))
	site, err := os.ReadFile(filepath.Join(root, "conf/nginx/wagi-fcgi.conf"))
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	s := string(site)
	s = strings.Replace(s, "unix:/run/wagi.sock", "unix:"+sock, 1)
	s = strings.Replace(s, "listen 80;", fmt.Sprintf("listen 127.0.0.1:%d;", port), 1)
	s = strings.Replace(s, "listen [::]:80;", extra, 1)
	if err := os.WriteFile(filepath.Join(ndir, "conf.d/wagi.conf"), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	main := fmt.Sprintf(`# generated by the wagi-fcgi tests
user root;
worker_processes 1;
error_log %[1]s/logs/error.log info;
pid %[1]s/nginx.pid;
events { worker_connections 1024; }
http {
    access_log %[1]s/logs/access.log;
    client_body_temp_path %[1]s/tmp/body;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    proxy_temp_path %[1]s/tmp/proxy;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
    include conf.d/*.conf;
}
`, ndir)
	confPath := filepath.Join(ndir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	n := &nginxProc{base: fmt.Sprintf("http://127.0.0.1:%d", port), port: port, dir: ndir, done: make(chan struct{})}
	n.cmd = exec.Command(bin, "-p", ndir, "-c", confPath, "-g", "daemon off;")
	var out logBuffer
	n.cmd.Stdout, n.cmd.Stderr = &out, &out
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = n.cmd.Wait(); close(n.done) }()
	t.Cleanup(func() {
		_ = n.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-n.done:
		case <-time.After(5 * time.Second):
			_ = n.cmd.Process.Kill()
			<-n.done
		}
	})
	waitListening(t, "tcp", fmt.Sprintf("127.0.0.1:%d", port), n.done, 10*time.Second, "nginx", func() string {
		el, _ := os.ReadFile(filepath.Join(ndir, "logs/error.log"))
		return fmt.Sprintf("%v\n%s\n%s", n.cmd.ProcessState, out.String(), el)
	})
	return n
}

// waitListening waits until something accepts connections at addr,
// failing the test with what why() says when the process first ends (done
// closes; nil: never) or when timeout passes. The timeout is wall time on
// purpose: it only bounds how long a broken start takes to report.
func waitListening(t testing.TB, network, addr string, done <-chan struct{}, timeout time.Duration, what string, why func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if c, err := net.Dial(network, addr); err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			t.Fatalf("%s exited before it listened on %s: %s", what, addr, why())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen on %s within %s: %s", what, addr, timeout, why())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (n *nginxProc) errorLog() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "logs/error.log"))
	return string(b)
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// response is an HTTP response with its body read.
type response struct {
	status int
	header http.Header
	body   []byte
}

// client sends requests to nginx.
type client struct {
	t    testing.TB
	base string
	hc   *http.Client
}

func newClient(t testing.TB, base string) *client {
	return &client{t: t, base: base, hc: &http.Client{
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (c *client) do(method, path string, body []byte, header ...string) response {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (c *client) get(path string, header ...string) response {
	c.t.Helper()
	return c.do("GET", path, nil, header...)
}

// rawRequest sends a hand-written HTTP request (for paths and headers
// net/http would normalise) and reads the response.
func rawRequest(t testing.TB, addr, req string) response {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}
