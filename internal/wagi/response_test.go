package wagi

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func TestReadResponseHeader(t *testing.T) {
	tests := []struct {
		name       string
		out        string
		wantStatus int
		wantReason string
		wantHeader []HeaderField
		wantBody   string
	}{
		{
			name: "a Content-Type alone means 200 OK", out: "Content-Type: text/plain\n\nhello",
			wantStatus: 200, wantReason: "OK",
			wantHeader: []HeaderField{{"Content-Type", "text/plain"}}, wantBody: "hello",
		},
		{
			name: "CRLF line ends are accepted", out: "Content-Type: text/plain\r\nX-A: 1\r\n\r\nbody\r\n",
			wantStatus: 200, wantReason: "OK",
			wantHeader: []HeaderField{{"Content-Type", "text/plain"}, {"X-A", "1"}}, wantBody: "body\r\n",
		},
		{
			name: "mixed line ends are accepted", out: "Content-Type: a/b\r\nX-A: 1\n\r\nrest",
			wantStatus: 200, wantReason: "OK",
			wantHeader: []HeaderField{{"Content-Type", "a/b"}, {"X-A", "1"}}, wantBody: "rest",
		},
		{
			name: "a Status with a reason sets both", out: "Status: 404 Not Here\nContent-Type: text/html\n\n",
			wantStatus: 404, wantReason: "Not Here",
			wantHeader: []HeaderField{{"Content-Type", "text/html"}},
		},
		{
			name: "a Status without a reason takes the standard one", out: "Status: 404\n\n",
			wantStatus: 404, wantReason: "Not Found", wantHeader: []HeaderField{},
		},
		{
			name: "a Status alone is a sufficient response", out: "Status: 204 No Content\n\n",
			wantStatus: 204, wantReason: "No Content", wantHeader: []HeaderField{},
		},
		{
			name: "an unknown Status code has an empty reason", out: "Status: 599\n\n",
			wantStatus: 599, wantReason: "", wantHeader: []HeaderField{},
		},
		{
			name: "a Status name in any case is recognised", out: "status: 201 Made\n\n",
			wantStatus: 201, wantReason: "Made", wantHeader: []HeaderField{},
		},
		{
			name: "a Location without Status means 302", out: "Location: https://example.com/\n\n",
			wantStatus: 302, wantReason: "Found", wantHeader: []HeaderField{{"Location", "https://example.com/"}},
		},
		{
			name: "a Status wins over a Location written before it", out: "Location: /x\nStatus: 301 Moved Permanently\n\n",
			wantStatus: 301, wantReason: "Moved Permanently", wantHeader: []HeaderField{{"Location", "/x"}},
		},
		{
			name: "a Status wins over a Location written after it", out: "Status: 307\nLocation: /x\n\n",
			wantStatus: 307, wantReason: "Temporary Redirect", wantHeader: []HeaderField{{"Location", "/x"}},
		},
		{
			name:       "repeated Set-Cookie lines are all kept in order",
			out:        "Content-Type: text/plain\nSet-Cookie: a=1\nX-Other: o\nSet-Cookie: b=2\nset-cookie: c=3\n\n",
			wantStatus: 200, wantReason: "OK",
			wantHeader: []HeaderField{{"Content-Type", "text/plain"}, {"Set-Cookie", "a=1"}, {"X-Other", "o"}, {"Set-Cookie", "b=2"}, {"set-cookie", "c=3"}},
		},
		{
			name: "white space around names and values is removed", out: " Content-Type \t:   text/plain  \t\nX-Empty:\n\n",
			wantStatus: 200, wantReason: "OK",
			wantHeader: []HeaderField{{"Content-Type", "text/plain"}, {"X-Empty", ""}},
		},
		{
			name: "a tab inside a value is kept", out: "Content-Type: a/b\nX-T: a\tb\n\n",
			wantStatus: 200, wantReason: "OK",
			wantHeader: []HeaderField{{"Content-Type", "a/b"}, {"X-T", "a\tb"}},
		},
		{
			name: "a colon inside a value is kept", out: "Content-Type: a/b\nX-URL: http://h:1/\n\n",
			wantStatus: 200, wantReason: "OK",
			wantHeader: []HeaderField{{"Content-Type", "a/b"}, {"X-URL", "http://h:1/"}},
		},
		{
			name: "bytes above ASCII in a value are kept", out: "Content-Type: a/b\nX-U: caf\xc3\xa9\n\n",
			wantStatus: 200, wantReason: "OK",
			wantHeader: []HeaderField{{"Content-Type", "a/b"}, {"X-U", "caf\xc3\xa9"}},
		},
		{
			name: "the body is left unread byte for byte", out: "Content-Type: a/b\n\n\n\nStatus: 500\n\x00\xff",
			wantStatus: 200, wantReason: "OK",
			wantHeader: []HeaderField{{"Content-Type", "a/b"}}, wantBody: "\n\nStatus: 500\n\x00\xff",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := bufio.NewReader(strings.NewReader(tt.out))
			resp, err := ReadResponseHeader(br, 0)
			if err != nil {
				t.Fatalf("ReadResponseHeader: %v", err)
			}
			if resp.Status != tt.wantStatus || resp.Reason != tt.wantReason {
				t.Errorf("status = %d %q, want %d %q", resp.Status, resp.Reason, tt.wantStatus, tt.wantReason)
			}
			if !reflect.DeepEqual(resp.Header, tt.wantHeader) {
				t.Errorf("header = %q, want %q", resp.Header, tt.wantHeader)
			}
			body, _ := io.ReadAll(br)
			if string(body) != tt.wantBody {
				t.Errorf("body left = %q, want %q", body, tt.wantBody)
			}
		})
	}
}

func TestReadResponseHeaderRejectsInvalidOutput(t *testing.T) {
	tests := []struct {
		name     string
		out      string
		max      int
		wantLine int
		wantErr  string
	}{
		{name: "empty output is invalid", out: "", wantErr: "no output"},
		{name: "a header without Content-Type, Status or Location is invalid", out: "X-A: 1\n\n", wantErr: "no Content-Type, Status or Location"},
		{name: "an immediately empty header block is invalid", out: "\nbody", wantErr: "no Content-Type, Status or Location"},
		{name: "EOF before the empty line is invalid", out: "Content-Type: text/plain\n", wantErr: "ended before the empty line"},
		{name: "EOF in the middle of a line is invalid", out: "Content-Type: text/pl", wantErr: "ended before the empty line"},
		{name: "a line without a colon is invalid", out: "Content-Type: a/b\nhello world\n\n", wantLine: 2, wantErr: "no ':'"},
		{name: "a white-space-only line is invalid", out: "Content-Type: a/b\n  \n\n", wantLine: 2, wantErr: "no ':'"},
		{name: "an empty header name is invalid", out: ": x\nContent-Type: a/b\n\n", wantLine: 1, wantErr: "empty header name"},
		{name: "a name with a space inside is invalid", out: "Content Type: a/b\n\n", wantLine: 1, wantErr: "invalid header name"},
		{name: "a name with a separator is invalid", out: "Content-Type: a/b\nX(y): 1\n\n", wantLine: 2, wantErr: "invalid header name"},
		{name: "a name with a control character is invalid", out: "Content-Type: a/b\nX\x01: 1\n\n", wantLine: 2, wantErr: "invalid header name"},
		{name: "a name with a non-ASCII byte is invalid", out: "Cont\xc3\xa9nt: 1\nContent-Type: a/b\n\n", wantLine: 1, wantErr: "invalid header name"},
		{name: "a value with a NUL is invalid", out: "Content-Type: a/b\nX-A: a\x00b\n\n", wantLine: 2, wantErr: "control character 0x00"},
		{name: "a value with a bare CR is invalid", out: "Content-Type: a/b\nX-A: a\rb\n\n", wantLine: 2, wantErr: "control character 0x0d"},
		{name: "a value with DEL is invalid", out: "Content-Type: a/b\x7f\n\n", wantLine: 1, wantErr: "control character 0x7f"},
		{name: "a value with escape is invalid", out: "Content-Type: a/b\nX-A: \x1b[31m\n\n", wantLine: 2, wantErr: "control character 0x1b"},
		{name: "a Status with letters is invalid", out: "Status: abc\n\n", wantLine: 1, wantErr: "malformed Status"},
		{name: "a Status with two digits is invalid", out: "Status: 40\n\n", wantLine: 1, wantErr: "malformed Status"},
		{name: "a Status with four digits is invalid", out: "Status: 4040\n\n", wantLine: 1, wantErr: "malformed Status"},
		{name: "a Status below 100 is invalid", out: "Status: 099 Low\n\n", wantLine: 1, wantErr: "malformed Status"},
		{name: "a Status glued to its reason is invalid", out: "Status: 404Not Found\n\n", wantLine: 1, wantErr: "malformed Status"},
		{name: "an empty Status is invalid", out: "Content-Type: a/b\nStatus:\n\n", wantLine: 2, wantErr: "malformed Status"},
		{name: "a second Status is invalid", out: "Status: 200\nStatus: 404\n\n", wantLine: 2, wantErr: "more than one Status"},
		{name: "a header block over the limit is invalid", out: "Content-Type: text/plain\nX-Long: " + strings.Repeat("a", 100) + "\n\n", max: 64, wantErr: "longer than 64 bytes"},
		{name: "a header block one byte over the limit is invalid", out: "Status: 200\n\n", max: 12, wantErr: "longer than 12 bytes"},
		{name: "a line longer than the read buffer over the limit is invalid", out: "Content-Type: text/plain\nX-Long: " + strings.Repeat("a", 10000) + "\n\n", max: 8192, wantErr: "longer than 8192 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := ReadResponseHeader(bufio.NewReaderSize(strings.NewReader(tt.out), 16), tt.max)
			var ie *InvalidResponseError
			if !errors.As(err, &ie) {
				t.Fatalf("ReadResponseHeader = %+v, %v; want an *InvalidResponseError", resp, err)
			}
			if !strings.Contains(ie.Error(), tt.wantErr) || ie.Line != tt.wantLine {
				t.Errorf("error = %q (line %d), want one containing %q on line %d", ie, ie.Line, tt.wantErr, tt.wantLine)
			}
		})
	}
}

func TestReadResponseHeaderAtExactlyTheLimitIsValid(t *testing.T) {
	out := "Status: 200\n\n" // 13 bytes
	if _, err := ReadResponseHeader(bufio.NewReader(strings.NewReader(out)), len(out)); err != nil {
		t.Fatalf("a header block of exactly the limit: %v", err)
	}
}

func TestReadResponseHeaderReadsLinesLongerThanTheBuffer(t *testing.T) {
	long := strings.Repeat("v", 5000)
	out := "Content-Type: text/plain\nX-Long: " + long + "\n\nbody"
	br := bufio.NewReaderSize(strings.NewReader(out), 16)
	resp, err := ReadResponseHeader(br, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Header) != 2 || resp.Header[1].Value != long {
		t.Fatalf("header = %d fields, want the long value kept", len(resp.Header))
	}
	if rest, _ := io.ReadAll(br); string(rest) != "body" {
		t.Errorf("body left = %q, want %q", rest, "body")
	}
}

func TestReadResponseHeaderReadsOneByteAtATime(t *testing.T) {
	out := "Status: 201\r\nContent-Type: a/b\r\n\r\nbody"
	br := bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(out)), 16)
	resp, err := ReadResponseHeader(br, 0)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 201 || len(resp.Header) != 1 {
		t.Errorf("got %+v", resp)
	}
}

func TestReadResponseHeaderPassesReaderErrorsOn(t *testing.T) {
	boom := errors.New("pipe broke")
	br := bufio.NewReader(io.MultiReader(strings.NewReader("Content-Type: a/b\n"), iotest.ErrReader(boom)))
	_, err := ReadResponseHeader(br, 0)
	var ie *InvalidResponseError
	if errors.As(err, &ie) || !errors.Is(err, boom) {
		t.Fatalf("error = %v, want the reader's error and not an *InvalidResponseError", err)
	}
}

func TestResponseWriteTo(t *testing.T) {
	tests := []struct {
		name string
		resp Response
		want string
	}{
		{
			name: "a redirect is written with its status line first",
			resp: Response{Status: 302, Reason: "Found", Header: []HeaderField{{"Location", "/x"}}},
			want: "Status: 302 Found\r\nLocation: /x\r\n\r\n",
		},
		{
			name: "repeated headers are written in order",
			resp: Response{Status: 200, Reason: "OK", Header: []HeaderField{{"Content-Type", "text/plain"}, {"Set-Cookie", "a=1"}, {"Set-Cookie", "b=2"}}},
			want: "Status: 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
		},
		{
			name: "an empty reason leaves no trailing space",
			resp: Response{Status: 599},
			want: "Status: 599\r\n\r\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			n, err := tt.resp.WriteTo(&buf)
			if err != nil {
				t.Fatal(err)
			}
			if buf.String() != tt.want || n != int64(len(tt.want)) {
				t.Errorf("WriteTo wrote %q (n=%d), want %q", buf.String(), n, tt.want)
			}
			if got := string(tt.resp.AppendHeader([]byte("pre:"))); got != "pre:"+tt.want {
				t.Errorf("AppendHeader = %q, want %q", got, "pre:"+tt.want)
			}
		})
	}
}

func TestParsedResponseRoundTrips(t *testing.T) {
	out := "status: 404\nContent-Type:text/html\nSet-Cookie: a=1\nSet-Cookie: b=2\n\n"
	resp, err := ReadResponseHeader(bufio.NewReader(strings.NewReader(out)), 0)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := resp.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	want := "Status: 404 Not Found\r\nContent-Type: text/html\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
	if buf.String() != want {
		t.Errorf("round trip = %q, want %q", buf.String(), want)
	}
}

func TestWriteToMakesOneAllocation(t *testing.T) {
	resp := &Response{Status: 200, Reason: "OK", Header: []HeaderField{{"Content-Type", "text/plain"}, {"Set-Cookie", "a=1"}}}
	allocs := testing.AllocsPerRun(100, func() { _, _ = resp.WriteTo(io.Discard) })
	if allocs > 1 {
		t.Errorf("WriteTo made %v allocations, want at most 1", allocs)
	}
}

const benchResponse = "Status: 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n" +
	"Set-Cookie: session=abcdef0123456789; Path=/; HttpOnly\r\nSet-Cookie: theme=dark; Path=/\r\n" +
	"X-Request-Id: 4f1c2b7e\r\n\r\n<html><body>hello</body></html>"

func BenchmarkReadResponseHeader(b *testing.B) {
	src := strings.NewReader(benchResponse)
	br := bufio.NewReader(src)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchResponse)))
	for b.Loop() {
		src.Reset(benchResponse)
		br.Reset(src)
		if _, err := ReadResponseHeader(br, 0); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkResponseWriteTo(b *testing.B) {
	resp, err := ReadResponseHeader(bufio.NewReader(strings.NewReader(benchResponse)), 0)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = resp.WriteTo(io.Discard)
	}
}

// Whatever a module writes, ReadResponseHeader either rejects it as an
// *InvalidResponseError or returns a header that serializes without any
// control character but the CRLFs it adds, and that parses back to itself.
func FuzzReadResponseHeader(f *testing.F) {
	f.Add(benchResponse, 0)
	f.Add("Location: /x\nStatus: 301\n\n", 16)
	f.Add("Content-Type: a\r\nX: \t\x01\r\n\r\n", 0)
	f.Fuzz(func(t *testing.T, out string, max int) {
		resp, err := ReadResponseHeader(bufio.NewReaderSize(strings.NewReader(out), 16), max%1024)
		if err != nil {
			var ie *InvalidResponseError
			if !errors.As(err, &ie) {
				t.Fatalf("error %v is not an *InvalidResponseError", err)
			}
			return
		}
		if resp.Status < 100 || resp.Status > 999 {
			t.Fatalf("status %d", resp.Status)
		}
		wire := string(resp.AppendHeader(nil))
		for i, line := range strings.Split(strings.TrimSuffix(wire, "\r\n\r\n"), "\r\n") {
			for _, c := range []byte(line) {
				if (c < ' ' && c != '\t') || c == 0x7f {
					t.Fatalf("serialized line %d %q holds control character %#x", i, line, c)
				}
			}
		}
		again, err := ReadResponseHeader(bufio.NewReader(strings.NewReader(wire)), 0)
		if err != nil {
			t.Fatalf("serialized header %q does not parse: %v", wire, err)
		}
		if again.Status != resp.Status || again.Reason != resp.Reason || !reflect.DeepEqual(again.Header, resp.Header) {
			t.Fatalf("round trip changed %+v into %+v", resp, again)
		}
	})
}

func TestHeadersThatSteerTheWebServerNeverPass(t *testing.T) {
	tests := []struct {
		name        string
		out         string
		wantStatus  int
		wantHeader  []HeaderField
		wantDropped []string
	}{
		{"nginx's X-Accel-Redirect is dropped",
			"Content-Type: text/plain\nX-Accel-Redirect: /protected/secret.txt\n\n", 200,
			[]HeaderField{{"Content-Type", "text/plain"}}, []string{"X-Accel-Redirect"}},
		{"every X-Accel- header is dropped, whatever its case",
			"Content-Type: text/plain\nx-accel-buffering: no\nX-ACCEL-LIMIT-RATE: 1\nX-Accel-Expires: 0\n\n", 200,
			[]HeaderField{{"Content-Type", "text/plain"}}, []string{"x-accel-buffering", "X-ACCEL-LIMIT-RATE", "X-Accel-Expires"}},
		{"X-Sendfile and its lighttpd forms are dropped",
			"Content-Type: text/plain\nX-Sendfile: /etc/shadow\nX-Sendfile2: /etc/shadow 0-\nX-LIGHTTPD-send-file: /etc/shadow\n\n", 200,
			[]HeaderField{{"Content-Type", "text/plain"}}, []string{"X-Sendfile", "X-Sendfile2", "X-LIGHTTPD-send-file"}},
		{"a local Location on a 200 (a CGI local redirect) is dropped",
			"Status: 200\nContent-Type: text/plain\nLocation: /protected/secret.txt\n\n", 200,
			[]HeaderField{{"Content-Type", "text/plain"}}, []string{"Location"}},
		{"a local Location without Status stays a 302 to the client",
			"Location: /elsewhere\n\n", 302,
			[]HeaderField{{"Location", "/elsewhere"}}, nil},
		{"a Location on a 201 stays",
			"Status: 201 Created\nLocation: /items/5\n\n", 201,
			[]HeaderField{{"Location", "/items/5"}}, nil},
		{"an absolute Location on a 200 stays: no server follows it",
			"Status: 200\nContent-Type: text/plain\nLocation: https://example.org/\n\n", 200,
			[]HeaderField{{"Content-Type", "text/plain"}, {"Location", "https://example.org/"}}, nil},
		{"a header that only starts alike passes",
			"Content-Type: text/plain\nX-Accelerated: yes\nX-Sendfiles: 2\n\n", 200,
			[]HeaderField{{"Content-Type", "text/plain"}, {"X-Accelerated", "yes"}, {"X-Sendfiles", "2"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := ReadResponseHeader(bufio.NewReader(strings.NewReader(tt.out)), 0)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Status != tt.wantStatus || !reflect.DeepEqual(resp.Header, tt.wantHeader) || !reflect.DeepEqual(resp.Dropped, tt.wantDropped) {
				t.Fatalf("got %d %v dropped %v, want %d %v dropped %v", resp.Status, resp.Header, resp.Dropped, tt.wantStatus, tt.wantHeader, tt.wantDropped)
			}
		})
	}
}
