package fleetbudget

import (
	"errors"
	"fmt"
	"net"
)

// The Redis client allocates what a reply's headers announce before it
// reads the bytes: "*9223372036854775807\r\n" makes it call make() with
// that length (a panic), and "*100000000\r\n" makes it allocate gigabytes.
// guardConn sits between the client and the socket and checks every RESP
// header on its way in, so a hostile or broken store costs at most
// maxReplyCost bytes of allocation per command and never a crash.
const (
	maxLine      = 4 << 10 // a simple line (status, error, number, header)
	maxBulk      = 64 << 10
	maxElems     = 4096    // elements of one array, set or map
	maxReplyCost = 1 << 20 // allocation the headers of one command's reply may cause
	elemCost     = 16      // an interface{} slot
)

// errHostileReply is returned by a guarded read once the store's reply
// breaks a bound; the client then drops the connection.
var errHostileReply = errors.New("store reply exceeds the bounds wagi-fcgi accepts")

// guardConn is a net.Conn whose reads are checked by a respGuard. A write
// (a new command) starts a new reply budget.
type guardConn struct {
	net.Conn
	g respGuard
}

func guard(c net.Conn) net.Conn { return &guardConn{Conn: c} }

func (c *guardConn) Write(p []byte) (int, error) {
	c.g.cost = 0
	return c.Conn.Write(p)
}

func (c *guardConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		if gerr := c.g.scan(p[:n]); gerr != nil {
			c.Conn.Close()
			return 0, gerr
		}
	}
	return n, err
}

// respGuard follows a RESP2/RESP3 byte stream frame by frame. Nesting needs
// no tracking: an aggregate's elements are simply the frames after its
// header, each checked on its own.
type respGuard struct {
	state   int   // where in a frame the next byte is
	kind    byte  // the frame's type byte
	line    int   // bytes of the current line so far
	num     int64 // the header's number so far
	neg     bool
	digits  int
	payload int64 // bulk bytes (and their CRLF) still to pass
	cost    int64 // allocation caused by this reply's headers so far
}

const (
	atType = iota
	inLine
	inNumber
	atLF
	inPayload
)

func (g *respGuard) scan(b []byte) error {
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch g.state {
		case atType:
			g.kind, g.line, g.num, g.neg, g.digits = c, 0, 0, false, 0
			switch c {
			case '+', '-', ':', '_', ',', '#', '(':
				g.state = inLine
			case '$', '!', '=', '*', '%', '~', '>', '|':
				g.state = inNumber
			default:
				return fmt.Errorf("%w: unknown frame type %q", errHostileReply, c)
			}
		case inLine:
			if g.line++; g.line > maxLine {
				return fmt.Errorf("%w: a line over %d bytes", errHostileReply, maxLine)
			}
			if c == '\r' {
				g.state = atLF
			}
		case inNumber:
			switch {
			case c == '-' && g.digits == 0 && !g.neg:
				g.neg = true
			case '0' <= c && c <= '9':
				if g.digits++; g.digits > 10 {
					return fmt.Errorf("%w: a length of more than 10 digits", errHostileReply)
				}
				g.num = g.num*10 + int64(c-'0')
			case c == '\r' && g.digits > 0:
				if err := g.header(); err != nil {
					return err
				}
				g.state = atLF
			default:
				return fmt.Errorf("%w: a malformed length", errHostileReply)
			}
		case atLF:
			if c != '\n' {
				return fmt.Errorf("%w: CR without LF", errHostileReply)
			}
			g.state = atType
			if g.payload > 0 {
				g.state = inPayload
			}
		case inPayload:
			skip := min(g.payload, int64(len(b)-i))
			g.payload -= skip
			i += int(skip) - 1
			if g.payload == 0 {
				g.state = atType // the CRLF was counted in the payload
			}
		}
	}
	return nil
}

// header checks a length header that has just ended.
func (g *respGuard) header() error {
	if g.neg {
		if g.num != 1 {
			return fmt.Errorf("%w: a negative length", errHostileReply)
		}
		return nil // a RESP2 null
	}
	switch g.kind {
	case '$', '!', '=':
		if g.num > maxBulk {
			return fmt.Errorf("%w: a %d-byte string (max %d)", errHostileReply, g.num, maxBulk)
		}
		g.cost += g.num
		g.payload = g.num + 2
	case '%', '|':
		if g.num > maxElems/2 {
			return fmt.Errorf("%w: a map of %d pairs", errHostileReply, g.num)
		}
		g.cost += 2 * g.num * elemCost
	default:
		if g.num > maxElems {
			return fmt.Errorf("%w: an array of %d elements (max %d)", errHostileReply, g.num, maxElems)
		}
		g.cost += g.num * elemCost
	}
	if g.cost > maxReplyCost {
		return fmt.Errorf("%w: a reply that would allocate more than %d bytes", errHostileReply, maxReplyCost)
	}
	return nil
}
