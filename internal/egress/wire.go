package egress

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
)

// The wire protocol between a child and the proxy: one call per unix
// connection. The child writes a request (magic, a bounded header, then
// the body); the proxy answers with a code byte: a WAGI error code and a
// message, or 0 and the status, the headers and the body in chunks,
// ended by an empty chunk and a final code (0, or the error that cut the
// body short).

// Bounds of what a child may send. Everything is checked before anything
// is allocated by it.
const (
	MaxURL         = 8 << 10  // bytes of a URL
	MaxMethod      = 32       // bytes of a method
	MaxHeaderBytes = 64 << 10 // bytes of the request's header string (WAGI's "name:value\n" lines)
	MaxHeaders     = 100      // header lines
	MaxRequestBody = 16 << 20 // bytes of a request body (streamed through, never held by the manager)
	tokenLen       = 32       // hex characters of a token
	// maxRequestHeader bounds the framed request header.
	maxRequestHeader = 2 + tokenLen + 2 + MaxMethod + 2 + MaxURL + 4 + MaxHeaderBytes + 4 + 8
	// maxResponseHeader bounds the response header string the proxy
	// sends (it comes from upstream, bounded by the transport too).
	maxResponseHeader = 64 << 10
	// maxMessage bounds an error message.
	maxMessage = 1 << 10
	// chunkSize is the body chunk the proxy writes.
	chunkSize = 32 << 10
)

var magic = [4]byte{'W', 'X', 'H', '1'}

// WAGI's error codes (wasi-experimental-http's HttpError), the values the
// guest functions return.
const (
	CodeOK                    uint32 = 0
	CodeInvalidHandle         uint32 = 1
	CodeMemoryNotFound        uint32 = 2
	CodeMemoryAccessError     uint32 = 3
	CodeBufferTooSmall        uint32 = 4
	CodeHeaderNotFound        uint32 = 5
	CodeUTF8Error             uint32 = 6
	CodeDestinationNotAllowed uint32 = 7
	CodeInvalidMethod         uint32 = 8
	CodeInvalidEncoding       uint32 = 9
	CodeInvalidURL            uint32 = 10
	CodeRequestError          uint32 = 11
	CodeRuntimeError          uint32 = 12
	CodeTooManySessions       uint32 = 13
)

// Request is what a child asks for.
type Request struct {
	Token   string
	Method  string
	URL     string
	Headers string // WAGI's encoding: "name:value" lines
	Open    uint32 // response handles the guest holds (for http_max_concurrency)
	Body    []byte // child side; the proxy streams it instead
}

// Response is what the child gets back.
type Response struct {
	Status  uint16
	Headers string // WAGI's encoding, names in lower case
	Body    []byte
}

// Error is a refused or failed call: a WAGI code and why.
type Error struct {
	Code    uint32
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("outbound HTTP error %d: %s", e.Code, e.Message) }

// writeRequestHeader writes everything of r but its body.
func writeRequestHeader(w io.Writer, r *Request, bodyLen uint64) error {
	b := make([]byte, 0, 64+len(r.Method)+len(r.URL)+len(r.Headers))
	b = append(b, magic[:]...)
	b = binary.BigEndian.AppendUint32(b, 0) // length, set below
	b = appendStr16(b, r.Token)
	b = appendStr16(b, r.Method)
	b = appendStr16(b, r.URL)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Headers)))
	b = append(b, r.Headers...)
	b = binary.BigEndian.AppendUint32(b, r.Open)
	b = binary.BigEndian.AppendUint64(b, bodyLen)
	binary.BigEndian.PutUint32(b[4:8], uint32(len(b)-8))
	_, err := w.Write(b)
	return err
}

func appendStr16(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// errFrame is a request that is not one: the proxy closes the connection.
var errFrame = errors.New("malformed request frame")

// readRequestHeader reads a request header (not the body), checking every
// bound before allocating, and returns the body length.
func readRequestHeader(r *bufio.Reader, req *Request) (uint64, error) {
	var h [8]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, err
	}
	if [4]byte(h[:4]) != magic {
		return 0, fmt.Errorf("%w: bad magic", errFrame)
	}
	n := binary.BigEndian.Uint32(h[4:])
	if n > maxRequestHeader {
		return 0, fmt.Errorf("%w: header of %d bytes, over %d", errFrame, n, maxRequestHeader)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, err
	}
	d := dec{p: p}
	req.Token = d.str16(tokenLen)
	req.Method = d.str16(MaxMethod)
	req.URL = d.str16(MaxURL)
	req.Headers = d.str32(MaxHeaderBytes)
	req.Open = d.u32()
	body := d.u64()
	if d.err != nil {
		return 0, fmt.Errorf("%w: %v", errFrame, d.err)
	}
	if len(d.p) != 0 {
		return 0, fmt.Errorf("%w: %d bytes after the header", errFrame, len(d.p))
	}
	return body, nil
}

type dec struct {
	p   []byte
	err error
}

func (d *dec) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.p) {
		d.err = errors.New("short")
		return nil
	}
	b := d.p[:n]
	d.p = d.p[n:]
	return b
}

func (d *dec) str16(max int) string {
	b := d.take(2)
	if b == nil {
		return ""
	}
	n := int(binary.BigEndian.Uint16(b))
	if n > max {
		d.err = fmt.Errorf("field of %d bytes, over %d", n, max)
		return ""
	}
	return string(d.take(n))
}

func (d *dec) str32(max int) string {
	b := d.take(4)
	if b == nil {
		return ""
	}
	n := binary.BigEndian.Uint32(b)
	if n > uint32(max) {
		d.err = fmt.Errorf("field of %d bytes, over %d", n, max)
		return ""
	}
	return string(d.take(int(n)))
}

func (d *dec) u32() uint32 {
	if b := d.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (d *dec) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// writeError answers a refused or failed call.
func writeError(w io.Writer, code uint32, msg string) error {
	if len(msg) > maxMessage {
		msg = msg[:maxMessage]
	}
	b := []byte{byte(code)}
	b = appendStr16(b, msg)
	_, err := w.Write(b)
	return err
}

// writeResponseHeader starts a successful answer.
func writeResponseHeader(w io.Writer, status uint16, headers string) error {
	b := []byte{0}
	b = binary.BigEndian.AppendUint16(b, status)
	b = binary.BigEndian.AppendUint32(b, uint32(len(headers)))
	b = append(b, headers...)
	_, err := w.Write(b)
	return err
}

// Call makes one outbound request through the proxy at addr ("unix:@name")
// and reads the whole answer. maxBody bounds the body the caller accepts
// (the proxy enforces the configured cap; this only protects the caller
// from a broken proxy). A refusal or failure is an *Error.
func Call(addr string, r *Request, maxBody int64) (*Response, error) {
	name, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		return nil, &Error{CodeRuntimeError, "no outbound HTTP proxy"}
	}
	c, err := net.Dial("unix", name)
	if err != nil {
		return nil, &Error{CodeRuntimeError, "outbound HTTP proxy: " + err.Error()}
	}
	defer c.Close()
	werr := writeRequestHeader(c, r, uint64(len(r.Body)))
	if werr == nil && len(r.Body) > 0 {
		_, werr = c.Write(r.Body)
	}
	// A refusal may come before the body was read (the proxy then closes
	// without reading it): the answer is read even if writing failed.
	br := bufio.NewReaderSize(c, 4<<10)
	resp, err := readResponse(br, maxBody)
	if err != nil && werr != nil {
		var e *Error
		if !errors.As(err, &e) {
			return nil, &Error{CodeRuntimeError, "outbound HTTP proxy: " + werr.Error()}
		}
	}
	return resp, err
}

func readResponse(r *bufio.Reader, maxBody int64) (*Response, error) {
	proto := func(err error) error {
		return &Error{CodeRuntimeError, "outbound HTTP proxy: " + err.Error()}
	}
	code, err := r.ReadByte()
	if err != nil {
		return nil, proto(err)
	}
	if code != 0 {
		var n [2]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return nil, proto(err)
		}
		msg := make([]byte, min(int(binary.BigEndian.Uint16(n[:])), maxMessage))
		if _, err := io.ReadFull(r, msg); err != nil {
			return nil, proto(err)
		}
		return nil, &Error{uint32(code), string(msg)}
	}
	var h [6]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, proto(err)
	}
	hl := binary.BigEndian.Uint32(h[2:])
	if hl > maxResponseHeader {
		return nil, proto(fmt.Errorf("response headers of %d bytes", hl))
	}
	hs := make([]byte, hl)
	if _, err := io.ReadFull(r, hs); err != nil {
		return nil, proto(err)
	}
	resp := &Response{Status: binary.BigEndian.Uint16(h[:2]), Headers: string(hs)}
	for {
		var n [4]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return nil, proto(err)
		}
		k := int64(binary.BigEndian.Uint32(n[:]))
		if k == 0 {
			break
		}
		if k > chunkSize || int64(len(resp.Body))+k > maxBody {
			return nil, proto(errors.New("response body over the caller's bound"))
		}
		at := len(resp.Body)
		resp.Body = append(resp.Body, make([]byte, k)...)
		if _, err := io.ReadFull(r, resp.Body[at:]); err != nil {
			return nil, proto(err)
		}
	}
	// The body's end: 0, or why it was cut short.
	code, err = r.ReadByte()
	if err != nil {
		return nil, proto(err)
	}
	if code != 0 {
		var n [2]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return nil, proto(err)
		}
		msg := make([]byte, min(int(binary.BigEndian.Uint16(n[:])), maxMessage))
		if _, err := io.ReadFull(r, msg); err != nil {
			return nil, proto(err)
		}
		return nil, &Error{uint32(code), string(msg)}
	}
	return resp, nil
}
