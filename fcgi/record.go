package fcgi

// This file holds the FastCGI record layer: constants, record headers and
// name-value pair encoding. See the FastCGI 1.0 specification, section 3.

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Record types (spec section 8).
const (
	typeBeginRequest    uint8 = 1
	typeAbortRequest    uint8 = 2
	typeEndRequest      uint8 = 3
	typeParams          uint8 = 4
	typeStdin           uint8 = 5
	typeStdout          uint8 = 6
	typeStderr          uint8 = 7
	typeData            uint8 = 8
	typeGetValues       uint8 = 9
	typeGetValuesResult uint8 = 10
	typeUnknownType     uint8 = 11
)

// Roles in BEGIN_REQUEST.
const (
	roleResponder  uint16 = 1
	roleAuthorizer uint16 = 2
	roleFilter     uint16 = 3
)

// flagKeepConn is the only BEGIN_REQUEST flag.
const flagKeepConn uint8 = 1

// protocolStatus values in END_REQUEST.
const (
	statusRequestComplete uint8 = 0
	statusCantMpxConn     uint8 = 1
	statusOverloaded      uint8 = 2
	statusUnknownRole     uint8 = 3
)

const (
	version1  = 1
	headerLen = 8
	// maxContent is the largest contentLength a record can carry.
	maxContent = 0xffff
	// maxChunk is the content size of the output records we emit. It is a
	// multiple of 8, so full records need no padding (php-fpm uses the same).
	maxChunk = 0xfff8
)

// Names understood in GET_VALUES.
const (
	valueMaxConns  = "FCGI_MAX_CONNS"
	valueMaxReqs   = "FCGI_MAX_REQS"
	valueMpxsConns = "FCGI_MPXS_CONNS"
)

// header is a decoded record header. contentLength (16 bit) and
// paddingLength (8 bit) are independent: their sum may exceed 65535, which is
// legal (nginx pads a 65535-byte PARAMS record).
type header struct {
	version       uint8
	typ           uint8
	id            uint16
	contentLength uint16
	paddingLength uint8
}

// parseHeader decodes and validates the 8 header bytes in b.
func parseHeader(b []byte) (header, error) {
	h := header{
		version:       b[0],
		typ:           b[1],
		id:            binary.BigEndian.Uint16(b[2:4]),
		contentLength: binary.BigEndian.Uint16(b[4:6]),
		paddingLength: b[6],
		// b[7] is reserved and ignored.
	}
	if h.version != version1 {
		return h, protocolErrorf("record version %d, want 1", h.version)
	}
	return h, nil
}

// putHeader encodes a version-1 record header into b[:8].
func putHeader(b []byte, typ uint8, id uint16, contentLength, paddingLength int) {
	b[0] = version1
	b[1] = typ
	binary.BigEndian.PutUint16(b[2:4], id)
	binary.BigEndian.PutUint16(b[4:6], uint16(contentLength))
	b[6] = uint8(paddingLength)
	b[7] = 0
}

// padding returns the number of padding bytes that align n to 8.
func padding(n int) int { return -n & 7 }

// zeros is the source of padding bytes (a constant: no mutable package state).
const zeros = "\x00\x00\x00\x00\x00\x00\x00\x00"

// appendRecord appends one complete record (header, content, padding to 8).
// len(content) must be <= maxContent.
func appendRecord(dst []byte, typ uint8, id uint16, content []byte) []byte {
	pad := padding(len(content))
	var h [headerLen]byte
	putHeader(h[:], typ, id, len(content), pad)
	dst = append(dst, h[:]...)
	dst = append(dst, content...)
	return append(dst, zeros[:pad]...)
}

// appendEndRequest appends an END_REQUEST record.
func appendEndRequest(dst []byte, id uint16, appStatus uint32, protocolStatus uint8) []byte {
	var b [headerLen + 8]byte
	putHeader(b[:], typeEndRequest, id, 8, 0)
	binary.BigEndian.PutUint32(b[8:12], appStatus)
	b[12] = protocolStatus
	return append(dst, b[:]...)
}

// appendUnknownType appends an UNKNOWN_TYPE management record (id 0).
func appendUnknownType(dst []byte, typ uint8) []byte {
	var b [headerLen + 8]byte
	putHeader(b[:], typeUnknownType, 0, 8, 0)
	b[8] = typ
	return append(dst, b[:]...)
}

// appendPair appends one name-value pair in FastCGI encoding: each length is
// one byte if < 128, else four bytes with the high bit set.
func appendPair(dst []byte, name, value string) []byte {
	dst = appendSize(dst, len(name))
	dst = appendSize(dst, len(value))
	dst = append(dst, name...)
	return append(dst, value...)
}

func appendSize(dst []byte, n int) []byte {
	if n < 128 {
		return append(dst, byte(n))
	}
	return binary.BigEndian.AppendUint32(dst, uint32(n)|1<<31)
}

// readSize decodes a pair length at b[i:]; it returns the length and the
// index after it, or ok == false if b is too short.
func readSize(b []byte, i int) (n, next int, ok bool) {
	if i >= len(b) {
		return 0, i, false
	}
	if b[i]&0x80 == 0 {
		return int(b[i]), i + 1, true
	}
	if len(b)-i < 4 {
		return 0, i, false
	}
	return int(binary.BigEndian.Uint32(b[i:]) &^ (1 << 31)), i + 4, true
}

// countPairs validates the pair stream b and returns the number of pairs.
func countPairs(b []byte) (int, error) {
	count := 0
	for i := 0; i < len(b); count++ {
		nameLen, j, ok := readSize(b, i)
		if !ok {
			return 0, protocolErrorf("truncated name length in name-value pair %d", count)
		}
		valueLen, j, ok := readSize(b, j)
		if !ok {
			return 0, protocolErrorf("truncated value length in name-value pair %d", count)
		}
		if nameLen > len(b)-j || valueLen > len(b)-j-nameLen {
			return 0, protocolErrorf("name-value pair %d: lengths %d+%d exceed the %d remaining bytes", count, nameLen, valueLen, len(b)-j)
		}
		i = j + nameLen + valueLen
	}
	return count, nil
}

// decodeParams decodes the complete PARAMS stream b into a new map. A name
// that occurs twice keeps its last value, except request headers (HTTP_*),
// whose values are joined. All names and values share one string
// allocation, but for joined headers.
func decodeParams(b []byte) (map[string]string, error) {
	count, err := countPairs(b)
	if err != nil {
		return nil, err
	}
	// Sized for what nginx sends, not for count: a request of many tiny
	// or repeated pairs would otherwise cost far more map than params.
	m := make(map[string]string, min(count, 64))
	if count == 0 {
		return m, nil
	}
	s := string(b) // the only string allocation; names and values are slices of it
	// Values of headers sent more than once, joined at the end: joining
	// as they come would copy the value so far for every repeat, which is
	// quadratic in the params size (seconds of CPU for 1 MB of repeats).
	var dups map[string][]string
	for i := 0; i < len(b); {
		nameLen, j, _ := readSize(b, i)
		valueLen, j, _ := readSize(b, j)
		name, value := s[j:j+nameLen], s[j+nameLen:j+nameLen+valueLen]
		i = j + nameLen + valueLen
		if prev, ok := m[name]; ok && strings.HasPrefix(name, "HTTP_") {
			if dups == nil {
				dups = make(map[string][]string)
			}
			vs, ok := dups[name]
			if !ok {
				vs = []string{prev}
			}
			dups[name] = append(vs, value)
			continue
		}
		m[name] = value
	}
	for name, vs := range dups {
		// A header sent twice arrives as two params from nginx before
		// 1.23; join them as HTTP does (RFC 9110 §5.3), cookies with "; "
		// (RFC 6265 §5.4).
		sep := ", "
		if name == "HTTP_COOKIE" {
			sep = "; "
		}
		m[name] = strings.Join(vs, sep)
	}
	return m, nil
}

// forEachPair calls fn for every pair in b, which must have been validated
// with countPairs. The slices alias b.
func forEachPair(b []byte, fn func(name, value []byte)) {
	for i := 0; i < len(b); {
		nameLen, j, _ := readSize(b, i)
		valueLen, j, _ := readSize(b, j)
		fn(b[j:j+nameLen], b[j+nameLen:j+nameLen+valueLen])
		i = j + nameLen + valueLen
	}
}

// protocolError is a violation of the FastCGI protocol by the peer. The
// connection it happened on is closed.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "fcgi: " + e.msg }

func protocolErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// typeName names a record type for log messages.
func typeName(t uint8) string {
	switch t {
	case typeBeginRequest:
		return "BEGIN_REQUEST"
	case typeAbortRequest:
		return "ABORT_REQUEST"
	case typeEndRequest:
		return "END_REQUEST"
	case typeParams:
		return "PARAMS"
	case typeStdin:
		return "STDIN"
	case typeStdout:
		return "STDOUT"
	case typeStderr:
		return "STDERR"
	case typeData:
		return "DATA"
	case typeGetValues:
		return "GET_VALUES"
	case typeGetValuesResult:
		return "GET_VALUES_RESULT"
	case typeUnknownType:
		return "UNKNOWN_TYPE"
	}
	return fmt.Sprintf("type %d", t)
}
