package manager

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"

	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
	"github.com/wagi-fcgi/wagi-fcgi/manager/internal/runner"
)

// Output buffering: a module's response is checked (headers parsed and
// validated) before anything reaches the client, and held back until the
// module ends or its body passes commitSize. Until then any failure still
// becomes a clean 5xx; after it, the response streams and a failure can only
// cut it short.
const (
	commitSize     = 64 << 10
	maxHeaderBytes = 64 << 10
)

// flushWriter is what a response is written to: the FastCGI stream.
type flushWriter interface {
	io.Writer
	Flush() error
}

// cgiResponse turns a module's stdout into the response sent to the web
// server.
type cgiResponse struct {
	w         flushWriter
	pending   []byte // output not yet sent
	scanned   int    // how far pending has been searched for the header end
	bodyStart int    // offset of the body in pending once headers are parsed
	head      *wagi.Response
	committed bool
	total     int64 // stdout bytes from the module
	sent      int64 // body bytes written to w
	status    int
	log       *slog.Logger // for headers dropped from the output; may be nil
}

// invalidOutputError means the module's output is not a valid CGI response:
// the runner kills the child for it.
type invalidOutputError = runner.InvalidOutputError

// write takes a chunk of the module's stdout.
func (r *cgiResponse) write(p []byte) error {
	r.total += int64(len(p))
	if r.committed {
		n, err := r.w.Write(p)
		r.sent += int64(n)
		if err == nil {
			err = r.w.Flush()
		}
		return err
	}
	r.pending = append(r.pending, p...)
	if r.head == nil {
		end := r.headerEnd()
		if end < 0 {
			if len(r.pending) > maxHeaderBytes {
				return &invalidOutputError{Err: fmt.Errorf("no end of headers within %d bytes", maxHeaderBytes)}
			}
			return nil
		}
		h, err := wagi.ReadResponseHeader(bufio.NewReader(bytes.NewReader(r.pending[:end])), maxHeaderBytes)
		if err != nil {
			return &invalidOutputError{Err: err}
		}
		r.head = h
		r.bodyStart = end
		if len(h.Dropped) > 0 && r.log != nil {
			r.log.Warn("module output: headers the web server would act on were dropped", "headers", h.Dropped)
		}
	}
	if len(r.pending)-r.bodyStart >= commitSize {
		return r.commit(true)
	}
	return nil
}

// headerEnd returns the offset just past the first empty line, or -1.
func (r *cgiResponse) headerEnd() int {
	p := r.pending
	i := r.scanned
	for {
		nl := bytes.IndexByte(p[i:], '\n')
		if nl < 0 {
			r.scanned = i
			return -1
		}
		line := p[i : i+nl]
		if len(line) == 0 || (len(line) == 1 && line[0] == '\r') {
			return i + nl + 1
		}
		i += nl + 1
	}
}

// commit sends the headers and the buffered body.
func (r *cgiResponse) commit(flush bool) error {
	r.committed = true
	r.status = r.head.Status
	if _, err := r.head.WriteTo(r.w); err != nil {
		return err
	}
	n, err := r.w.Write(r.pending[r.bodyStart:])
	r.sent += int64(n)
	r.pending = nil
	if err == nil && flush {
		err = r.w.Flush()
	}
	return err
}

// finish is called when the module ended successfully.
func (r *cgiResponse) finish() error {
	if r.committed {
		return nil
	}
	if r.head == nil {
		if len(r.pending) == 0 {
			return &invalidOutputError{Err: fmt.Errorf("no output")}
		}
		return &invalidOutputError{Err: fmt.Errorf("no empty line after the headers")}
	}
	return r.commit(false)
}
