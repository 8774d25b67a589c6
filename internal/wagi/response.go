package wagi

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// DefaultMaxHeaderBytes is the header block limit ReadResponseHeader uses
// when given a limit <= 0.
const DefaultMaxHeaderBytes = 64 << 10

// Response is the header part of a module's CGI response.
type Response struct {
	// Status is the HTTP status code (100-999).
	Status int
	// Reason is the reason phrase: as the module wrote it after the code,
	// else http.StatusText(Status), which may be "".
	Reason string
	// Header holds every header line but Status, in the order written,
	// repeats kept, names as written, values without surrounding white
	// space, less the lines in Dropped.
	Header []HeaderField
	// Dropped names the header lines left out because the web server
	// would act on them internally (see steersServer), for the log.
	Dropped []string
}

// steersServer reports whether a response header would make the web server
// in front act on the module's behalf instead of passing it to the client:
// nginx's X-Accel-Redirect serves an `internal` location or a file,
// X-Accel-* change its buffering and limits, and X-Sendfile (Apache's
// mod_xsendfile, lighttpd) serves any file the server can read. A module
// is untrusted: these never reach the web server.
func steersServer(name string) bool {
	return hasPrefixFold(name, "X-Accel-") ||
		strings.EqualFold(name, "X-Sendfile") ||
		strings.EqualFold(name, "X-Sendfile2") ||
		strings.EqualFold(name, "X-LIGHTTPD-send-file")
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// HeaderField is one response header line.
type HeaderField struct {
	Name, Value string
}

// InvalidResponseError says that a module's output is not a valid CGI
// response; the manager answers 502 to it. Every error from
// ReadResponseHeader that is about the module's output has this type
// (use errors.As); other errors come from the reader.
type InvalidResponseError struct {
	// Line is the 1-based line of the header block at fault, or 0 when
	// the fault is not in one line.
	Line int
	// Reason says what is wrong, for the log.
	Reason string
}

func (e *InvalidResponseError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("invalid CGI response: header line %d: %s", e.Line, e.Reason)
	}
	return "invalid CGI response: " + e.Reason
}

func invalid(line int, format string, args ...any) error {
	return &InvalidResponseError{Line: line, Reason: fmt.Sprintf(format, args...)}
}

// ReadResponseHeader reads a CGI response's header block from r: every line
// up to and including the first empty line. Lines end in "\n" or "\r\n".
// The body, if any, is left unread in r.
//
// The rules (docs/wagi-compat.md): a Content-Type, Status or Location
// header must appear. "Status: 404 Not Found" or just "Status: 404" sets
// the code (three digits, 100-999, then optionally white space and a
// reason); Location without Status means 302; with both, Status wins;
// otherwise the status is 200. Header names must be HTTP tokens, and
// neither names nor values may hold control characters (HTAB is allowed in
// values); white space around names and values is removed. A header block
// longer than maxBytes (DefaultMaxHeaderBytes when maxBytes <= 0) or ended
// by EOF before the empty line is invalid. All these faults are reported as
// *InvalidResponseError.
func ReadResponseHeader(r *bufio.Reader, maxBytes int) (*Response, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxHeaderBytes
	}
	block := make([]byte, 0, min(512, maxBytes))
	lines := 0
	lineStart := 0
	for {
		frag, err := r.ReadSlice('\n')
		if len(block)+len(frag) > maxBytes {
			return nil, invalid(0, "header block longer than %d bytes", maxBytes)
		}
		block = append(block, frag...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue // the same line goes on
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if len(block) == 0 {
					return nil, invalid(0, "no output")
				}
				return nil, invalid(0, "output ended before the empty line that ends the header block")
			}
			return nil, fmt.Errorf("reading CGI response header: %w", err)
		}
		line := block[lineStart:]
		if len(line) == 1 || (len(line) == 2 && line[0] == '\r') {
			block = block[:lineStart]
			break
		}
		lines++
		lineStart = len(block)
	}
	return parseHeaderBlock(string(block), lines)
}

// parseHeaderBlock parses the header lines in s (each ending in "\n"),
// without the empty line that ended them.
func parseHeaderBlock(s string, lines int) (*Response, error) {
	resp := &Response{Header: make([]HeaderField, 0, lines)}
	haveStatus, haveLocation, haveType := false, false, false
	for n := 1; s != ""; n++ {
		i := strings.IndexByte(s, '\n')
		line := s[:i]
		s = s[i+1:]
		line = strings.TrimSuffix(line, "\r")

		colon := strings.IndexByte(line, ':')
		if colon < 0 {
			return nil, invalid(n, "no ':' in %q", line)
		}
		name := trimOWS(line[:colon])
		value := trimOWS(line[colon+1:])
		if name == "" {
			return nil, invalid(n, "empty header name in %q", line)
		}
		if !isToken(name) {
			return nil, invalid(n, "invalid header name %q", name)
		}
		for j := 0; j < len(value); j++ {
			if c := value[j]; (c < ' ' && c != '\t') || c == 0x7f {
				return nil, invalid(n, "control character 0x%02x in the value of %s", c, name)
			}
		}
		switch {
		case steersServer(name):
			resp.Dropped = append(resp.Dropped, name)
			continue
		case strings.EqualFold(name, "Status"):
			if haveStatus {
				return nil, invalid(n, "more than one Status header")
			}
			haveStatus = true
			code, reason, ok := parseStatus(value)
			if !ok {
				return nil, invalid(n, "malformed Status %q (want three digits 100-999, optionally followed by a reason)", value)
			}
			resp.Status, resp.Reason = code, reason
			continue
		case strings.EqualFold(name, "Location"):
			haveLocation = true
		case strings.EqualFold(name, "Content-Type"):
			haveType = true
		}
		resp.Header = append(resp.Header, HeaderField{Name: name, Value: value})
	}
	switch {
	case haveStatus:
		// Status wins over Location. A 200 with a local Location is a
		// CGI local redirect to Apache's mod_proxy_fcgi and mod_cgi,
		// which fetch that path internally: the Location is dropped.
		if resp.Status == http.StatusOK && haveLocation {
			kept := resp.Header[:0]
			for _, h := range resp.Header {
				if strings.EqualFold(h.Name, "Location") && strings.HasPrefix(h.Value, "/") {
					resp.Dropped = append(resp.Dropped, h.Name)
					continue
				}
				kept = append(kept, h)
			}
			resp.Header = kept
		}
	case haveLocation:
		resp.Status, resp.Reason = http.StatusFound, "Found"
	case haveType:
		resp.Status, resp.Reason = http.StatusOK, "OK"
	default:
		return nil, invalid(0, "no Content-Type, Status or Location header")
	}
	return resp, nil
}

// parseStatus parses a Status header value: "404", "404 Not Found".
func parseStatus(v string) (code int, reason string, ok bool) {
	if len(v) < 3 || v[0] < '1' || v[0] > '9' || !isDigit(v[1]) || !isDigit(v[2]) {
		return 0, "", false
	}
	code = int(v[0]-'0')*100 + int(v[1]-'0')*10 + int(v[2]-'0')
	if len(v) == 3 {
		return code, http.StatusText(code), true
	}
	if v[3] != ' ' && v[3] != '\t' {
		return 0, "", false
	}
	return code, trimOWS(v[4:]), true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// trimOWS removes spaces and horizontal tabs on both ends.
func trimOWS(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// isToken reports whether s is an HTTP token (RFC 9110 section 5.6.2).
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return s != ""
}

// headerLen is the length of the serialized header block.
func (r *Response) headerLen() int {
	n := len("Status: 000 \r\n") + len(r.Reason) + len("\r\n")
	for _, h := range r.Header {
		n += len(h.Name) + len(": ") + len(h.Value) + len("\r\n")
	}
	return n
}

// AppendHeader appends the header block, as WriteTo writes it, to dst.
func (r *Response) AppendHeader(dst []byte) []byte {
	dst = append(dst, "Status: "...)
	dst = strconv.AppendInt(dst, int64(r.Status), 10)
	if r.Reason != "" {
		dst = append(dst, ' ')
		dst = append(dst, r.Reason...)
	}
	dst = append(dst, "\r\n"...)
	for _, h := range r.Header {
		dst = append(dst, h.Name...)
		dst = append(dst, ": "...)
		dst = append(dst, h.Value...)
		dst = append(dst, "\r\n"...)
	}
	return append(dst, "\r\n"...)
}

// WriteTo writes the header block as a FastCGI responder sends it on
// STDOUT: "Status: 302 Found\r\n", each header as "Name: Value\r\n" in
// order, then "\r\n". It makes one Write call.
func (r *Response) WriteTo(w io.Writer) (int64, error) {
	buf := r.AppendHeader(make([]byte, 0, r.headerLen()))
	n, err := w.Write(buf)
	return int64(n), err
}
