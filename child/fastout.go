package child

import (
	"bufio"
	"bytes"
	"errors"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/fcgi"
	"github.com/wagi-fcgi/wagi-fcgi/internal/scoreboard"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
)

// fastMaxHeader bounds a module's CGI header block, as the manager's.
const fastMaxHeader = 64 << 10

var errInvalidOutput = errors.New("invalid CGI response")

// fastOut is a fast request's stdout: it holds the output until the CGI
// header is parsed and fastCommit bytes of body are in (or the module
// ends), then writes the filtered header and the body to the web server
// as STDOUT records, and streams the rest.
type fastOut struct {
	fd        int
	id        uint16
	max       int64
	slot      *scoreboard.Slot
	pending   []byte
	head      *wagi.Response
	bodyStart int
	committed bool
	total     int64
	sent      int64
	status    int
	overflow  bool
	invalid   bool
	dropped   bool
	err       error // the web server's connection failed
	rec       []byte
	br        *bufio.Reader
}

func (o *fastOut) reset(fd int, id uint16, max int64, slot *scoreboard.Slot) {
	*o = fastOut{fd: fd, id: id, max: max, slot: slot, pending: o.pending[:0], rec: o.rec[:0], br: o.br}
	if cap(o.pending) > 1<<20 {
		o.pending = nil
	}
}

func (o *fastOut) Write(p []byte) (int, error) {
	if o.overflow || o.invalid || o.err != nil {
		return 0, errOutputLimit
	}
	o.total += int64(len(p))
	if o.max > 0 && o.total > o.max {
		o.overflow = true
		o.askKill(scoreboard.AskMaxOutput)
	}
	if o.committed {
		o.rec = fcgi.AppendStdout(o.rec[:0], o.id, p)
		if err := writeAll(o.fd, o.rec); err != nil {
			o.err = err
			return 0, err
		}
		o.sent += int64(len(p))
		return len(p), nil
	}
	o.pending = append(o.pending, p...)
	if o.head == nil {
		if err := o.parse(); err != nil {
			return 0, err
		}
	}
	if o.head != nil && len(o.pending)-o.bodyStart >= fastCommit {
		if err := o.commit(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// parse reads the header block once it is complete.
func (o *fastOut) parse() error {
	end := headerEnd(o.pending)
	if end < 0 {
		if len(o.pending) > fastMaxHeader {
			o.invalid = true
			o.askKill(scoreboard.AskInvalid)
		}
		return nil
	}
	if o.br == nil {
		o.br = bufio.NewReaderSize(nil, 4096)
	}
	o.br.Reset(bytes.NewReader(o.pending[:end]))
	h, err := wagi.ReadResponseHeader(o.br, fastMaxHeader)
	if err != nil {
		o.invalid = true
		o.askKill(scoreboard.AskInvalid)
	}
	o.head, o.bodyStart = h, end
	o.dropped = len(h.Dropped) > 0
	return nil
}

// commit sends the header and what is held of the body.
func (o *fastOut) commit() error { return o.commitEnd(false) }

// commitEnd is commit, with END_REQUEST in the same write when end: a
// small answer reaches the web server whole or not at all, so a kill at
// any moment leaves either a request the manager answers or one answered.
func (o *fastOut) commitEnd(end bool) error {
	if o.head == nil {
		if err := o.parse(); err != nil {
			return err
		}
		if o.head == nil {
			o.invalid = true
			return errInvalidOutput
		}
	}
	o.committed = true
	o.status = o.head.Status
	if !end {
		// Streamed from here: a kill cuts the stream. (A whole answer in
		// one write is marked answered after it: a kill before it is
		// answered by the manager.)
		o.slot.Committed()
	}
	out := o.head.AppendHeader(nil)
	out = append(out, o.pending[o.bodyStart:]...)
	if end {
		o.rec = fcgi.AppendResponse(o.rec[:0], o.id, out)
	} else {
		o.rec = fcgi.AppendStdout(o.rec[:0], o.id, out)
	}
	o.sent = int64(len(o.pending) - o.bodyStart)
	o.pending = o.pending[:0]
	if err := writeAll(o.fd, o.rec); err != nil {
		o.err = err
		return err
	}
	if end {
		o.slot.Answered()
	}
	return nil
}

// askKill ends the request the way the manager's own path does: the
// manager kills this child for the limit (answering 502, or cutting the
// stream), so the child waits for its SIGKILL here.
func (o *fastOut) askKill(a scoreboard.Ask) {
	o.slot.AskKill(a)
	for {
		time.Sleep(time.Hour)
	}
}

// headerEnd is the offset just past the empty line that ends the header
// block in p, or -1.
func headerEnd(p []byte) int {
	for i := 0; ; {
		nl := bytes.IndexByte(p[i:], '\n')
		if nl < 0 {
			return -1
		}
		line := p[i : i+nl]
		if len(line) == 0 || (len(line) == 1 && line[0] == '\r') {
			return i + nl + 1
		}
		i += nl + 1
	}
}
