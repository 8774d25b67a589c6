package egress

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzRequestFrames: whatever a child sends, reading it as a request
// neither panics nor allocates past the frame bound, and what it accepts
// is within every field's bound.
func FuzzRequestFrames(f *testing.F) {
	var b bytes.Buffer
	_ = writeRequestHeader(&b, &Request{Token: "00112233445566778899aabbccddeeff", Method: "GET", URL: "http://example.com/", Headers: "a:b\n", Open: 1}, 3)
	f.Add(b.Bytes())
	f.Add([]byte("WXH1\x00\x00\x00\x00"))
	f.Add([]byte("WXH1\xff\xff\xff\xff"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, p []byte) {
		var req Request
		_, err := readRequestHeader(bufio.NewReader(bytes.NewReader(p)), &req)
		if err != nil {
			return
		}
		if len(req.Token) > tokenLen || len(req.Method) > MaxMethod || len(req.URL) > MaxURL || len(req.Headers) > MaxHeaderBytes {
			t.Fatalf("accepted a field past its bound: %d %d %d %d", len(req.Token), len(req.Method), len(req.URL), len(req.Headers))
		}
		_, _ = parseHeaders(req.Headers)
		_, _, _ = ParseTarget(req.URL)
	})
}
