package fcgi

// A raw-record FastCGI client for tests. It encodes records independently of
// the package's own encoder, so that tests check the server against the
// specification rather than against itself.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

const testTimeout = 5 * time.Second

type pair struct{ name, value string }

// rawRecord is a record as read from or written to the wire.
type rawRecord struct {
	version uint8
	typ     uint8
	id      uint16
	content []byte
	pad     int
}

// encodePairs encodes name-value pairs the way the spec describes.
func encodePairs(pairs []pair) []byte {
	var b []byte
	size := func(n int) {
		if n < 128 {
			b = append(b, byte(n))
			return
		}
		b = append(b, byte(n>>24)|0x80, byte(n>>16), byte(n>>8), byte(n))
	}
	for _, p := range pairs {
		size(len(p.name))
		size(len(p.value))
		b = append(b, p.name...)
		b = append(b, p.value...)
	}
	return b
}

// Padding modes for encodeRecord.
const (
	padTo8 = -1 // nginx
	padNo  = 0  // Apache
)

// encodeRecord encodes one version-1 record. pad is padTo8 or an exact count.
func encodeRecord(typ uint8, id uint16, content []byte, pad int) []byte {
	if pad == padTo8 {
		pad = -len(content) & 7
	}
	b := []byte{1, typ, byte(id >> 8), byte(id), byte(len(content) >> 8), byte(len(content)), byte(pad), 0}
	b = append(b, content...)
	return append(b, make([]byte, pad)...)
}

// encodeStream splits content into records of at most size bytes and adds
// the empty terminating record.
func encodeStream(typ uint8, id uint16, content []byte, size, pad int) []byte {
	var b []byte
	for len(content) > 0 {
		n := min(size, len(content))
		b = append(b, encodeRecord(typ, id, content[:n], pad)...)
		content = content[n:]
	}
	return append(b, encodeRecord(typ, id, nil, pad)...)
}

func encodeBegin(id uint16, role uint16, flags uint8) []byte {
	return encodeRecord(1, id, []byte{byte(role >> 8), byte(role), flags, 0, 0, 0, 0, 0}, 0)
}

// encodeRequest is a complete nginx-style request: padded records, params
// in one record, body in 32 KiB records.
func encodeRequest(id uint16, keep bool, pairs []pair, body []byte) []byte {
	var flags uint8
	if keep {
		flags = 1
	}
	b := encodeBegin(id, 1, flags)
	b = append(b, encodeStream(4, id, encodePairs(pairs), 0xffff, padTo8)...)
	return append(b, encodeStream(5, id, body, 32<<10, padTo8)...)
}

func nginxParams(uri string) []pair {
	return []pair{
		{"QUERY_STRING", ""},
		{"REQUEST_METHOD", "GET"},
		{"CONTENT_TYPE", ""},
		{"CONTENT_LENGTH", ""},
		{"SCRIPT_NAME", "/app.wasm"},
		{"REQUEST_URI", uri},
		{"DOCUMENT_URI", "/app.wasm"},
		{"DOCUMENT_ROOT", "/srv/wagi"},
		{"SERVER_PROTOCOL", "HTTP/1.1"},
		{"REQUEST_SCHEME", "http"},
		{"GATEWAY_INTERFACE", "CGI/1.1"},
		{"SERVER_SOFTWARE", "nginx/1.27.0"},
		{"REMOTE_ADDR", "127.0.0.1"},
		{"REMOTE_PORT", "52044"},
		{"SERVER_ADDR", "127.0.0.1"},
		{"SERVER_PORT", "80"},
		{"SERVER_NAME", "localhost"},
		{"REDIRECT_STATUS", "200"},
		{"SCRIPT_FILENAME", "/srv/wagi/app.wasm"},
		{"HTTP_HOST", "localhost"},
		{"HTTP_USER_AGENT", "curl/8.5.0"},
		{"HTTP_ACCEPT", "*/*"},
	}
}

// testClient speaks raw records over one connection.
type testClient struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

func newTestClient(t testing.TB, conn net.Conn) *testClient {
	t.Helper()
	t.Cleanup(func() { conn.Close() })
	return &testClient{t: t, conn: conn, br: bufio.NewReader(conn)}
}

func (c *testClient) send(b []byte) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(testTimeout))
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

// readRecord reads one record, checking the framing rules the server must
// follow: version 1 and padding to a multiple of 8.
func (c *testClient) readRecord() (rawRecord, error) {
	c.conn.SetReadDeadline(time.Now().Add(testTimeout))
	var h [8]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return rawRecord{}, err
	}
	r := rawRecord{version: h[0], typ: h[1], id: binary.BigEndian.Uint16(h[2:4]), pad: int(h[6])}
	n := int(binary.BigEndian.Uint16(h[4:6]))
	buf := make([]byte, n+r.pad)
	if _, err := io.ReadFull(c.br, buf); err != nil {
		return rawRecord{}, fmt.Errorf("record content: %w", err)
	}
	r.content = buf[:n]
	if r.version != 1 {
		return r, fmt.Errorf("server sent record version %d", r.version)
	}
	if (n+r.pad)%8 != 0 {
		return r, fmt.Errorf("server sent %s record of %d bytes padded by %d, not to 8", typeName(r.typ), n, r.pad)
	}
	return r, nil
}

func (c *testClient) mustReadRecord() rawRecord {
	c.t.Helper()
	r, err := c.readRecord()
	if err != nil {
		c.t.Fatalf("read record: %v", err)
	}
	return r
}

// response is everything the server sent for one request.
type response struct {
	stdout, stderr []byte
	stdoutRecords  int // non-empty STDOUT records
	stderrRecords  int // non-empty STDERR records
	stderrTerm     bool
	appStatus      uint32
	protocolStatus uint8
	others         []rawRecord // management records seen meanwhile
}

// readResponse reads records up to END_REQUEST for id and checks the stream
// rules: no data after a terminator, at most 65535 bytes per record.
func (c *testClient) readResponse(id uint16) response {
	c.t.Helper()
	var resp response
	var stdoutTerm bool
	for {
		r := c.mustReadRecord()
		if r.id == 0 {
			resp.others = append(resp.others, r)
			continue
		}
		if r.id != id {
			c.t.Fatalf("record %s for id %d, want id %d", typeName(r.typ), r.id, id)
		}
		switch r.typ {
		case typeStdout:
			if stdoutTerm {
				c.t.Fatalf("STDOUT record after the STDOUT terminator")
			}
			if len(r.content) == 0 {
				stdoutTerm = true
			} else {
				resp.stdoutRecords++
				resp.stdout = append(resp.stdout, r.content...)
			}
		case typeStderr:
			if resp.stderrTerm {
				c.t.Fatalf("STDERR record after the STDERR terminator")
			}
			if len(r.content) == 0 {
				resp.stderrTerm = true
			} else {
				resp.stderrRecords++
				resp.stderr = append(resp.stderr, r.content...)
			}
		case typeEndRequest:
			if len(r.content) != 8 {
				c.t.Fatalf("END_REQUEST content length %d", len(r.content))
			}
			resp.appStatus = binary.BigEndian.Uint32(r.content)
			resp.protocolStatus = r.content[4]
			if resp.protocolStatus == statusRequestComplete && !stdoutTerm {
				c.t.Fatalf("END_REQUEST without STDOUT terminator")
			}
			if resp.stderrRecords > 0 && !resp.stderrTerm {
				c.t.Fatalf("END_REQUEST without STDERR terminator after stderr output")
			}
			return resp
		default:
			c.t.Fatalf("unexpected %s record for id %d", typeName(r.typ), id)
		}
	}
}

// expectClosed asserts that the server closes the connection (EOF or
// reset) without sending anything more.
func (c *testClient) expectClosed() {
	c.t.Helper()
	r, err := c.readRecord()
	if err == nil {
		c.t.Fatalf("got %s record for id %d, want the connection closed", typeName(r.typ), r.id)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.t.Fatalf("connection still open after %v", testTimeout)
	}
}

// expectOpen asserts the connection is still usable by asking GET_VALUES.
func (c *testClient) expectOpen() {
	c.t.Helper()
	c.send(encodeRecord(typeGetValues, 0, encodePairs([]pair{{"FCGI_MPXS_CONNS", ""}}), padTo8))
	r := c.mustReadRecord()
	if r.typ != typeGetValuesResult {
		c.t.Fatalf("got %s, want GET_VALUES_RESULT", typeName(r.typ))
	}
}

// roundTrip sends an nginx-style request and reads its response.
func (c *testClient) roundTrip(id uint16, keep bool, pairs []pair, body []byte) response {
	c.t.Helper()
	c.send(encodeRequest(id, keep, pairs, body))
	return c.readResponse(id)
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lines returns the log lines at the given level ("WARN", "ERROR", ...).
func (s *syncBuffer) lines(level string) []string {
	var out []string
	for _, l := range strings.Split(s.String(), "\n") {
		if strings.Contains(l, "level="+level) {
			out = append(out, l)
		}
	}
	return out
}

// testEnv is a Server listening on a unix socket.
type testEnv struct {
	t        testing.TB
	srv      *Server
	addr     string
	logs     *syncBuffer
	serveErr chan error
}

func startServer(t testing.TB, h Handler, configure ...func(*Server)) *testEnv {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcgi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	addr := filepath.Join(dir, "s")
	l, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	srv := &Server{
		Handler: h,
		Logger:  slogTo(logs),
	}
	for _, f := range configure {
		f(srv)
	}
	env := &testEnv{t: t, srv: srv, addr: addr, logs: logs, serveErr: make(chan error, 1)}
	go func() { env.serveErr <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		select {
		case err := <-env.serveErr:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(testTimeout):
			t.Errorf("Serve did not return after Close")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	return env
}

func (e *testEnv) dial() *testClient {
	e.t.Helper()
	conn, err := net.Dial("unix", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	return newTestClient(e.t, conn)
}

// echoHandler writes a fixed header, the request's REQUEST_URI and the body.
var echoHandler = HandlerFunc(func(w *ResponseWriter, r *Request) {
	fmt.Fprintf(w, "Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n%s\n", r.Param("REQUEST_URI"))
	io.Copy(w, r.Body)
})

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// recv receives from ch or fails the test after testTimeout.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// goroutineBaseline returns a check that the goroutine count fell back to
// what it was when goroutineBaseline was called.
func goroutineBaseline(t testing.TB) func() {
	before := runtime.NumGoroutine()
	return func() {
		t.Helper()
		deadline := time.Now().Add(testTimeout)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("%d goroutines left, had %d before:\n%s", n, before, buf)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// ctxWithTimeout is a test-scoped context.
func ctxWithTimeout(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// slogTo logs everything, debug included, as text lines to w.
func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
