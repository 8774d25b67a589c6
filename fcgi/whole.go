package fcgi

import "encoding/binary"

// Whole is one request read whole from a buffer, for a process that
// takes requests straight from the web server's connection (the fast path
// of manager/RATIONALE.md) and leaves everything else to a Server.
type Whole struct {
	ID       uint16
	KeepConn bool
	Params   map[string]string
	Body     []byte // aliases the buffer given to ParseWhole
}

// ParseWhole reads one responder request from the start of b: a
// BEGIN_REQUEST, its PARAMS up to the empty record, its STDIN up to the
// empty record, and nothing after. It reports ok only for exactly that,
// with params of at most maxParams bytes and a body of at most maxBody;
// anything else — an incomplete request, management or unknown records,
// another role, bytes past the request, larger params or body, a malformed
// record — is not ok, and the caller hands b to a Server, which answers it
// the full way (timeouts, limits, errors).
func ParseWhole(b []byte, maxParams, maxBody int) (w Whole, ok bool) {
	var params, body []byte
	begun, paramsDone := false, false
	for len(b) >= headerLen {
		h, err := parseHeader(b)
		if err != nil {
			return Whole{}, false
		}
		total := headerLen + int(h.contentLength) + int(h.paddingLength)
		if len(b) < total {
			return Whole{}, false
		}
		content := b[headerLen : headerLen+int(h.contentLength)]
		b = b[total:]
		switch {
		case h.typ == typeBeginRequest && !begun && h.id != 0 && len(content) == 8:
			if binary.BigEndian.Uint16(content) != roleResponder {
				return Whole{}, false
			}
			begun = true
			w.ID, w.KeepConn = h.id, content[2]&flagKeepConn != 0
		case h.typ == typeParams && begun && h.id == w.ID && !paramsDone:
			if len(content) == 0 {
				paramsDone = true
				continue
			}
			if len(params)+len(content) > maxParams {
				return Whole{}, false
			}
			params = append(params, content...)
		case h.typ == typeStdin && paramsDone && h.id == w.ID:
			if len(content) == 0 {
				if len(b) != 0 {
					return Whole{}, false
				}
				m, err := decodeParams(params)
				if err != nil {
					return Whole{}, false
				}
				if body == nil {
					body = []byte{}
				}
				w.Params, w.Body = m, body
				return w, true
			}
			if len(body)+len(content) > maxBody {
				return Whole{}, false
			}
			body = append(body, content...)
		default:
			return Whole{}, false
		}
	}
	return Whole{}, false
}

// AppendResponse appends a whole answer to request id: out (a CGI response)
// in STDOUT records, the empty STDOUT record that ends the stream, and
// END_REQUEST with appStatus 0.
func AppendResponse(dst []byte, id uint16, out []byte) []byte {
	dst = AppendStdout(dst, id, out)
	dst = appendRecord(dst, typeStdout, id, nil)
	return appendEndRequest(dst, id, 0, statusRequestComplete)
}

// AppendStdout appends out to dst as STDOUT records of request id (none
// for an empty out): for a response streamed in parts.
func AppendStdout(dst []byte, id uint16, out []byte) []byte {
	for len(out) > 0 {
		n := min(len(out), maxChunk)
		dst = appendRecord(dst, typeStdout, id, out[:n])
		out = out[n:]
	}
	return dst
}
