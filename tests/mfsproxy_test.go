package tests

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// TestChildrenReachMFSOnlyThroughTheManagersProxy: a child that guest code
// took over must not reach the kubo RPC API (shutdown, config, key/export,
// MFS outside its volumes). Children get no kubo address and hold no
// connection to it; the manager's MFS proxy refuses calls without a grant.
func TestChildrenReachMFSOnlyThroughTheManagersProxy(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	peerID := k.Run(t, "config", "Identity.PeerID")
	apiAddr := k.Run(t, "config", "Addresses.API")
	u, err := url.Parse(k.URL)
	if err != nil {
		t.Fatal(err)
	}
	kuboPort, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}

	w := startWagi(t, bin, dir, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 2

[ipfs]
api = %q

[[module]]
route = "/guestbook"
module = "{{mods}}/guestbook.wasm"
volumes = { "/data" = "mfs:/wagi/proxied" }
`, k.API))
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	t.Run("a guestbook in an MFS volume still works through nginx", func(t *testing.T) {
		for i := 1; i <= 3; i++ {
			if r := c.do("POST", "/guestbook", []byte(fmt.Sprintf("entry %d", i))); r.status != 200 {
				t.Fatalf("post %d: %d %q", i, r.status, r.body)
			}
		}
		want := "entry 1\nentry 2\nentry 3\n"
		if r := c.get("/guestbook"); r.status != 200 || string(r.body) != want {
			t.Fatalf("book: %d %q", r.status, r.body)
		}
		if got := k.Run(t, "files", "read", "/wagi/proxied/guestbook.txt"); got != want {
			t.Fatalf("ipfs files read: %q, want %q", got, want)
		}
	})

	t.Run("no child knows kubo's API address or holds a connection to it", func(t *testing.T) {
		// Right after MFS requests: a child talking to kubo itself keeps
		// its connections alive (90 s idle timeout).
		if r := c.do("POST", "/guestbook", []byte("one more")); r.status != 200 {
			t.Fatalf("post: %d %q", r.status, r.body)
		}
		addrs := []string{u.Host, fmt.Sprintf("/tcp/%d", kuboPort)}
		checked := 0
		for _, pid := range w.children(t) {
			cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err != nil || !bytes.Contains(cmdline, []byte("child")) {
				continue // gone, or the compile process
			}
			environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			if err != nil {
				t.Fatalf("child %d: %v", pid, err)
			}
			for _, a := range addrs {
				if bytes.Contains(cmdline, []byte(a)) || bytes.Contains(environ, []byte(a)) {
					t.Errorf("child %d has kubo's address %s in its command line or environment", pid, a)
				}
			}
			if conns := tcpConnsTo(t, pid, kuboPort); len(conns) > 0 {
				t.Errorf("child %d holds TCP connections to kubo's API port %d: %v", pid, kuboPort, conns)
			}
			checked++
		}
		if checked == 0 {
			t.Fatal("no child to check")
		}
	})

	t.Run("wagi-fcgi run mounts an MFS directory through its own proxy", func(t *testing.T) {
		out, errs, code := runBin(t, bin, []byte("from run"), "run", "--state-dir", filepath.Join(dir, "runstate"),
			"--ipfs", k.API, "--dir", "/data=mfs:/wagi/run", filepath.Join(testenv.Modules(t), "files.wasm"), "write", "/data/note.txt")
		if code != 0 || !strings.Contains(out, "wrote 8") {
			t.Fatalf("exit %d: %q %q", code, out, errs)
		}
		if !strings.Contains(errs, "MFS proxy listening") {
			t.Fatalf("run started no MFS proxy: %q", errs)
		}
		if got := k.Run(t, "files", "read", "/wagi/run/note.txt"); got != "from run" {
			t.Fatalf("ipfs files read: %q", got)
		}
	})

	t.Run("the proxy socket refuses every call without a live grant", func(t *testing.T) {
		line := w.log.waitFor(t, 5*time.Second, "MFS proxy listening")
		addr := regexp.MustCompile(`unix:(@wagi-fcgi-mfs-[0-9a-f]+)`).FindStringSubmatch(line)
		if addr == nil {
			t.Fatalf("no proxy address in %q", line)
		}
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr[1])
		}}}
		defer hc.CloseIdleConnections()
		calls := []struct{ cmd, query string }{
			{"shutdown", ""},
			{"config", "arg=Addresses.API&arg=/ip4/0.0.0.0/tcp/1"},
			{"key/export", "arg=self"},
			{"files/ls", "arg=/wagi/proxied"},
			{"files/rm", "arg=/wagi/proxied/guestbook.txt"},
		}
		for _, call := range calls {
			for _, token := range []string{"", "00112233445566778899aabbccddeeff"} {
				req, _ := http.NewRequest("POST", "http://proxy/api/v0/"+call.cmd+"?"+call.query, nil)
				if token != "" {
					req.Header.Set("X-Wagi-Mfs-Grant", token)
				}
				resp, err := hc.Do(req)
				if err != nil {
					t.Fatalf("%s: %v", call.cmd, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 403 {
					t.Errorf("%s with token %q: %d %q, want 403", call.cmd, token, resp.StatusCode, body)
				}
			}
		}
		w.log.waitFor(t, 5*time.Second, "MFS proxy refused a call", "shutdown")
		// kubo is up, its config unchanged, the guestbook still there.
		if got := k.Run(t, "config", "Identity.PeerID"); got != peerID {
			t.Fatalf("peer id %q, was %q", got, peerID)
		}
		if got := k.Run(t, "config", "Addresses.API"); got != apiAddr {
			t.Fatalf("API address %q, was %q", got, apiAddr)
		}
		if r := c.get("/guestbook"); r.status != 200 || !strings.HasSuffix(string(r.body), "one more\n") {
			t.Fatalf("book: %d %q", r.status, r.body)
		}
	})
}

// tcpConnsTo lists the TCP connections of process pid whose remote port is
// port: the socket inodes among its descriptors, looked up in its network
// namespace's tcp tables.
func tcpConnsTo(t *testing.T, pid, port int) []string {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("child %d: %v", pid, err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	wantPort := fmt.Sprintf(":%04X", port)
	var out []string
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fl := strings.Fields(sc.Text())
			if len(fl) < 10 || !strings.HasSuffix(fl[2], wantPort) || !inodes[fl[9]] {
				continue
			}
			out = append(out, table+" "+fl[1]+" -> "+fl[2])
		}
		f.Close()
	}
	return out
}
