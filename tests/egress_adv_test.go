package tests

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestAnUpstreamThatSwitchesProtocolsCannotHoldTheManager: a module's
// allowed upstream answers 101 Switching Protocols (unasked) and then
// says nothing. Go's transport stops watching the call's context once it
// hands the connection over; the call must still end at http_timeout
// with RequestError (11), the upstream connection must be closed, and
// the manager must still stop on SIGTERM (its proxy waits for its calls).
func TestAnUpstreamThatSwitchesProtocolsCannotHoldTheManager(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closed := make(chan struct{}, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: hold\r\n\r\n")
				_, _ = io.Copy(io.Discard, br) // until the manager closes it
				closed <- struct{}{}
			}()
		}
	}()
	addr := ln.Addr().String()

	w := startWagi(t, bin, dir, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 1
[[module]]
route = "/switch"
module = "{{mods}}/outbound.wasm"
allowed_hosts = ["http://%s"]
http_timeout = "1s"
timeout = "30s"
`, addr))
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	start := time.Now()
	r := c.get("/switch?get&http://" + addr + "/switch")
	if r.status != 200 || strings.TrimSpace(string(r.body)) != "error 11" {
		t.Fatalf("got %d %q after %v, want 200 \"error 11\" (RequestError at http_timeout)", r.status, r.body, time.Since(start))
	}
	// http_timeout is wall time: bounded, generously (the request's own
	// timeout, 30s, is what the guest would wait otherwise).
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("took %v with http_timeout = 1s", d)
	}
	w.log.waitFor(t, 10*time.Second, "outbound HTTP refused", "url=http://"+addr+"/switch", "status=101")
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream connection is still open 10s after the call ended")
	}
	w.stop(t) // fails the test if the manager does not stop within 10s
}
