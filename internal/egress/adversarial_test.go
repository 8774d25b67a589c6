package egress

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"
)

// switchingUpstream answers every request with 101 Switching Protocols
// (unasked: the proxy drops the guest's Upgrade header) and then sends
// nothing, keeping the connection open; closed receives when the other
// side closes it.
func switchingUpstream(t *testing.T) (addr string, closed <-chan struct{}) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan struct{}, 16)
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
				_, _ = io.Copy(io.Discard, br) // until the proxy closes
				ch <- struct{}{}
			}()
		}
	}()
	return ln.Addr().String(), ch
}

// An upstream that switches protocols must not keep the call (and its
// upstream connection) past the request's deadline: the transport stops
// watching the context once it hands the connection over.
func TestAnUpstreamThatSwitchesProtocolsIsCutAtTheDeadline(t *testing.T) {
	addr, closed := switchingUpstream(t)
	s, _ := startServer(t)
	token := s.Grant(Grant{ID: "req-101", Module: "test.wasm", PID: os.Getpid(), AllowedHosts: []string{"http://" + addr},
		Limits:   Limits{MaxRequests: 8, MaxConcurrency: 2, MaxResponse: 1 << 20, Timeout: time.Second},
		Deadline: time.Now().Add(2 * time.Second)})
	defer s.Revoke(token)
	done := make(chan error, 1)
	go func() {
		_, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: "http://" + addr + "/", Headers: "connection:upgrade\nupgrade:hold\n"}, 1<<20)
		done <- err
	}()
	select {
	case err := <-done:
		if codeOf(err) != CodeRequestError {
			t.Fatalf("err = %v, want code %d", err, CodeRequestError)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the call outlived its deadline (1s http_timeout, 2s request) by 18s")
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream connection is still open 10s after the call ended")
	}
}
