package fcgi

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
)

var benchResponse = []byte("Status: 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body>Hello, world!</body></html>\n")

// benchClient sends a pre-encoded request and reads the response without
// allocating.
type benchClient struct {
	conn net.Conn
	br   *bufio.Reader
	buf  []byte
}

func (c *benchClient) roundTrip(b testing.TB, req []byte) {
	if _, err := c.conn.Write(req); err != nil {
		b.Fatal(err)
	}
	var h [8]byte
	for {
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			b.Fatal(err)
		}
		n := int(binary.BigEndian.Uint16(h[4:6])) + int(h[6])
		if _, err := io.ReadFull(c.br, c.buf[:n]); err != nil {
			b.Fatal(err)
		}
		if h[1] == typeEndRequest {
			return
		}
	}
}

func startBenchServer(b *testing.B, h Handler) string {
	dir := b.TempDir()
	addr := dir + "/s"
	l, err := net.Listen("unix", addr)
	if err != nil {
		b.Fatal(err)
	}
	srv := &Server{Handler: h, Logger: discardLogger()}
	go srv.Serve(l)
	b.Cleanup(func() { srv.Shutdown(context.Background()) })
	return addr
}

func dialBench(b *testing.B, addr string) *benchClient {
	conn, err := net.Dial("unix", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return &benchClient{conn: conn, br: bufio.NewReaderSize(conn, 64<<10), buf: make([]byte, 1<<17)}
}

// BenchmarkRequestRoundTrip measures one small nginx-style request and
// response on a kept unix-socket connection.
func BenchmarkRequestRoundTrip(b *testing.B) {
	addr := startBenchServer(b, HandlerFunc(func(w *ResponseWriter, r *Request) {
		w.Write(benchResponse)
	}))
	req := encodeRequest(1, true, nginxParams("/bench?x=1"), nil)
	b.Run("serial", func(b *testing.B) {
		c := dialBench(b, addr)
		b.ReportAllocs()
		b.SetBytes(int64(len(req)))
		for b.Loop() {
			c.roundTrip(b, req)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(req)))
		b.RunParallel(func(pb *testing.PB) {
			c := dialBench(b, addr)
			for pb.Next() {
				c.roundTrip(b, req)
			}
		})
	})
	b.Run("with a 64 KiB body and 256 KiB response", func(b *testing.B) {
		big := make([]byte, 256<<10)
		addr := startBenchServer(b, HandlerFunc(func(w *ResponseWriter, r *Request) {
			io.Copy(io.Discard, r.Body)
			w.Write(benchResponse)
			w.Write(big)
		}))
		req := encodeRequest(1, true, nginxParams("/bench"), make([]byte, 64<<10))
		c := dialBench(b, addr)
		b.ReportAllocs()
		b.SetBytes(int64(len(req) + len(big)))
		for b.Loop() {
			c.roundTrip(b, req)
		}
	})
}

// BenchmarkParamsDecode decodes the params nginx sends for a typical request.
func BenchmarkParamsDecode(b *testing.B) {
	raw := encodePairs(nginxParams("/index.wasm?page=1"))
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := decodeParams(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// discardConn is a net.Conn whose writes vanish.
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkRecordEncode measures output framing: a small response through
// the ResponseWriter (records, terminators, END_REQUEST) and a bare record.
func BenchmarkRecordEncode(b *testing.B) {
	b.Run("small response", func(b *testing.B) {
		c := &conn{srv: &Server{}, rwc: discardConn{}}
		ctx := context.Background()
		var w ResponseWriter
		b.ReportAllocs()
		b.SetBytes(int64(len(benchResponse)))
		for b.Loop() {
			w = ResponseWriter{}
			w.init(c, ctx, 1)
			w.acquire()
			w.Write(benchResponse)
			w.finalize(false)
			c.write(w.out)
			w.release()
		}
	})
	b.Run("1 MiB response", func(b *testing.B) {
		c := &conn{srv: &Server{}, rwc: discardConn{}}
		ctx := context.Background()
		payload := make([]byte, 1<<20)
		var w ResponseWriter
		b.ReportAllocs()
		b.SetBytes(int64(len(payload)))
		for b.Loop() {
			w = ResponseWriter{}
			w.init(c, ctx, 1)
			w.acquire()
			w.Write(payload)
			w.finalize(false)
			c.write(w.out)
			w.release()
		}
	})
	b.Run("bare record", func(b *testing.B) {
		buf := make([]byte, 0, 256)
		b.ReportAllocs()
		b.SetBytes(int64(len(benchResponse)))
		for b.Loop() {
			buf = appendRecord(buf[:0], typeStdout, 1, benchResponse)
		}
	})
}
