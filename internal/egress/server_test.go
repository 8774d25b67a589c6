package egress

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// upstream is a loopback HTTP server that counts the connections made to
// it.
type upstream struct {
	*httptest.Server
	conns atomic.Int64
}

func newUpstream(t testing.TB, h http.Handler) *upstream {
	u := &upstream{}
	u.Server = httptest.NewUnstartedServer(h)
	u.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.conns.Add(1)
		}
	}
	u.Start()
	t.Cleanup(u.Close)
	return u
}

func startServer(t *testing.T) (*Server, *lockedWriter) {
	logBuf := &lockedWriter{}
	s, err := Start(slog.New(slog.NewTextHandler(logBuf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, logBuf
}

// lockedWriter is a log buffer safe to read while the proxy writes.
type lockedWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func grantFor(s *Server, entries []string) string {
	return s.Grant(Grant{ID: "req-1", Module: "test.wasm", PID: os.Getpid(), AllowedHosts: entries,
		Limits:   Limits{MaxRequests: 8, MaxConcurrency: 2, MaxResponse: 1 << 20, Timeout: 5 * time.Second},
		Deadline: time.Now().Add(30 * time.Second)})
}

func codeOf(err error) uint32 {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestAGrantedCallReturnsTheUpstreamAnswer(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Echo", r.Header.Get("X-Guest"))
		body, _ := io.ReadAll(r.Body)
		w.WriteHeader(201)
		io.WriteString(w, r.Method+" "+r.URL.RequestURI()+" "+string(body))
	}))
	s, logBuf := startServer(t)
	token := grantFor(s, []string{"http://" + up.Listener.Addr().String()})
	resp, err := Call(s.Addr(), &Request{Token: token, Method: "POST", URL: up.URL + "/p?secret=1", Headers: "x-guest:hello\n", Body: []byte("data")}, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 201 || string(resp.Body) != "POST /p?secret=1 data" || !strings.Contains(resp.Headers, "x-echo:hello\n") {
		t.Fatalf("got %d %q %q", resp.Status, resp.Body, resp.Headers)
	}
	// The line is written once the answer is out: wait for it.
	var log string
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if log = logBuf.String(); strings.Contains(log, "status=201") {
			break
		}
	}
	if !strings.Contains(log, "id=req-1") || !strings.Contains(log, "status=201") || strings.Contains(log, "secret") {
		t.Fatalf("log line: %s", log)
	}
}

func TestRefusedCallsMakeNoConnection(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	s, _ := startServer(t)
	tests := []struct {
		name    string
		entries []string
		url     string
		code    uint32
	}{
		{"no allowed_hosts", nil, up.URL, CodeDestinationNotAllowed},
		{"allow-all does not open loopback", []string{AllowAll}, up.URL, CodeDestinationNotAllowed},
		{"another port of the named host", []string{"http://127.0.0.1:1"}, up.URL, CodeDestinationNotAllowed},
		{"a URL that is not http", []string{AllowAll}, "gopher://127.0.0.1/", CodeInvalidURL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token := grantFor(s, tt.entries)
			defer s.Revoke(token)
			_, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: tt.url}, 1<<20)
			if codeOf(err) != tt.code {
				t.Fatalf("err = %v, want code %d", err, tt.code)
			}
			if n := up.conns.Load(); n != 0 {
				t.Fatalf("%d connections reached the upstream", n)
			}
		})
	}
}

func TestARedirectToADeniedHostIsRefused(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://[::1]:9/elsewhere", http.StatusFound)
	}))
	s, _ := startServer(t)
	token := grantFor(s, []string{"http://" + up.Listener.Addr().String()})
	_, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: up.URL}, 1<<20)
	if codeOf(err) != CodeDestinationNotAllowed || !strings.Contains(err.Error(), "redirect") {
		t.Fatalf("err = %v", err)
	}
}

func TestResponsesOverTheCapAreRefused(t *testing.T) {
	big := strings.Repeat("x", 2<<20)
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chunked" {
			w.(http.Flusher).Flush() // no Content-Length: the cap is found while streaming
		}
		io.WriteString(w, big)
	}))
	s, _ := startServer(t)
	for _, path := range []string{"/sized", "/chunked"} {
		token := grantFor(s, []string{"http://" + up.Listener.Addr().String()})
		_, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: up.URL + path}, 4<<20)
		if codeOf(err) != CodeRequestError || !strings.Contains(err.Error(), "http_max_response") {
			t.Fatalf("%s: err = %v", path, err)
		}
		s.Revoke(token)
	}
}

func TestRequestsPastTheBoundsAreTooManySessions(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	s, _ := startServer(t)
	token := grantFor(s, []string{"http://" + up.Listener.Addr().String()})
	if _, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: up.URL, Open: 2}, 1<<20); codeOf(err) != CodeTooManySessions {
		t.Fatalf("with 2 responses open: err = %v", err)
	}
	for i := 1; i < 8; i++ { // the refused call above counted
		if _, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: up.URL}, 1<<20); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if _, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: up.URL}, 1<<20); codeOf(err) != CodeTooManySessions {
		t.Fatalf("ninth call: err = %v", err)
	}
}

func TestRevokingAGrantCancelsItsCallInFlight(t *testing.T) {
	release := make(chan struct{})
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer close(release)
	s, _ := startServer(t)
	token := grantFor(s, []string{"http://" + up.Listener.Addr().String()})
	time.AfterFunc(200*time.Millisecond, func() { s.Revoke(token) })
	start := time.Now()
	_, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: up.URL}, 1<<20)
	if codeOf(err) != CodeRequestError || time.Since(start) > 4*time.Second {
		t.Fatalf("err = %v after %v", err, time.Since(start))
	}
}

// TestHostileCallersAreRefusedAndTheProxyKeepsServing plays a hostile
// child: garbage, a bad magic, a frame length past the bound, fields past
// their bounds, a wrong token, a grant of another pid. Each is refused or
// the connection closed; afterwards a proper call still works.
func TestHostileCallersAreRefusedAndTheProxyKeepsServing(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "fine") }))
	s, _ := startServer(t)
	allowed := []string{"http://" + up.Listener.Addr().String()}
	token := grantFor(s, allowed)
	otherPID := s.Grant(Grant{ID: "req-2", PID: os.Getpid() + 1, AllowedHosts: allowed,
		Limits: Limits{MaxRequests: 8, MaxConcurrency: 2, MaxResponse: 1 << 20, Timeout: time.Second}, Deadline: time.Now().Add(time.Minute)})

	frame := func(r *Request, bodyLen uint64) []byte {
		var b bytes.Buffer
		_ = writeRequestHeader(&b, r, bodyLen)
		return b.Bytes()
	}
	raw := func(t *testing.T, b []byte) (code byte, closed bool) {
		c, err := net.Dial("unix", strings.TrimPrefix(s.Addr(), "unix:"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		_, _ = c.Write(b)
		_ = c.(*net.UnixConn).CloseWrite()
		first, err := bufio.NewReader(c).ReadByte()
		if err != nil {
			return 0, true
		}
		return first, false
	}
	long := strings.Repeat("a", MaxURL+1)
	badLen := append(append([]byte{}, magic[:]...), 0xff, 0xff, 0xff, 0xff)
	tests := []struct {
		name   string
		bytes  []byte
		code   byte // 0: the connection is closed unanswered
		closed bool
	}{
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 0, true},
		{"a frame length past the bound", badLen, 0, true},
		{"a URL past MaxURL", frame(&Request{Token: token, Method: "GET", URL: long}, 0), 0, true},
		{"a token of the wrong length", frame(&Request{Token: token + "00", Method: "GET", URL: up.URL}, 0), 0, true},
		{"a truncated header", frame(&Request{Token: token, Method: "GET", URL: up.URL}, 0)[:20], 0, true},
		{"an unknown token", frame(&Request{Token: strings.Repeat("0", tokenLen), Method: "GET", URL: up.URL}, 0), byte(CodeRuntimeError), false},
		{"another pid's grant", frame(&Request{Token: otherPID, Method: "GET", URL: up.URL}, 0), byte(CodeRuntimeError), false},
		{"too many header lines", frame(&Request{Token: token, Method: "GET", URL: up.URL, Headers: strings.Repeat("a:b\n", MaxHeaders+1)}, 0), byte(CodeInvalidEncoding), false},
		{"a header with a newline in its name", frame(&Request{Token: token, Method: "GET", URL: up.URL, Headers: "a b:c\n"}, 0), byte(CodeInvalidEncoding), false},
		{"a method that is not a token", frame(&Request{Token: token, Method: "GE T", URL: up.URL}, 0), byte(CodeInvalidMethod), false},
		{"a body past MaxRequestBody", frame(&Request{Token: token, Method: "POST", URL: up.URL}, MaxRequestBody+1), byte(CodeRequestError), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, closed := raw(t, tt.bytes)
			if closed != tt.closed || code != tt.code {
				t.Fatalf("answer %d (closed %v), want %d (closed %v)", code, closed, tt.code, tt.closed)
			}
		})
	}
	if n := up.conns.Load(); n != 0 {
		t.Fatalf("%d connections reached the upstream", n)
	}
	resp, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: up.URL}, 1<<20)
	if err != nil || string(resp.Body) != "fine" {
		t.Fatalf("a proper call after the hostile ones: %v %v", resp, err)
	}
}

func TestCloseEndsCallsThatNeverSendAFrame(t *testing.T) {
	s, err := Start(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", strings.TrimPrefix(s.Addr(), "unix:"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(50 * time.Millisecond) // accepted, waiting for a header that never comes
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > headerTimeout/2 {
		t.Fatalf("Close waited %v for a silent caller", d)
	}
}
