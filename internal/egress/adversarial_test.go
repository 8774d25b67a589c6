package egress

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
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

// Every way of writing a loopback address, or a name for one, is refused
// under insecure:allow-all without a connection: the decision is made on
// the address the name resolved to, not on how the URL spells it.
func TestEverySpellingOfLoopbackIsRefusedUnderAllowAll(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	_, port, _ := net.SplitHostPort(up.Listener.Addr().String())
	s, _ := startServer(t)
	for _, host := range []string{
		"127.0.0.1", "2130706433", "0x7f000001", "0x7f.0.0.1", "0177.0.0.1", "127.1", "0",
		"[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:127.0.0.1]", "[::1]", "0.0.0.0", "[::]",
		"localhost", "LOCALHOST", "localhost.", "LocalHost.", "a.localhost", "xn--localhost",
	} {
		t.Run(host, func(t *testing.T) {
			token := grantFor(s, []string{AllowAll})
			defer s.Revoke(token)
			_, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: "http://" + host + ":" + port + "/"}, 1<<20)
			switch codeOf(err) {
			case CodeDestinationNotAllowed, CodeInvalidURL:
			case CodeRequestError: // a name that does not resolve
				if !strings.Contains(err.Error(), "resolve") {
					t.Fatalf("err = %v", err)
				}
			default:
				t.Fatalf("err = %v", err)
			}
			if n := up.conns.Load(); n != 0 {
				t.Fatalf("%d connections reached the loopback upstream", n)
			}
		})
	}
}

// A guest's Host header, absolute-form path and CR/LF cannot make the
// upstream see another host, or smuggle a header.
func TestAGuestCannotChangeTheHostOrSmuggleHeaders(t *testing.T) {
	seen := make(chan string, 4)
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Host + " " + r.RequestURI + " " + r.Header.Get("X-Smuggled")
	}))
	s, _ := startServer(t)
	allowed := "http://" + up.Listener.Addr().String()
	token := grantFor(s, []string{allowed})
	defer s.Revoke(token)
	if _, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: allowed + "/http://evil.example/", Headers: "host:evil.example\n"}, 1<<20); err != nil {
		t.Fatal(err)
	}
	if got, want := <-seen, up.Listener.Addr().String()+" /http://evil.example/ "; got != want {
		t.Fatalf("upstream saw %q, want %q", got, want)
	}
	for _, r := range []Request{
		{Method: "GET", URL: allowed + "/\r\nX-Smuggled: 1"},
		{Method: "GET", URL: allowed + "/", Headers: "x-a:b\rX-Smuggled: 1\n"},
		{Method: "GET\r\nX-Smuggled:", URL: allowed + "/"},
		{Method: "GET", URL: allowed + "/", Headers: "x-a\r\nx-smuggled:1\n"},
	} {
		r.Token = token
		if _, err := Call(s.Addr(), &r, 1<<20); codeOf(err) == CodeOK {
			t.Fatalf("%q %q %q was sent", r.Method, r.URL, r.Headers)
		}
	}
	select {
	case got := <-seen:
		if strings.HasSuffix(got, " 1") {
			t.Fatalf("a header was smuggled: %q", got)
		}
	default:
	}
}

// A compromised child may lie about the handles it holds (Open: 0): the
// calls in flight are still bounded by http_max_concurrency.
func TestCallsInFlightAreBoundedWhateverTheChildSays(t *testing.T) {
	release := make(chan struct{})
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	s, _ := startServer(t)
	token := grantFor(s, []string{"http://" + up.Listener.Addr().String()}) // MaxConcurrency 2
	defer s.Revoke(token)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: up.URL}, 1<<20)
			errs <- err
		}()
	}
	for end := time.Now().Add(10 * time.Second); up.conns.Load() < 2 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	_, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: up.URL}, 1<<20)
	close(release)
	if codeOf(err) != CodeTooManySessions {
		t.Fatalf("third call in flight: err = %v", err)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// Calls without a grant (stale tokens, garbage) are logged a bounded
// number of times per window, not a bounded number of times for the
// proxy's life: a hostile child (or a month of calls racing Revoke) must
// not blind the log to later attempts.
func TestCallsWithoutAGrantAreStillLoggedAfterAFlood(t *testing.T) {
	s, logBuf := startServer(t)
	s.refusals.window = 200 * time.Millisecond
	stale := strings.Repeat("0", tokenLen)
	for range 3 * maxLoggedRefusals {
		if _, err := Call(s.Addr(), &Request{Token: stale, Method: "GET", URL: "http://example.com/"}, 1<<20); codeOf(err) != CodeRuntimeError {
			t.Fatalf("err = %v", err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := Call(s.Addr(), &Request{Token: stale, Method: "GET", URL: "http://example.com/later"}, 1<<20); codeOf(err) != CodeRuntimeError {
		t.Fatalf("err = %v", err)
	}
	var log string
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if log = logBuf.String(); strings.Contains(log, "example.com/later") {
			break
		}
	}
	if !strings.Contains(log, "example.com/later") {
		t.Fatalf("the call after the flood was not logged:\n%s", log)
	}
	if !strings.Contains(log, "unlogged="+strconv.Itoa(2*maxLoggedRefusals)) {
		t.Fatalf("the calls left out are not counted in the log:\n%s", log)
	}
}

// A name whose DNS answer is (or turns into) loopback is refused under
// allow-all, and is resolved once per connection: the address connected
// to is the one checked.
func TestANameThatResolvesToLoopbackIsRefusedAndResolvedOnce(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	_, port, _ := net.SplitHostPort(up.Listener.Addr().String())
	s, _ := startServer(t)
	var lookups atomic.Int64
	s.resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
		lookups.Add(1)
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	token := grantFor(s, []string{AllowAll})
	defer s.Revoke(token)
	_, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: "http://rebind.example:" + port + "/"}, 1<<20)
	if codeOf(err) != CodeDestinationNotAllowed || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("err = %v", err)
	}
	if n := lookups.Load(); n != 1 {
		t.Fatalf("%d lookups for one call", n)
	}
	if n := up.conns.Load(); n != 0 {
		t.Fatalf("%d connections reached the upstream", n)
	}
}

// A token is worth nothing once its request ended.
func TestARevokedTokenIsRefused(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	s, _ := startServer(t)
	token := grantFor(s, []string{"http://" + up.Listener.Addr().String()})
	if _, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: up.URL}, 1<<20); err != nil {
		t.Fatal(err)
	}
	s.Revoke(token)
	if _, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: up.URL}, 1<<20); codeOf(err) != CodeRuntimeError {
		t.Fatalf("after Revoke: err = %v", err)
	}
	if n := up.conns.Load(); n != 1 {
		t.Fatalf("%d connections, want the one before Revoke", n)
	}
}

// A compromised child that asks for an endless body and never reads it
// holds neither the upstream connection nor the proxy past the call's
// deadline: the proxy buffers at most a chunk, and Close does not wait.
func TestAChildThatNeverReadsTheBodyIsCutAtTheDeadline(t *testing.T) {
	closed := make(chan struct{}, 1)
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := []byte(strings.Repeat("x", 32<<10))
		for {
			if _, err := w.Write(chunk); err != nil {
				closed <- struct{}{}
				return
			}
			w.(http.Flusher).Flush()
		}
	}))
	s, _ := startServer(t)
	token := s.Grant(Grant{ID: "req-stall", Module: "test.wasm", PID: os.Getpid(), AllowedHosts: []string{"http://" + up.Listener.Addr().String()},
		Limits:   Limits{MaxRequests: 8, MaxConcurrency: 2, MaxResponse: 1 << 40, Timeout: time.Second},
		Deadline: time.Now().Add(30 * time.Second)})
	defer s.Revoke(token)
	c, err := net.Dial("unix", strings.TrimPrefix(s.Addr(), "unix:"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := writeRequestHeader(c, &Request{Token: token, Method: "GET", URL: up.URL}, 0); err != nil {
		t.Fatal(err)
	}
	// Never read. The call's deadline is 1s (http_timeout); its write
	// to us gives up a second later.
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		t.Fatal("the upstream connection is still open 15s into a 1s call")
	}
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("Close waits on a call whose child never reads")
	}
}
