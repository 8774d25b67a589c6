package fcgi

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Tests for what a peer can make the server hold: connections, params,
// and how long a request's input may take.

func TestRepeatedHeadersAreJoinedInLinearTime(t *testing.T) {
	for _, n := range []int{1_000, 10_000, 70_000} {
		pairs := make([]pair, 0, n+1)
		for range n {
			pairs = append(pairs, pair{"HTTP_X_DUP", "ab"})
		}
		pairs = append(pairs, pair{"HTTP_COOKIE", "a=1"}, pair{"HTTP_COOKIE", "b=2"})
		b := encodePairs(pairs)

		m, err := decodeParams(b)
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.Repeat("ab, ", n-1) + "ab"; m["HTTP_X_DUP"] != want {
			t.Fatalf("%d repeats: joined value has %d bytes, want %d", n, len(m["HTTP_X_DUP"]), len(want))
		}
		if m["HTTP_COOKIE"] != "a=1; b=2" {
			t.Fatalf("HTTP_COOKIE = %q", m["HTTP_COOKIE"])
		}

		// Joining as they come copies the value so far every time:
		// n²/2 × 4 bytes (10 GB for 70,000). Linear joining allocates a
		// small multiple of the input.
		allocs := testing.AllocsPerRun(3, func() { decodeParams(b) })
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		decodeParams(b)
		runtime.ReadMemStats(&after)
		bytesAllocated := after.TotalAlloc - before.TotalAlloc
		if allocs > 64 {
			t.Errorf("%d repeats: %.0f allocations per decode, want a few dozen at most", n, allocs)
		}
		if limit := uint64(20*len(b) + 64<<10); bytesAllocated > limit {
			t.Errorf("%d repeats (%d bytes of params): %d bytes allocated, want at most %d", n, len(b), bytesAllocated, limit)
		}
	}
}

func TestARequestWhoseParamsStallIsClosedAfterRequestReadTimeout(t *testing.T) {
	called := make(chan struct{}, 1)
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) { called <- struct{}{} }),
		func(s *Server) { s.RequestReadTimeout = 100 * time.Millisecond })
	c := env.dial()
	c.send(encodeBegin(1, roleResponder, flagKeepConn))
	c.send(encodeRecord(typeParams, 1, encodePairs([]pair{{"A", "b"}}), padTo8))
	start := time.Now()
	c.expectClosed()
	if d := time.Since(start); d < 80*time.Millisecond {
		t.Errorf("closed after %v, before RequestReadTimeout", d)
	}
	select {
	case <-called:
		t.Error("the handler ran for a request without complete params")
	default:
	}
	waitFor(t, "the timeout to be logged", func() bool {
		return strings.Contains(env.logs.String(), "within RequestReadTimeout")
	})
}

func TestAStalledBodyIsCutAndTheHandlerSeesTheTimeout(t *testing.T) {
	got := make(chan error, 1)
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		_, err := io.ReadAll(r.Body)
		got <- err
	}), func(s *Server) { s.RequestReadTimeout = 100 * time.Millisecond })
	c := env.dial()
	c.send(encodeBegin(1, roleResponder, flagKeepConn))
	c.send(encodeStream(typeParams, 1, encodePairs(nginxParams("/up")), 0xffff, padTo8))
	c.send(encodeRecord(typeStdin, 1, []byte("part of a body"), padTo8))
	err := recv(t, got, "the handler's body read")
	if !errors.Is(err, ErrConnClosed) || !errors.Is(err, ErrReadTimeout) {
		t.Fatalf("Body read error = %v, want ErrConnClosed and ErrReadTimeout", err)
	}
	c.expectClosed()
}

func TestASlowUploadThatKeepsMovingIsNotCut(t *testing.T) {
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "Status: 200 OK\r\n\r\n%d %v", len(b), err)
	}), func(s *Server) { s.RequestReadTimeout = time.Second })
	c := env.dial()
	c.send(encodeBegin(1, roleResponder, flagKeepConn))
	c.send(encodeStream(typeParams, 1, encodePairs(nginxParams("/up")), 0xffff, padTo8))
	// Ten parts 200 ms apart: 2 s in all, twice the timeout, but never a
	// second without progress.
	for range 10 {
		time.Sleep(200 * time.Millisecond)
		c.send(encodeRecord(typeStdin, 1, []byte("0123456789"), padTo8))
	}
	c.send(encodeRecord(typeStdin, 1, nil, padTo8))
	if resp := c.readResponse(1); !bytes.HasSuffix(resp.stdout, []byte("100 <nil>")) {
		t.Fatalf("stdout = %q", resp.stdout)
	}
	c.expectOpen()
}

func TestAHandlerSlowerThanRequestReadTimeoutIsNotCut(t *testing.T) {
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		time.Sleep(300 * time.Millisecond) // all input is in: no read timeout
		io.WriteString(w, "Status: 200 OK\r\n\r\nslow")
	}), func(s *Server) { s.RequestReadTimeout = 100 * time.Millisecond })
	c := env.dial()
	if resp := c.roundTrip(1, true, nginxParams("/slow"), []byte("body")); !bytes.HasSuffix(resp.stdout, []byte("slow")) {
		t.Fatalf("stdout = %q", resp.stdout)
	}
	c.expectOpen()
}

func TestAHandlerThatTakesItsBodyLateDoesNotTimeTheUploadOut(t *testing.T) {
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		time.Sleep(time.Second) // the reader waits in push meanwhile
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "Status: 200 OK\r\n\r\n%d %v", len(b), err)
	}), func(s *Server) {
		s.RequestReadTimeout = 300 * time.Millisecond
		s.MaxBodyBuffer = 1024
	})
	c := env.dial()
	body := bytes.Repeat([]byte("x"), 256<<10)
	go c.conn.Write(encodeRequest(1, true, nginxParams("/late"), body))
	if resp := c.readResponse(1); !bytes.HasSuffix(resp.stdout, fmt.Appendf(nil, "%d <nil>", len(body))) {
		t.Fatalf("stdout = %q", resp.stdout)
	}
}

func TestParamsOverMaxParamsTotalGet503AndOrdinaryRequestsGoOn(t *testing.T) {
	env := startServer(t, echoHandler, func(s *Server) { s.MaxParamsTotal = 256 << 10 })
	big := encodePairs([]pair{{"HTTP_X_BIG", strings.Repeat("b", 200<<10)}})
	// Two requests hold their big params (never finished): the second
	// passes the shared budget and is answered 503.
	hog := env.dial()
	hog.send(encodeBegin(1, roleResponder, flagKeepConn))
	for p := big; len(p) > 0; p = p[min(len(p), 0xfff8):] { // no terminator
		hog.send(encodeRecord(typeParams, 1, p[:min(len(p), 0xfff8)], padTo8))
	}
	waitFor(t, "the first hog's params to be held", func() bool { return env.srv.paramsHeld.Load() > 0 })
	second := env.dial()
	second.send(encodeBegin(1, roleResponder, flagKeepConn))
	second.send(encodeStream(typeParams, 1, big, 0xfff8, padTo8))
	resp := second.readResponse(1)
	if !bytes.HasPrefix(resp.stdout, []byte("Status: 503")) || !bytes.Contains(resp.stdout, []byte("Retry-After: 1\r\n")) {
		t.Fatalf("second big request: %q", resp.stdout)
	}
	second.send(encodeStream(typeStdin, 1, nil, 0xffff, padTo8))
	second.expectOpen()

	// Ordinary requests stay within their allowance and are served.
	c := env.dial()
	if resp := c.roundTrip(1, true, nginxParams("/ok"), nil); !bytes.HasPrefix(resp.stdout, []byte("Status: 200")) {
		t.Fatalf("ordinary request: %q", resp.stdout)
	}
	// Closing the hog gives its share back.
	hog.conn.Close()
	waitFor(t, "the params budget to be given back", func() bool { return env.srv.paramsHeld.Load() == 0 })
	if resp := c.roundTrip(1, true, append(nginxParams("/big"), pair{"HTTP_X_BIG", strings.Repeat("b", 200<<10)}), nil); !bytes.HasPrefix(resp.stdout, []byte("Status: 200")) {
		t.Fatalf("big request once the budget is free: %.100q", resp.stdout)
	}
	waitFor(t, "the params budget to be given back after a request", func() bool { return env.srv.paramsHeld.Load() == 0 })
}

func TestAtConnLimitTheLongestWaitingConnectionMakesRoom(t *testing.T) {
	release, started := make(chan struct{}), make(chan struct{})
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		if r.Param("REQUEST_URI") == "/busy" {
			close(started)
			<-release
		}
		echoHandler(w, r)
	}), func(s *Server) { s.ConnLimit = 3 })

	busy := env.dial()
	busy.send(encodeRequest(1, true, nginxParams("/busy"), nil))
	recv(t, started, "the busy handler")
	idle1 := env.dial()
	idle1.expectOpen()
	idle2 := env.dial()
	idle2.expectOpen()

	// A fourth connection: idle1, the longest idle, is closed for it.
	c := env.dial()
	if resp := c.roundTrip(1, true, nginxParams("/new"), nil); !bytes.Contains(resp.stdout, []byte("/new")) {
		t.Fatalf("new connection: %q", resp.stdout)
	}
	idle1.expectClosed()
	idle2.expectOpen()

	// The busy request goes on and completes.
	release <- struct{}{}
	if resp := busy.readResponse(1); !bytes.Contains(resp.stdout, []byte("/busy")) {
		t.Fatalf("busy request: %q", resp.stdout)
	}
}

func TestAtConnLimitWithEveryRequestRunningNewConnectionsAreClosed(t *testing.T) {
	release := make(chan struct{})
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		<-release
		echoHandler(w, r)
	}), func(s *Server) { s.ConnLimit = 2 })
	var busy []*testClient
	for i := range 2 {
		c := env.dial()
		c.send(encodeRequest(1, true, nginxParams(fmt.Sprintf("/busy%d", i)), nil))
		busy = append(busy, c)
	}
	waitFor(t, "both handlers", func() bool {
		env.srv.mu.Lock()
		defer env.srv.mu.Unlock()
		n := 0
		for c := range env.srv.conns {
			if _, waiting := c.waitingSince(); !waiting {
				n++
			}
		}
		return n == 2
	})
	refused := env.dial()
	refused.expectClosed()
	waitFor(t, "the refusal to be logged", func() bool {
		return strings.Contains(env.logs.String(), "connection limit reached")
	})
	close(release)
	for i, c := range busy {
		if resp := c.readResponse(1); !bytes.Contains(resp.stdout, fmt.Appendf(nil, "/busy%d", i)) {
			t.Fatalf("busy request %d: %q", i, resp.stdout)
		}
	}
	// Room again.
	c := env.dial()
	if resp := c.roundTrip(1, true, nginxParams("/after"), nil); !bytes.Contains(resp.stdout, []byte("/after")) {
		t.Fatalf("after: %q", resp.stdout)
	}
}

// emfileListener fails the 2nd to 6th Accept with EMFILE.
type emfileListener struct {
	net.Listener
	calls atomic.Int32
}

func (l *emfileListener) Accept() (net.Conn, error) {
	if n := l.calls.Add(1); n >= 2 && n <= 6 {
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

func TestServeBacksOffOnEMFILEAndClosesAWaitingConnection(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("unix", dir+"/s")
	if err != nil {
		t.Fatal(err)
	}
	el := &emfileListener{Listener: l}
	logs := &syncBuffer{}
	srv := &Server{Handler: echoHandler, Logger: slogTo(logs)}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(el) }()
	defer func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve = %v", err)
		}
	}()
	dial := func() *testClient {
		conn, err := net.Dial("unix", dir+"/s")
		if err != nil {
			t.Fatal(err)
		}
		return newTestClient(t, conn)
	}
	// Accepted first; then the process is out of descriptors five times
	// in a row: the loop backs off (5, 10, 20, 40, 80 ms), closes the
	// idle connection to free one, and goes on.
	idle := dial()
	c := dial()
	if resp := c.roundTrip(1, true, nginxParams("/after-emfile"), nil); !bytes.Contains(resp.stdout, []byte("/after-emfile")) {
		t.Fatalf("stdout = %q", resp.stdout)
	}
	idle.expectClosed()
	if n := len(logs.lines("WARN")); n != 5 {
		t.Errorf("%d accept warnings, want 5:\n%s", n, logs)
	}
}
