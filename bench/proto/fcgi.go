package main

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The few FastCGI record types the prototype speaks (it answers what
// nginx sends for a GET; the product's parser is package fcgi).
const (
	typeBeginRequest = 1
	typeEndRequest   = 3
	typeParams       = 4
	typeStdin        = 5
	typeStdout       = 6
	flagKeepConn     = 1
)

// request is one FastCGI request, as read off a connection.
type request struct {
	id     uint16
	keep   bool
	params []byte // raw name-value pairs, decoded by the guest runner
	body   []byte
}

// parser assembles a request from whatever bytes arrive; it keeps no
// state between requests, because nginx sends the next request on a
// connection only after the previous one's END_REQUEST.
type parser struct {
	buf          []byte
	req          request
	paramsClosed bool
	stdinClosed  bool
}

func (p *parser) reset() {
	p.buf = p.buf[:0]
	p.req = request{params: p.req.params[:0], body: p.req.body[:0]}
	p.paramsClosed, p.stdinClosed = false, false
}

// feed parses the records in p.buf; it reports whether a whole request
// is in, and how many bytes past it were left over (0 with nginx).
func (p *parser) feed() (done bool, rest int, err error) {
	b := p.buf
	for len(b) >= 8 {
		if b[0] != 1 {
			return false, 0, fmt.Errorf("fcgi version %d", b[0])
		}
		n := int(binary.BigEndian.Uint16(b[4:6]))
		total := 8 + n + int(b[6])
		if len(b) < total {
			break
		}
		content := b[8 : 8+n]
		switch b[1] {
		case typeBeginRequest:
			if n < 8 {
				return false, 0, errors.New("short BEGIN_REQUEST")
			}
			p.req.id = binary.BigEndian.Uint16(b[2:4])
			p.req.keep = content[2]&flagKeepConn != 0
		case typeParams:
			if n == 0 {
				p.paramsClosed = true
			}
			p.req.params = append(p.req.params, content...)
		case typeStdin:
			if n == 0 {
				p.stdinClosed = true
			}
			p.req.body = append(p.req.body, content...)
		}
		b = b[total:]
		if p.paramsClosed && p.stdinClosed {
			return true, len(b), nil
		}
	}
	// Keep the unparsed tail at the front of the buffer.
	m := copy(p.buf, b)
	p.buf = p.buf[:m]
	return false, 0, nil
}

// eachParam calls f for every name-value pair.
func eachParam(b []byte, f func(k, v string)) {
	for len(b) > 0 {
		var kl, vl int
		var ok bool
		if kl, b, ok = pairLen(b); !ok {
			return
		}
		if vl, b, ok = pairLen(b); !ok || len(b) < kl+vl {
			return
		}
		f(string(b[:kl]), string(b[kl:kl+vl]))
		b = b[kl+vl:]
	}
}

func pairLen(b []byte) (int, []byte, bool) {
	if len(b) == 0 {
		return 0, b, false
	}
	if b[0]&0x80 == 0 {
		return int(b[0]), b[1:], true
	}
	if len(b) < 4 {
		return 0, b, false
	}
	return int(binary.BigEndian.Uint32(b) & 0x7fffffff), b[4:], true
}

// appendResponse appends stdout records carrying out, an empty stdout
// record and END_REQUEST: the whole answer, for one write(2).
func appendResponse(dst []byte, id uint16, out []byte) []byte {
	for len(out) > 0 {
		n := min(len(out), 65528)
		dst = appendHeader(dst, typeStdout, id, n)
		dst = append(dst, out[:n]...)
		out = out[n:]
	}
	dst = appendHeader(dst, typeStdout, id, 0)
	dst = appendHeader(dst, typeEndRequest, id, 8)
	return append(dst, 0, 0, 0, 0, 0, 0, 0, 0)
}

func appendHeader(dst []byte, t byte, id uint16, n int) []byte {
	return append(dst, 1, t, byte(id>>8), byte(id), byte(n>>8), byte(n), 0, 0)
}
