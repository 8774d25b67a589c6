package tests

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests are the "walls" between clients and the manager: whatever
// clients send, what the manager holds is bounded by config (docs/design.md,
// trust boundaries, rule 1).

const connsConfig = `
state_dir = "{{dir}}/state"
listen = "unix:{{dir}}/wagi.sock"

[pool]
children = 1
queue_timeout = "2s"
%s

[limits]
max_body = "16MiB"

[[module]]
route = "/sleep"
module = "{{mods}}/sleep.wasm"

[[module]]
route = "/echo"
module = "{{mods}}/echo.wasm"

[[module]]
route = "/env"
module = "{{mods}}/env.wasm"
`

// procKB reads a "Name:   123 kB" line of /proc/pid/status.
func procKB(t testing.TB, pid int, name string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", name, pid)
	return 0
}

// openFDs counts a process's open descriptors.
func openFDs(t testing.TB, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// encodeParams encodes FastCGI name-value pairs.
func encodeParams(kv ...string) []byte {
	var b []byte
	size := func(n int) {
		if n < 128 {
			b = append(b, byte(n))
		} else {
			b = binary.BigEndian.AppendUint32(b, uint32(n)|1<<31)
		}
	}
	for i := 0; i+1 < len(kv); i += 2 {
		size(len(kv[i]))
		size(len(kv[i+1]))
		b = append(b, kv[i]...)
		b = append(b, kv[i+1]...)
	}
	return b
}

// writeStream writes content as records of typ, then the empty record.
func writeStream(c net.Conn, typ byte, content []byte) error {
	for len(content) > 0 {
		n := min(len(content), 0xfff8)
		if err := writeRecordErr(c, typ, 1, content[:n]); err != nil {
			return err
		}
		content = content[n:]
	}
	return writeRecordErr(c, typ, 1, nil)
}

func writeRecordErr(c net.Conn, typ byte, id uint16, content []byte) error {
	pad := (8 - len(content)%8) % 8
	h := []byte{1, typ, byte(id >> 8), byte(id), byte(len(content) >> 8), byte(len(content)), byte(pad), 0}
	_, err := c.Write(append(append(h, content...), make([]byte, pad)...))
	return err
}

// fcgiParams are the params a web server sends for a request to path.
func fcgiParams(method, path string, body []byte, extra ...string) []byte {
	uri := path
	path, query, _ := strings.Cut(uri, "?")
	kv := []string{"REQUEST_METHOD", method, "REQUEST_URI", uri, "SCRIPT_NAME", path,
		"DOCUMENT_URI", path, "QUERY_STRING", query, "SERVER_PROTOCOL", "HTTP/1.1",
		"SERVER_NAME", "x", "SERVER_PORT", "80", "REMOTE_ADDR", "127.0.0.1", "HTTP_HOST", "x"}
	if body != nil {
		kv = append(kv, "CONTENT_LENGTH", strconv.Itoa(len(body)))
	}
	return encodeParams(append(kv, extra...)...)
}

// fcgiDo sends one request on c (kept open) and returns its stdout.
func fcgiDo(c net.Conn, params, body []byte) ([]byte, error) {
	if err := writeRecordErr(c, 1, 1, []byte{0, 1, 1, 0, 0, 0, 0, 0}); err != nil {
		return nil, err
	}
	if err := writeStream(c, 4, params); err != nil {
		return nil, err
	}
	if err := writeStream(c, 5, body); err != nil {
		return nil, err
	}
	return fcgiResponse(c)
}

// fcgiResponse reads records up to END_REQUEST and returns the stdout.
func fcgiResponse(c net.Conn) ([]byte, error) {
	var out []byte
	h := make([]byte, 8)
	for {
		if _, err := io.ReadFull(c, h); err != nil {
			return out, err
		}
		n, pad := int(binary.BigEndian.Uint16(h[4:6])), int(h[6])
		content := make([]byte, n+pad)
		if _, err := io.ReadFull(c, content); err != nil {
			return out, err
		}
		switch h[1] {
		case 6:
			out = append(out, content[:n]...)
		case 3:
			return out, nil
		}
	}
}

// fcgiStatus is the status of a raw CGI response ("Status: 503 ..."), 200
// without a Status line.
func fcgiStatus(out []byte) int {
	head, _, _ := bytes.Cut(out, []byte("\r\n\r\n"))
	for _, line := range strings.Split(string(head), "\r\n") {
		if v, ok := strings.CutPrefix(line, "Status: "); ok {
			n, _ := strconv.Atoi(v[:min(3, len(v))])
			return n
		}
	}
	return 200
}

func TestAClientCannotExhaustTheManager(t *testing.T) {
	bin := buildBinary(t, t.TempDir())

	t.Run("bodies reach the module whole, held in memory or spooled", func(t *testing.T) {
		dir := t.TempDir()
		w := startWagi(t, bin, dir, fmt.Sprintf(connsConfig, ""))
		n := startNginx(t, dir, w.sock)
		c := newClient(t, n.base)
		for _, size := range []int{0, 1, 64<<10 - 1, 64 << 10, 64<<10 + 1, 3 << 20, 16 << 20} {
			body := make([]byte, size)
			rand.Read(body)
			r := c.do("POST", "/echo", body)
			if r.status != 200 || !bytes.Equal(r.body, body) {
				t.Fatalf("%d-byte body through nginx: status %d, %d bytes back, equal=%v", size, r.status, len(r.body), bytes.Equal(r.body, body))
			}
		}
		// Without CONTENT_LENGTH (a streamed body, as Apache sends a
		// chunked one): the module still sees the right length.
		conn, err := net.Dial("unix", w.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
		body := bytes.Repeat([]byte("0123456789abcdef"), 200<<10/16)
		out, err := fcgiDo(conn, fcgiParams("POST", "/env", nil), body)
		if err != nil || !bytes.Contains(out, []byte("CONTENT_LENGTH="+strconv.Itoa(len(body))+"\n")) {
			t.Fatalf("streamed body without CONTENT_LENGTH: %v\n%.300q", err, out)
		}
		out, err = fcgiDo(conn, fcgiParams("POST", "/echo", nil), body)
		if err != nil || !bytes.HasSuffix(out, body) {
			t.Fatalf("echo of a streamed body: %v, %d bytes", err, len(out))
		}
		ents, _ := os.ReadDir(filepath.Join(dir, "state", "spool"))
		if len(ents) != 0 {
			t.Fatalf("spool files left behind: %v", ents)
		}
	})

	t.Run("concurrent uploads to a slow route do not grow the manager", func(t *testing.T) {
		dir := t.TempDir()
		w := startWagi(t, bin, dir, fmt.Sprintf(connsConfig, ""))
		n := startNginx(t, dir, w.sock)
		pid := w.cmd.Process.Pid
		before := procKB(t, pid, "VmHWM")
		body := make([]byte, 16<<20-1024)
		rand.Read(body)
		const uploads = 40
		statuses := make([]int, uploads)
		var wg sync.WaitGroup
		hc := &http.Client{Timeout: 120 * time.Second}
		for i := range uploads {
			wg.Go(func() {
				resp, err := hc.Post(n.base+"/sleep?1000", "application/octet-stream", bytes.NewReader(body))
				if err != nil {
					statuses[i] = -1
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				statuses[i] = resp.StatusCode
			})
		}
		wg.Wait()
		hwm := procKB(t, pid, "VmHWM")
		t.Logf("manager VmHWM %d kB before, %d kB after %d concurrent 16 MiB uploads; statuses %v", before, hwm, uploads, statuses)
		ok := 0
		for _, s := range statuses {
			switch s {
			case 200:
				ok++
			case 503:
			default:
				t.Errorf("an upload got %d, want 200 or 503", s)
			}
		}
		if ok == 0 {
			t.Errorf("no upload was served")
		}
		// Bodies in memory are capped at body_memory (64 MiB) in all;
		// the rest is spooled. Before, this took 1 GB.
		if hwm > 200<<10 {
			t.Errorf("manager peak RSS %d kB, want under 200 MiB", hwm)
		}
		if r := newClient(t, n.base).get("/_wagi/status"); r.status != 200 {
			t.Errorf("status page after the uploads: %d", r.status)
		}
	})

	t.Run("bodies past spool_size get 503 with Retry-After", func(t *testing.T) {
		dir := t.TempDir()
		w := startWagi(t, bin, dir, fmt.Sprintf(connsConfig, `spool_size = "1MiB"
body_memory = "256KiB"`))
		n := startNginx(t, dir, w.sock)
		c := newClient(t, n.base)
		r := c.do("POST", "/echo", make([]byte, 2<<20))
		if r.status != 503 || r.header.Get("Retry-After") == "" {
			t.Fatalf("2 MiB body over a 1 MiB spool: %d, Retry-After %q", r.status, r.header.Get("Retry-After"))
		}
		body := bytes.Repeat([]byte("x"), 512<<10)
		if r := c.do("POST", "/echo", body); r.status != 200 || !bytes.Equal(r.body, body) {
			t.Fatalf("a body that fits: %d, %d bytes", r.status, len(r.body))
		}
	})

	t.Run("stalled params do not grow the manager and time out", func(t *testing.T) {
		dir := t.TempDir()
		w := startWagi(t, bin, dir, fmt.Sprintf(connsConfig, `request_read_timeout = "3s"`))
		n := startNginx(t, dir, w.sock)
		pid := w.cmd.Process.Pid
		// 500 KB of params in records, and then nothing more.
		params := encodeParams("HTTP_X_PAD", strings.Repeat("p", 500_000))
		const stalled = 2000
		conns := make([]net.Conn, 0, stalled)
		var mu sync.Mutex
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for range stalled {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				c, err := dialRetry(w.sock)
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				_ = c.SetWriteDeadline(time.Now().Add(20 * time.Second))
				if writeRecordErr(c, 1, 1, []byte{0, 1, 1, 0, 0, 0, 0, 0}) != nil {
					return
				}
				for p := params; len(p) > 0; {
					k := min(len(p), 0xfff8)
					if writeRecordErr(c, 4, 1, p[:k]) != nil {
						return
					}
					p = p[k:]
				}
			})
		}
		wg.Wait()
		rss := procKB(t, pid, "VmRSS")
		hwm := procKB(t, pid, "VmHWM")
		fds := openFDs(t, pid)
		t.Logf("%d connections sent 500 KB of params and stalled: manager VmRSS %d kB, VmHWM %d kB, %d descriptors", len(conns), rss, hwm, fds)
		if hwm > 200<<10 {
			t.Errorf("manager peak RSS %d kB, want under 200 MiB (params_memory is 32 MiB)", hwm)
		}
		if fds > 1024+100 {
			t.Errorf("manager holds %d descriptors; max_connections is 1024", fds)
		}
		// Meanwhile requests are served.
		c := newClient(t, n.base)
		if r := c.get("/sleep?0"); r.status != 200 {
			t.Errorf("a request during the stall: %d", r.status)
		}
		if r := c.get("/_wagi/status"); r.status != 200 {
			t.Errorf("status page during the stall: %d", r.status)
		}
		// request_read_timeout (3s) closes the stalled ones.
		deadline := time.Now().Add(60 * time.Second)
		for len(fcgiConns(t, w.sock)) > 20 {
			if time.Now().After(deadline) {
				t.Fatalf("%d FastCGI connections still open 60s after the stall; request_read_timeout is 3s", len(fcgiConns(t, w.sock)))
			}
			time.Sleep(200 * time.Millisecond)
		}
		for _, c := range conns {
			c.Close()
		}
		w.log.waitFor(t, 5*time.Second, "request input did not arrive within RequestReadTimeout")
	})

	t.Run("20000 idle connections: established requests and the status page go on", func(t *testing.T) {
		dir := t.TempDir()
		w := startWagi(t, bin, dir, fmt.Sprintf(connsConfig, ""))
		pid := w.cmd.Process.Pid
		// The manager inherited this process's descriptor limit, and this
		// process cannot raise its own past it; so the manager's is
		// lowered (as a smaller ulimit would have it) for the client to
		// be able to pass it.
		lim := unix.Rlimit{Cur: 8192, Max: 8192}
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
			t.Fatalf("lower the manager's RLIMIT_NOFILE: %v", err)
		}
		managerLimit := nofile(t, pid)
		idle := min(nofile(t, os.Getpid())-64, 20000)

		// A request in progress on an established connection.
		busy, err := net.Dial("unix", w.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		_ = busy.SetDeadline(time.Now().Add(120 * time.Second))
		busyDone := make(chan error, 1)
		go func() {
			out, err := fcgiDo(busy, fcgiParams("GET", "/sleep?3000", nil), nil)
			if err == nil && !bytes.Contains(out, []byte("slept")) {
				err = fmt.Errorf("got %.200q", out)
			}
			busyDone <- err
		}()
		time.Sleep(300 * time.Millisecond)

		conns := make([]net.Conn, 0, idle)
		for range idle {
			c, err := dialRetry(w.sock)
			if err != nil {
				t.Logf("dial %d: %v", len(conns), err)
				break
			}
			conns = append(conns, c)
		}
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		time.Sleep(500 * time.Millisecond)
		rss := procKB(t, pid, "VmRSS")
		fds := openFDs(t, pid)

		// The status page, on a new connection, as nginx would open one.
		start := time.Now()
		sc, err := dialRetry(w.sock)
		if err != nil {
			t.Fatalf("status page: dial: %v", err)
		}
		defer sc.Close()
		_ = sc.SetDeadline(time.Now().Add(30 * time.Second))
		out, err := fcgiDo(sc, fcgiParams("GET", "/_wagi/status", nil), nil)
		took := time.Since(start)
		t.Logf("%d idle connections opened (manager RLIMIT_NOFILE %d): manager VmRSS %d kB, %d descriptors; status page answered in %s", len(conns), managerLimit, rss, fds, took)
		if err != nil || fcgiStatus(out) != 200 {
			t.Fatalf("status page during the flood: %v %.200q", err, out)
		}
		if err := <-busyDone; err != nil {
			t.Fatalf("the established request: %v", err)
		}
		if fds > 1024+100 {
			t.Errorf("manager holds %d descriptors; max_connections is 1024", fds)
		}
		if rss > 200<<10 {
			t.Errorf("manager RSS %d kB, want under 200 MiB", rss)
		}
		if strings.Contains(w.log.String(), "too many open files") {
			t.Errorf("the manager ran out of descriptors:\n%s", w.log.String()[max(0, len(w.log.String())-2000):])
		}
	})

	t.Run("a request with 1 MB of repeated headers is answered", func(t *testing.T) {
		dir := t.TempDir()
		w := startWagi(t, bin, dir, fmt.Sprintf(connsConfig, ""))
		var kv []string
		for range 70_000 { // 13 bytes each, under the 1 MiB params limit
			kv = append(kv, "HTTP_X_DUP", "a")
		}
		conn, err := net.Dial("unix", w.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
		params := append(fcgiParams("GET", "/sleep?0", nil), encodeParams(kv...)...)
		cpu0, _ := procStat(t, w.cmd.Process.Pid)
		out, err := fcgiDo(conn, params, nil)
		if err != nil || fcgiStatus(out) != 200 {
			t.Fatalf("%v %.200q", err, out)
		}
		cpu1, _ := procStat(t, w.cmd.Process.Pid)
		cpu := cpu1 - cpu0
		t.Logf("manager CPU for one request with %d bytes of repeated headers: %s", len(params), cpu)
		// Joining them as they came took seconds (quadratic); linear
		// joining takes milliseconds. CPU time, not wall time: the bound
		// holds on a loaded machine.
		if cpu > 500*time.Millisecond {
			t.Errorf("the manager spent %s of CPU on one request's headers", cpu)
		}
	})
}

// dialRetry dials the unix socket, retrying while its backlog is full.
func dialRetry(sock string) (net.Conn, error) {
	var err error
	for range 200 {
		var c net.Conn
		if c, err = net.Dial("unix", sock); err == nil {
			return c, nil
		}
		if !errors.Is(err, syscall.EAGAIN) {
			return nil, err
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil, err
}

// nofile is a process's soft descriptor limit.
func nofile(t testing.TB, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Max open files") {
			f := strings.Fields(line)
			n, _ := strconv.Atoi(f[3])
			return n
		}
	}
	return 0
}
