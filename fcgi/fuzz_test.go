package fcgi

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memConn is a net.Conn that reads a fixed stream (then EOF) and records
// everything written to it.
type memConn struct {
	in     *bytes.Reader
	mu     sync.Mutex
	out    bytes.Buffer
	closed atomic.Bool
}

type memAddr struct{}

func (memAddr) Network() string { return "mem" }
func (memAddr) String() string  { return "fuzz" }

func (c *memConn) Read(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	return c.in.Read(p)
}

func (c *memConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	return c.out.Write(p)
}

func (c *memConn) Close() error                     { c.closed.Store(true); return nil }
func (c *memConn) LocalAddr() net.Addr              { return memAddr{} }
func (c *memConn) RemoteAddr() net.Addr             { return memAddr{} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

func (c *memConn) output() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

// outputStreamError checks that everything the server wrote is a sequence
// of well-formed records that follow the stream rules.
func outputStreamError(out []byte) error {
	type stream struct{ stdoutDone, stderrDone bool }
	streams := map[uint16]*stream{}
	for len(out) > 0 {
		if len(out) < headerLen {
			return fmt.Errorf("partial record header at the end of the output")
		}
		h, err := parseHeader(out)
		if err != nil {
			return fmt.Errorf("server wrote a bad header: %v", err)
		}
		n, pad := int(h.contentLength), int(h.paddingLength)
		if (n+pad)%8 != 0 {
			return fmt.Errorf("%s record of %d bytes padded by %d", typeName(h.typ), n, pad)
		}
		if len(out) < headerLen+n+pad {
			return fmt.Errorf("partial %s record at the end of the output", typeName(h.typ))
		}
		content := out[headerLen : headerLen+n]
		out = out[headerLen+n+pad:]
		s := streams[h.id]
		if s == nil {
			s = &stream{}
			streams[h.id] = s
		}
		switch h.typ {
		case typeGetValuesResult, typeUnknownType:
			if h.id != 0 {
				return fmt.Errorf("%s with id %d", typeName(h.typ), h.id)
			}
		case typeStdout, typeStderr:
			if h.id == 0 || n > maxChunk {
				return fmt.Errorf("%s with id %d and %d bytes", typeName(h.typ), h.id, n)
			}
			done := &s.stdoutDone
			if h.typ == typeStderr {
				done = &s.stderrDone
			}
			if *done {
				return fmt.Errorf("%s record after its terminator", typeName(h.typ))
			}
			*done = n == 0
		case typeEndRequest:
			if h.id == 0 || n != 8 {
				return fmt.Errorf("END_REQUEST with id %d and %d bytes", h.id, n)
			}
			if content[4] == statusRequestComplete && !s.stdoutDone {
				return fmt.Errorf("END_REQUEST(COMPLETE) without a STDOUT terminator")
			}
			delete(streams, h.id)
		default:
			return fmt.Errorf("server wrote a %s record", typeName(h.typ))
		}
	}
	return nil
}

// FuzzServeConn feeds arbitrary bytes to a connection and checks that the
// server neither panics nor hangs and only writes well-formed records.
func FuzzServeConn(f *testing.F) {
	valid := encodeRequest(1, true, nginxParams("/fuzz"), []byte("hello body"))
	f.Add(valid)
	f.Add(append(append([]byte{}, valid...), encodeRequest(1, false, []pair{{"E", "1"}}, bytes.Repeat([]byte("b"), 3000))...))
	apache := encodeBegin(1, 1, 0)
	apache = append(apache, encodeStream(typeParams, 1, encodePairs(nginxParams("/a")), 16, padNo)...)
	apache = append(apache, encodeStream(typeStdin, 1, []byte("apache body"), 3, padNo)...)
	f.Add(apache)
	f.Add(encodeRecord(typeGetValues, 0, encodePairs([]pair{{"FCGI_MPXS_CONNS", ""}, {"FCGI_MAX_CONNS", ""}}), padTo8))
	f.Add(encodeRecord(77, 0, []byte("x"), padTo8))
	f.Add(encodeRecord(77, 1, nil, 255))
	f.Add(append(encodeBegin(1, roleAuthorizer, 1), valid...))
	f.Add(append(encodeBegin(1, 1, 1), encodeRequest(2, true, nil, nil)...))
	f.Add(append(append(encodeBegin(1, 1, 1), encodeRecord(typeParams, 1, []byte{1, 1, 'a', 'b'}, 0)...), encodeRecord(typeAbortRequest, 1, nil, 0)...))
	f.Add(encodeRequest(1, true, []pair{{"BIG", strings.Repeat("x", 5000)}}, []byte("body")))
	f.Add(encodeRequest(1, true, nil, bytes.Repeat([]byte("z"), 5000)))
	f.Add([]byte{2, 1, 0, 1, 0, 8, 0, 0})
	f.Add([]byte{1, 1, 0})
	f.Add([]byte{1, 4, 0, 1, 0xff, 0xff, 0, 0, 1})
	f.Add(append(encodeBegin(1, 1, 1), encodeStream(typeParams, 1, []byte{0x80, 0, 0}, 100, 0)...))
	f.Add(append(encodeBegin(1, 1, 1), encodeBegin(1, 1, 1)...))

	f.Fuzz(func(t *testing.T, stream []byte) {
		srv := &Server{
			Handler: HandlerFunc(func(w *ResponseWriter, r *Request) {
				io.WriteString(w, "Status: 200 OK\r\n\r\n")
				io.Copy(w, r.Body)
				if r.Param("E") != "" {
					w.Stderr().Write([]byte("stderr"))
				}
			}),
			Logger:         discardLogger(),
			MaxParamsBytes: 4096, // small limits, so fuzzing reaches them
			MaxBodyBuffer:  1024,
			MaxConns:       3,
		}
		conn := &memConn{in: bytes.NewReader(stream)}
		done := make(chan struct{})
		go func() {
			srv.ServeConn(conn)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("ServeConn hangs")
		}
		if !conn.closed.Load() {
			t.Fatalf("connection left open")
		}
		if err := outputStreamError(conn.output()); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzDecodeParams checks that the name-value pair decoder never panics and
// that what it accepts survives a re-encoding round trip.
func FuzzDecodeParams(f *testing.F) {
	f.Add(encodePairs(nginxParams("/x?y=1")))
	f.Add(encodePairs([]pair{{strings.Repeat("n", 130), strings.Repeat("v", 300)}}))
	f.Add([]byte{1, 0x80, 0, 0, 2, 'A', 'h', 'i'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 'a'})
	f.Add([]byte{1, 1, 'a'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeParams(data)
		count, cerr := countPairs(data)
		if (err == nil) != (cerr == nil) {
			t.Fatalf("decodeParams err %v, countPairs err %v", err, cerr)
		}
		if err != nil {
			return
		}
		var pairs []pair
		forEachPair(data, func(name, value []byte) { pairs = append(pairs, pair{string(name), string(value)}) })
		if len(pairs) != count {
			t.Fatalf("%d pairs, countPairs said %d", len(pairs), count)
		}
		again, err := decodeParams(encodePairs(pairs))
		if err != nil || !maps.Equal(m, again) {
			t.Fatalf("round trip: %v, %v != %v", err, again, m)
		}
		var enc []byte
		for _, p := range pairs {
			enc = appendPair(enc, p.name, p.value)
		}
		if !bytes.Equal(enc, encodePairs(pairs)) {
			t.Fatalf("appendPair differs from the reference encoding")
		}
	})
}

// FuzzRequestRoundTrip sends well-formed requests built from fuzz data,
// framed with arbitrary record sizes and padding, twice on one kept
// connection, and checks that the handler sees exactly the params and body
// sent and that its output arrives unchanged.
func FuzzRequestRoundTrip(f *testing.F) {
	f.Add("QUERY_STRING=a=b\nREQUEST_METHOD=POST\nCONTENT_LENGTH=", []byte("body"), uint16(0xffff), uint8(0))
	f.Add("A=1\nA=2\n=empty name", []byte{}, uint16(1), uint8(255))
	f.Add(strings.Repeat("LONG", 100)+"="+strings.Repeat("v", 1000), bytes.Repeat([]byte{0, 1, 2}, 30000), uint16(16<<10), uint8(7))
	f.Fuzz(func(t *testing.T, params string, body []byte, size uint16, pad uint8) {
		var pairs []pair
		want := map[string]string{}
		for _, line := range strings.Split(params, "\n") {
			name, value, _ := strings.Cut(line, "=")
			pairs = append(pairs, pair{name, value})
			want[name] = value
		}
		recSize := max(int(size), 1)
		if (len(params)+len(body))/recSize > 5000 {
			t.Skip("too many records to be quick")
		}

		type seen struct {
			params map[string]string
			body   []byte
		}
		got := make(chan seen, 2)
		srv := &Server{Logger: discardLogger(), Handler: HandlerFunc(func(w *ResponseWriter, r *Request) {
			b, err := io.ReadAll(r.Body)
			if err != nil {
				return
			}
			got <- seen{r.Params, b}
			w.Write(b)
		})}
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			srv.ServeConn(server)
			close(done)
		}()
		c := &testClient{t: t, conn: client, br: bufio.NewReader(client)}
		req := encodeBegin(1, 1, 1)
		req = append(req, encodeStream(typeParams, 1, encodePairs(pairs), recSize, int(pad))...)
		req = append(req, encodeStream(typeStdin, 1, body, recSize, int(pad))...)
		for i := range 2 { // the second time on the kept connection
			sendErr := make(chan error, 1)
			go func() {
				_, err := client.Write(req)
				sendErr <- err
			}()
			resp := c.readResponse(1)
			s := recv(t, got, "handler")
			if !maps.Equal(s.params, want) {
				t.Fatalf("request %d: params %v, want %v", i, s.params, want)
			}
			if !bytes.Equal(s.body, body) || !bytes.Equal(resp.stdout, body) {
				t.Fatalf("request %d: body or output differs (%d, %d, want %d bytes)", i, len(s.body), len(resp.stdout), len(body))
			}
			if err := recv(t, sendErr, "send"); err != nil {
				t.Fatal(err)
			}
		}
		client.Close()
		recv(t, done, "ServeConn to return")
	})
}

func TestOutputStreamCheckRejectsBrokenFraming(t *testing.T) {
	// The fuzz oracle must itself be able to fail.
	tests := []struct {
		name   string
		stream []byte
	}{
		{"an unpadded record", []byte{1, typeStdout, 0, 1, 0, 3, 0, 0, 'a', 'b', 'c'}},
		{"data after the terminator", append(appendRecord(nil, typeStdout, 1, nil), appendRecord(nil, typeStdout, 1, []byte("x"))...)},
		{"END_REQUEST without terminator", appendEndRequest(nil, 1, 0, statusRequestComplete)},
		{"a STDIN record", appendRecord(nil, typeStdin, 1, nil)},
		{"a partial record", appendRecord(nil, typeStdout, 1, []byte("abc"))[:9]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if outputStreamError(tt.stream) == nil {
				t.Errorf("accepted")
			}
		})
	}
}
