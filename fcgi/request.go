package fcgi

import (
	"context"
	"errors"
	"io"
	"net"
)

// A Handler serves one FastCGI request.
//
// ServeFCGI runs in its own goroutine. Meanwhile the connection's reader
// keeps reading the socket, so it notices FCGI_ABORT_REQUEST and a closed
// connection (see Request.Context) and answers FCGI_GET_VALUES. When
// ServeFCGI returns, buffered output is flushed and the request is ended with
// FCGI_END_REQUEST; w and r must not be used afterwards.
type Handler interface {
	ServeFCGI(w *ResponseWriter, r *Request)
}

// HandlerFunc adapts an ordinary function to a Handler.
type HandlerFunc func(w *ResponseWriter, r *Request)

// ServeFCGI calls f(w, r).
func (f HandlerFunc) ServeFCGI(w *ResponseWriter, r *Request) { f(w, r) }

var (
	// ErrServerClosed is returned by Serve after Shutdown or Close, and is
	// the cancellation cause of request contexts after Close.
	ErrServerClosed = errors.New("fcgi: server closed")

	// ErrRequestAborted is the cancellation cause of a request's context
	// (and the error of Body.Read and ResponseWriter.Write) after the web
	// server sent FCGI_ABORT_REQUEST for it.
	ErrRequestAborted = errors.New("fcgi: request aborted by web server")

	// ErrConnClosed is the cancellation cause of a request's context (and
	// the error of Body.Read and ResponseWriter.Write) when its connection
	// hit EOF, was reset, timed out or broke the protocol while the request
	// ran. It may be wrapped together with the underlying error.
	// nginx and Apache signal a client abort this way.
	ErrConnClosed = errors.New("fcgi: connection to web server closed")

	// ErrReadTimeout is wrapped with ErrConnClosed when the connection was
	// closed because the request's input did not arrive within
	// Server.RequestReadTimeout.
	ErrReadTimeout = errors.New("fcgi: request input timed out")

	errWriteAfterEnd = errors.New("fcgi: write after the handler returned")
)

// A Request is one FastCGI request with the RESPONDER role.
type Request struct {
	// ID is the FastCGI request id (nginx and Apache always use 1). It is
	// echoed in every response record.
	ID uint16

	// KeepConn reports whether the web server set FCGI_KEEP_CONN. If it
	// did not, the connection is closed after the response.
	KeepConn bool

	// Params holds all FCGI_PARAMS name-value pairs (the CGI environment).
	// If a name is repeated, the last value wins. Empty values are kept:
	// nginx sends CONTENT_TYPE and CONTENT_LENGTH as "" when absent.
	Params map[string]string

	// Body is the FCGI_STDIN stream. It delivers data as it arrives and
	// returns io.EOF at the empty STDIN record; read it to EOF rather than
	// trusting CONTENT_LENGTH (Apache streams chunked bodies without one).
	// After the request is canceled, Read returns the cancellation cause.
	// Unread data is discarded when the handler returns.
	Body io.Reader

	ctx context.Context
}

// Context returns the request's context. It is canceled when the web server
// sends FCGI_ABORT_REQUEST for this request (cause ErrRequestAborted), when
// the connection is closed, reaches EOF or breaks the protocol while the
// request runs (cause wraps ErrConnClosed), and when the server is closed
// or its BaseContext is canceled. Use context.Cause to tell these apart.
func (r *Request) Context() context.Context {
	if r.ctx == nil {
		return context.Background()
	}
	return r.ctx
}

// Param returns the value of the named parameter, or "" if it is absent.
func (r *Request) Param(name string) string { return r.Params[name] }

// outReserve is room kept free at the end of the output buffer for the
// padding of the open record (7) plus the STDOUT and STDERR terminators and
// END_REQUEST (32), so ending a request never needs another write.
const outReserve = 40

// outBufSize fits one full maxChunk record plus the reserve.
const outBufSize = headerLen + maxChunk + outReserve

// directBatch is the number of full records one vectored write carries.
const directBatch = 32

// A ResponseWriter writes the response of one request as FCGI_STDOUT (and
// FCGI_STDERR) records. Output is buffered: a small response leaves in a
// single write together with the stream terminators and FCGI_END_REQUEST.
// Use Flush to stream. A ResponseWriter must not be used concurrently, nor
// after the handler returned.
type ResponseWriter struct {
	c   *conn
	ctx context.Context
	id  uint16

	bufp *[]byte // pooled backing of out
	out  []byte  // complete records not yet written, plus the open one
	open int     // offset of the open STDOUT record's header in out, or -1

	appStatus  uint32
	abortConn  bool // end without terminators: see Abort
	stderrUsed bool
	sent       bool // something reached the socket
	done       bool
	stderr     stderrWriter
	vec        *vecState // lazily allocated for large writes
}

// vecState holds what a vectored write of full records needs.
type vecState struct {
	hdrs [directBatch][headerLen]byte
	iov  [][]byte
	bufs net.Buffers
}

func (w *ResponseWriter) init(c *conn, ctx context.Context, id uint16) {
	w.c, w.ctx, w.id, w.open = c, ctx, id, -1
	w.stderr.w = w
}

// acquire takes an output buffer from the server's pool.
func (w *ResponseWriter) acquire() {
	if w.bufp != nil {
		return
	}
	if v, ok := w.c.srv.outPool.Get().(*[]byte); ok {
		w.bufp = v
	} else {
		b := make([]byte, 0, outBufSize)
		w.bufp = &b
	}
	w.out = (*w.bufp)[:0]
	w.open = -1
}

// release returns the output buffer to the pool.
func (w *ResponseWriter) release() {
	if w.bufp == nil {
		return
	}
	if cap(w.out) == outBufSize { // not grown; keep pool entries uniform
		*w.bufp = w.out[:0]
		w.c.srv.outPool.Put(w.bufp)
	}
	w.bufp, w.out = nil, nil
}

func (w *ResponseWriter) writable() error {
	if w.done {
		return errWriteAfterEnd
	}
	if w.ctx.Err() != nil {
		return context.Cause(w.ctx)
	}
	return nil
}

// Write appends p to the FCGI_STDOUT stream. p is raw CGI output: header
// lines ("Status: 200 OK\r\nContent-Type: text/html\r\n\r\n") then the body.
// Output is split into records of at most 65528 bytes, padded to 8 bytes.
// Write fails once the request was aborted or its connection closed.
func (w *ResponseWriter) Write(p []byte) (int, error) {
	if err := w.writable(); err != nil {
		return 0, err
	}
	n := 0
	if len(p) >= maxChunk {
		k, err := w.writeDirect(p)
		n += k
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	for len(p) > 0 {
		if w.open < 0 {
			if cap(w.out)-len(w.out) < headerLen+outReserve+1 {
				if err := w.flushOut(); err != nil {
					return n, err
				}
			}
			w.open = len(w.out)
			w.out = append(w.out, zeros...) // header, filled in by closeRecord
		}
		room := maxChunk - (len(w.out) - w.open - headerLen)
		if free := cap(w.out) - len(w.out) - outReserve; free < room {
			room = free
		}
		if room <= 0 {
			if err := w.flushOut(); err != nil {
				return n, err
			}
			continue
		}
		k := min(room, len(p))
		w.out = append(w.out, p[:k]...)
		n += k
		p = p[k:]
	}
	return n, nil
}

// writeDirect sends the full maxChunk-sized records at the start of p
// straight from p with vectored writes, preceded by any buffered output.
// It returns how many bytes of p it consumed.
func (w *ResponseWriter) writeDirect(p []byte) (int, error) {
	w.closeRecord()
	if w.vec == nil {
		w.vec = &vecState{iov: make([][]byte, 0, 2*directBatch+1)}
	}
	v := w.vec
	total := 0
	for len(p) >= maxChunk {
		iov := v.iov[:0]
		if len(w.out) > 0 {
			iov = append(iov, w.out)
		}
		k := 0
		for i := 0; i < directBatch && len(p)-k >= maxChunk; i++ {
			putHeader(v.hdrs[i][:], typeStdout, w.id, maxChunk, 0)
			iov = append(iov, v.hdrs[i][:], p[k:k+maxChunk])
			k += maxChunk
		}
		v.bufs = iov
		err := w.c.writeBuffers(&v.bufs)
		clear(iov) // don't keep the caller's memory alive
		w.out = w.out[:0]
		w.sent = true
		if err != nil {
			return total, err
		}
		total += k
		p = p[k:]
	}
	return total, nil
}

// closeRecord completes the open STDOUT record, if any: it fills in the
// header and appends the padding. An open record without content is removed.
func (w *ResponseWriter) closeRecord() {
	if w.open < 0 {
		return
	}
	n := len(w.out) - w.open - headerLen
	if n == 0 {
		w.out = w.out[:w.open]
	} else {
		pad := padding(n)
		putHeader(w.out[w.open:], typeStdout, w.id, n, pad)
		w.out = append(w.out, zeros[:pad]...)
	}
	w.open = -1
}

// flushOut writes all buffered records to the connection.
func (w *ResponseWriter) flushOut() error {
	w.closeRecord()
	if len(w.out) == 0 {
		return nil
	}
	err := w.c.write(w.out)
	w.out = w.out[:0]
	w.sent = true
	return err
}

// Flush writes buffered output to the connection now.
func (w *ResponseWriter) Flush() error {
	if err := w.writable(); err != nil {
		return err
	}
	return w.flushOut()
}

// Stderr returns a writer for the FCGI_STDERR stream; the web server logs
// it (nginx: one error-log line per record). Each Write becomes one record
// (or several, if longer than 65528 bytes), so write one message per call.
// Like stdout, stderr is buffered until Flush or the end of the request.
func (w *ResponseWriter) Stderr() io.Writer {
	return &w.stderr
}

type stderrWriter struct{ w *ResponseWriter }

func (s *stderrWriter) Write(p []byte) (int, error) { return s.w.writeStderr(p) }

func (w *ResponseWriter) writeStderr(p []byte) (int, error) {
	if err := w.writable(); err != nil {
		return 0, err
	}
	w.closeRecord()
	n := 0
	for len(p) > 0 {
		k := min(len(p), maxChunk)
		if cap(w.out)-len(w.out) < headerLen+k+outReserve {
			if err := w.flushOut(); err != nil {
				return n, err
			}
		}
		w.out = appendRecord(w.out, typeStderr, w.id, p[:k])
		w.stderrUsed = true
		n += k
		p = p[k:]
	}
	return n, nil
}

// SetAppStatus sets the appStatus reported in FCGI_END_REQUEST (default 0).
// nginx and Apache ignore it; it is for logs and other clients.
func (w *ResponseWriter) SetAppStatus(code int) { w.appStatus = uint32(code) }

// Abort makes the end of the handler cut the response short instead of
// completing it: output already written is sent, then the connection is
// closed without the stream terminators and FCGI_END_REQUEST. The web server
// then treats the response as truncated (nginx logs "upstream prematurely
// closed connection" and does not end a chunked response cleanly), so a
// client cannot take a response that failed after it was committed for a
// complete one.
func (w *ResponseWriter) Abort() { w.abortConn = true }

// discardOutput drops buffered output that was not written yet.
func (w *ResponseWriter) discardOutput() {
	w.out = w.out[:0]
	w.open = -1
}

// finalize appends the stream terminators and END_REQUEST to the buffered
// output. If the request was canceled, unsent output is dropped first.
func (w *ResponseWriter) finalize(canceled bool) {
	w.acquire()
	if canceled {
		w.discardOutput()
	} else {
		w.closeRecord()
	}
	var term [headerLen]byte
	putHeader(term[:], typeStdout, w.id, 0, 0)
	w.out = append(w.out, term[:]...)
	if w.stderrUsed {
		putHeader(term[:], typeStderr, w.id, 0, 0)
		w.out = append(w.out, term[:]...)
	}
	w.out = appendEndRequest(w.out, w.id, w.appStatus, statusRequestComplete)
	w.done = true
}
