package fcgi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestServerAnswersASimpleRequest(t *testing.T) {
	env := startServer(t, echoHandler)
	c := env.dial()
	resp := c.roundTrip(1, true, nginxParams("/hello?x=1"), nil)
	want := "Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n/hello?x=1\n"
	if string(resp.stdout) != want {
		t.Errorf("stdout = %q, want %q", resp.stdout, want)
	}
	if resp.protocolStatus != statusRequestComplete || resp.appStatus != 0 {
		t.Errorf("END_REQUEST status %d/%d, want 0/0", resp.appStatus, resp.protocolStatus)
	}
	if resp.stdoutRecords != 1 {
		t.Errorf("small response in %d STDOUT records, want 1", resp.stdoutRecords)
	}
	if resp.stderrTerm {
		t.Errorf("STDERR terminator sent although stderr was not used")
	}
	c.expectOpen()
}

func TestServerDecodesParamsHoweverTheyAreFramed(t *testing.T) {
	long := strings.Repeat("v", 100<<10)
	longName := strings.Repeat("N", 200)
	base := nginxParams("/p")
	tests := []struct {
		name  string
		pairs []pair
		size  int // PARAMS record size
		pad   int
	}{
		{"in one nginx-style padded record", base, 0xffff, padTo8},
		{"in Apache-style 16 KiB unpadded records", append(base, pair{"HTTP_COOKIE", strings.Repeat("c", 40<<10)}), 16 << 10, padNo},
		{"with pairs straddling 1-byte records", base, 1, padTo8},
		{"with pairs straddling 7-byte records", base, 7, padNo},
		{"with maximal padding of 255", base, 100, 255},
		{"with 4-byte name and value lengths", []pair{{longName, long}, {"A", "b"}}, 0xffff, padTo8},
		{"in a 65535-byte record padded beyond 65535", []pair{{"X", strings.Repeat("x", 0xffff-6)}}, 0xffff, padTo8},
		{"with empty values", []pair{{"CONTENT_TYPE", ""}, {"CONTENT_LENGTH", ""}}, 0xffff, padTo8},
		{"with no params at all", nil, 0xffff, padTo8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := make(chan map[string]string, 1)
			env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
				got <- r.Params
			}))
			c := env.dial()
			req := encodeBegin(1, 1, 1)
			req = append(req, encodeStream(typeParams, 1, encodePairs(tt.pairs), tt.size, tt.pad)...)
			req = append(req, encodeStream(typeStdin, 1, nil, 1, tt.pad)...)
			c.send(req)
			c.readResponse(1)
			want := map[string]string{}
			for _, p := range tt.pairs {
				want[p.name] = p.value
			}
			if m := recv(t, got, "params"); !maps.Equal(m, want) {
				t.Errorf("params differ: got %d entries, want %d", len(m), len(want))
			}
		})
	}
}

func TestServerJoinsARequestHeaderSentTwice(t *testing.T) {
	got := make(chan [2]string, 1)
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		got <- [2]string{r.Param("HTTP_X_DUP"), r.Param("HTTP_COOKIE")}
	}))
	env.dial().roundTrip(1, true, []pair{{"HTTP_X_DUP", "one"}, {"HTTP_COOKIE", "a=1"}, {"HTTP_X_DUP", "two"}, {"HTTP_COOKIE", "b=2"}}, nil)
	if v := recv(t, got, "params"); v != [2]string{"one, two", "a=1; b=2"} {
		t.Errorf("got %q, want joined values", v)
	}
}

func TestServerAbortSendsTheOutputAndClosesWithoutEndRequest(t *testing.T) {
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		w.Write([]byte("Status: 200 OK\r\nContent-Type: text/plain\r\n\r\npartial"))
		w.Abort()
	}))
	c := env.dial()
	c.send(encodeRequest(1, true, nginxParams("/"), nil))
	var stdout []byte
	for {
		r, err := c.readRecord()
		if err != nil {
			break
		}
		if r.typ != typeStdout || len(r.content) == 0 {
			t.Fatalf("got %s record (%d bytes); want only non-empty STDOUT before the close", typeName(r.typ), len(r.content))
		}
		stdout = append(stdout, r.content...)
	}
	if !bytes.HasSuffix(stdout, []byte("partial")) {
		t.Fatalf("stdout %q", stdout)
	}
}

func TestServerKeepsTheLastValueOfARepeatedParam(t *testing.T) {
	got := make(chan string, 1)
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) { got <- r.Param("X") }))
	env.dial().roundTrip(1, true, []pair{{"X", "first"}, {"X", "last"}}, nil)
	if v := recv(t, got, "param"); v != "last" {
		t.Errorf("X = %q, want last", v)
	}
}

func TestServerAnswers431WhenParamsExceedTheLimit(t *testing.T) {
	var calls atomic.Int32
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		calls.Add(1)
		echoHandler(w, r)
	}), func(s *Server) { s.MaxParamsBytes = 1000 })
	c := env.dial()
	pairs := []pair{{"HTTP_COOKIE", strings.Repeat("c", 3000)}}
	// Apache style: several records, so the limit trips mid-stream.
	req := encodeBegin(1, 1, 1)
	req = append(req, encodeStream(typeParams, 1, encodePairs(pairs), 512, padNo)...)
	req = append(req, encodeStream(typeStdin, 1, []byte("some body"), 4, padNo)...)
	c.send(req)
	resp := c.readResponse(1)
	if !bytes.HasPrefix(resp.stdout, []byte("Status: 431 Request Header Fields Too Large\r\n")) {
		t.Errorf("stdout = %q, want a 431 response", resp.stdout)
	}
	if calls.Load() != 0 {
		t.Errorf("handler called for a request over the limit")
	}
	if len(env.logs.lines("WARN")) != 1 {
		t.Errorf("want one warning, log:\n%s", env.logs)
	}
	// The rest of the oversized request was drained: the kept connection
	// serves the next request normally.
	resp = c.roundTrip(1, true, nginxParams("/next"), nil)
	if !bytes.Contains(resp.stdout, []byte("/next\n")) {
		t.Errorf("second request: stdout = %q", resp.stdout)
	}
}

func TestServerDeliversABodyStreamedInManyRecords(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 10000) // 160000 bytes
	tests := []struct {
		name string
		size int
		pad  int
	}{
		{"in 1-byte records", 1, padNo},
		{"in 1000-byte padded records", 1000, padTo8},
		{"in maximal 65535-byte records", 0xffff, padTo8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
				// No CONTENT_LENGTH: read to EOF.
				h := sha256.New()
				n, err := io.Copy(h, r.Body)
				fmt.Fprintf(w, "Status: 200 OK\r\n\r\n%d %x %v", n, h.Sum(nil), err)
			}))
			c := env.dial()
			req := encodeBegin(1, 1, 1)
			req = append(req, encodeStream(typeParams, 1, encodePairs([]pair{{"REQUEST_METHOD", "POST"}}), 0xffff, tt.pad)...)
			req = append(req, encodeStream(typeStdin, 1, body, tt.size, tt.pad)...)
			go c.conn.Write(req)
			resp := c.readResponse(1)
			want := fmt.Sprintf("Status: 200 OK\r\n\r\n%d %x <nil>", len(body), sha256.Sum256(body))
			if string(resp.stdout) != want {
				t.Errorf("stdout = %q, want %q", resp.stdout, want)
			}
		})
	}
}

func TestServerStartsTheHandlerBeforeTheBodyArrives(t *testing.T) {
	firstChunk := make(chan string, 1)
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		buf := make([]byte, 100)
		n, _ := r.Body.Read(buf)
		firstChunk <- string(buf[:n])
		rest, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "Status: 200 OK\r\n\r\n%s", rest)
	}))
	c := env.dial()
	c.send(encodeBegin(1, 1, 1))
	c.send(encodeStream(typeParams, 1, encodePairs(nginxParams("/")), 0xffff, padTo8))
	c.send(encodeRecord(typeStdin, 1, []byte("first"), padTo8))
	if got := recv(t, firstChunk, "the handler to read the first chunk"); got != "first" {
		t.Fatalf("first chunk %q", got)
	}
	c.send(encodeRecord(typeStdin, 1, []byte("second"), padTo8))
	c.send(encodeRecord(typeStdin, 1, nil, padTo8))
	if resp := c.readResponse(1); !bytes.HasSuffix(resp.stdout, []byte("\r\n\r\nsecond")) {
		t.Errorf("stdout = %q", resp.stdout)
	}
}

func TestServerDiscardsAnUnreadBodyAndStaysInSync(t *testing.T) {
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		io.WriteString(w, "Status: 204 No Content\r\n\r\n") // never reads the body
	}))
	c := env.dial()
	body := bytes.Repeat([]byte{'x'}, 300<<10)
	// The body keeps arriving after the response was sent.
	c.send(encodeBegin(1, 1, 1))
	c.send(encodeStream(typeParams, 1, encodePairs(nginxParams("/")), 0xffff, padTo8))
	c.send(encodeRecord(typeStdin, 1, body[:1000], padTo8))
	c.readResponse(1)
	c.send(encodeStream(typeStdin, 1, body[1000:], 32<<10, padTo8))
	for i := range 3 {
		resp := c.roundTrip(1, true, nginxParams("/"), body)
		if string(resp.stdout) != "Status: 204 No Content\r\n\r\n" {
			t.Fatalf("request %d: stdout = %q", i+2, resp.stdout)
		}
	}
}

func TestServerServesManyRequestsOnAKeptConnection(t *testing.T) {
	env := startServer(t, echoHandler)
	c := env.dial()
	for i := range 200 {
		uri := fmt.Sprintf("/r%d", i)
		body := bytes.Repeat([]byte{byte(i)}, i*7)
		resp := c.roundTrip(1, true, nginxParams(uri), body)
		want := "Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n" + uri + "\n" + string(body)
		if string(resp.stdout) != want {
			t.Fatalf("request %d: stdout differs", i)
		}
	}
}

func TestServerClosesTheConnectionWhenKeepConnIsClear(t *testing.T) {
	env := startServer(t, echoHandler)
	c := env.dial()
	resp := c.roundTrip(1, false, nginxParams("/once"), []byte("body"))
	if !bytes.HasSuffix(resp.stdout, []byte("/once\nbody")) {
		t.Errorf("stdout = %q", resp.stdout)
	}
	c.expectClosed()
}

func TestServerClosesAfterTheResponseEvenIfTheBodyIsStillComing(t *testing.T) {
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		io.WriteString(w, "Status: 413 Content Too Large\r\n\r\n")
	}))
	c := env.dial()
	c.send(encodeBegin(1, 1, 0))
	c.send(encodeStream(typeParams, 1, encodePairs(nginxParams("/")), 0xffff, padTo8))
	c.send(encodeRecord(typeStdin, 1, []byte("part"), padTo8))
	resp := c.readResponse(1)
	if !bytes.HasPrefix(resp.stdout, []byte("Status: 413")) {
		t.Errorf("stdout = %q", resp.stdout)
	}
	// The server half-closed and waits for the rest of the body.
	c.send(encodeRecord(typeStdin, 1, []byte("more"), padTo8))
	c.send(encodeRecord(typeStdin, 1, nil, padTo8))
	c.expectClosed()
}

func TestServerAnswersGetValues(t *testing.T) {
	ask := func(names ...string) []byte {
		var pairs []pair
		for _, n := range names {
			pairs = append(pairs, pair{n, ""})
		}
		return encodeRecord(typeGetValues, 0, encodePairs(pairs), padTo8)
	}
	decode := func(t *testing.T, r rawRecord) map[string]string {
		t.Helper()
		if r.typ != typeGetValuesResult || r.id != 0 {
			t.Fatalf("got %s id %d, want GET_VALUES_RESULT id 0", typeName(r.typ), r.id)
		}
		m, err := decodeParams(r.content)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	all := []string{"FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS", "FCGI_UNKNOWN_NAME"}

	t.Run("reporting the limits the manager set", func(t *testing.T) {
		env := startServer(t, echoHandler, func(s *Server) { s.MaxConns, s.MaxReqs = 16, 32 })
		c := env.dial()
		c.send(ask(all...))
		want := map[string]string{"FCGI_MAX_CONNS": "16", "FCGI_MAX_REQS": "32", "FCGI_MPXS_CONNS": "0"}
		if m := decode(t, c.mustReadRecord()); !maps.Equal(m, want) {
			t.Errorf("got %v, want %v", m, want)
		}
	})
	t.Run("omitting limits that are not set and names not asked", func(t *testing.T) {
		env := startServer(t, echoHandler, func(s *Server) { s.MaxReqs = 5 })
		c := env.dial()
		c.send(ask(all...))
		if m := decode(t, c.mustReadRecord()); !maps.Equal(m, map[string]string{"FCGI_MAX_REQS": "5", "FCGI_MPXS_CONNS": "0"}) {
			t.Errorf("got %v", m)
		}
		c.send(ask("FCGI_MPXS_CONNS"))
		if m := decode(t, c.mustReadRecord()); !maps.Equal(m, map[string]string{"FCGI_MPXS_CONNS": "0"}) {
			t.Errorf("got %v", m)
		}
	})
	t.Run("before, between and during requests on one connection", func(t *testing.T) {
		release := make(chan struct{})
		env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
			if r.Param("WAIT") != "" {
				<-release
			}
			echoHandler(w, r)
		}))
		c := env.dial()
		c.send(ask("FCGI_MPXS_CONNS"))
		decode(t, c.mustReadRecord())
		c.roundTrip(1, true, nginxParams("/a"), nil)
		c.send(ask("FCGI_MPXS_CONNS"))
		decode(t, c.mustReadRecord())
		// During a request whose handler has not read its body.
		c.send(encodeRequest(1, true, append(nginxParams("/b"), pair{"WAIT", "1"}), []byte("body")))
		c.send(ask("FCGI_MPXS_CONNS"))
		decode(t, c.mustReadRecord())
		close(release)
		if resp := c.readResponse(1); !bytes.Contains(resp.stdout, []byte("/b\nbody")) {
			t.Errorf("stdout = %q", resp.stdout)
		}
		c.roundTrip(1, true, nginxParams("/c"), nil)
	})
}

func TestServerAnswersUnknownRecordTypesAndStaysUsable(t *testing.T) {
	tests := []struct {
		name string
		rec  []byte
		typ  uint8
	}{
		{"management type 200", encodeRecord(200, 0, []byte("junk"), padTo8), 200},
		{"request-id type 200", encodeRecord(200, 1, []byte("junk"), padNo), 200},
		{"STDOUT sent to the application", encodeRecord(typeStdout, 1, []byte("x"), padTo8), typeStdout},
		{"BEGIN_REQUEST with id 0", encodeBegin(0, 1, 1), typeBeginRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := startServer(t, echoHandler)
			c := env.dial()
			c.send(tt.rec)
			r := c.mustReadRecord()
			if r.typ != typeUnknownType || r.id != 0 || len(r.content) != 8 || r.content[0] != tt.typ {
				t.Fatalf("got %s id %d content %v, want UNKNOWN_TYPE for type %d", typeName(r.typ), r.id, r.content, tt.typ)
			}
			c.roundTrip(1, true, nginxParams("/after"), nil)
		})
	}
}

func TestServerRefusesRolesOtherThanResponder(t *testing.T) {
	for _, role := range []uint16{roleAuthorizer, roleFilter, 99} {
		t.Run(fmt.Sprint("role ", role), func(t *testing.T) {
			env := startServer(t, echoHandler)
			c := env.dial()
			c.send(encodeBegin(1, role, 1))
			resp := c.readResponse(1)
			if resp.protocolStatus != statusUnknownRole {
				t.Errorf("protocolStatus = %d, want FCGI_UNKNOWN_ROLE", resp.protocolStatus)
			}
			// The refused request's records are ignored; the connection works.
			c.send(encodeStream(typeParams, 1, encodePairs(nginxParams("/")), 0xffff, padTo8))
			c.send(encodeStream(typeStdin, 1, nil, 1, padTo8))
			c.roundTrip(1, true, nginxParams("/ok"), nil)
		})
	}
}

func TestServerRefusesASecondRequestWhileOneIsActive(t *testing.T) {
	release := make(chan struct{})
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		<-release
		echoHandler(w, r)
	}))
	c := env.dial()
	c.send(encodeBegin(1, 1, 1))
	c.send(encodeStream(typeParams, 1, encodePairs(nginxParams("/first")), 0xffff, padTo8))
	c.send(encodeRecord(typeStdin, 1, []byte("abc"), padTo8))
	c.send(encodeRequest(2, true, nginxParams("/second"), []byte("zzz")))
	resp := c.readResponse(2)
	if resp.protocolStatus != statusCantMpxConn {
		t.Errorf("protocolStatus = %d, want FCGI_CANT_MPX_CONN", resp.protocolStatus)
	}
	// The active request is undisturbed.
	c.send(encodeRecord(typeStdin, 1, []byte("def"), padTo8))
	c.send(encodeRecord(typeStdin, 1, nil, padTo8))
	close(release)
	if resp := c.readResponse(1); !bytes.HasSuffix(resp.stdout, []byte("/first\nabcdef")) {
		t.Errorf("stdout = %q", resp.stdout)
	}
}

func TestServerAbortRequestCancelsTheHandlerContext(t *testing.T) {
	type result struct {
		cause            error
		readErr, wrErr   error
		readN, writeSent int
	}
	results := make(chan result, 1)
	started := make(chan struct{}, 1)
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		if r.Param("ABORT") == "" {
			echoHandler(w, r)
			return
		}
		started <- struct{}{}
		<-r.Context().Done()
		var res result
		res.cause = context.Cause(r.Context())
		_, res.readErr = r.Body.Read(make([]byte, 10))
		_, res.wrErr = w.Write([]byte("late"))
		w.SetAppStatus(7)
		results <- res
	}))
	c := env.dial()
	c.send(encodeBegin(1, 1, 1))
	c.send(encodeStream(typeParams, 1, encodePairs([]pair{{"ABORT", "1"}}), 0xffff, padTo8))
	c.send(encodeRecord(typeStdin, 1, []byte("partial body"), padTo8))
	recv(t, started, "handler start")
	c.send(encodeRecord(typeAbortRequest, 1, nil, padTo8))
	res := recv(t, results, "handler result")
	if !errors.Is(res.cause, ErrRequestAborted) {
		t.Errorf("context cause = %v, want ErrRequestAborted", res.cause)
	}
	if !errors.Is(res.readErr, ErrRequestAborted) || !errors.Is(res.wrErr, ErrRequestAborted) {
		t.Errorf("after abort: Body.Read err = %v, Write err = %v; want ErrRequestAborted", res.readErr, res.wrErr)
	}
	resp := c.readResponse(1)
	if resp.protocolStatus != statusRequestComplete || resp.appStatus != 7 || len(resp.stdout) != 0 {
		t.Errorf("got END_REQUEST %d/%d with stdout %q, want 7/REQUEST_COMPLETE and no output", resp.appStatus, resp.protocolStatus, resp.stdout)
	}
	// KEEP_CONN was set: the connection serves the next request.
	c.roundTrip(1, true, nginxParams("/next"), nil)

	t.Run("while the params are still arriving", func(t *testing.T) {
		c.send(encodeBegin(1, 1, 1))
		c.send(encodeRecord(typeParams, 1, encodePairs([]pair{{"A", "b"}}), padTo8))
		c.send(encodeRecord(typeAbortRequest, 1, nil, padTo8))
		if resp := c.readResponse(1); resp.protocolStatus != statusRequestComplete {
			t.Errorf("protocolStatus = %d", resp.protocolStatus)
		}
		c.roundTrip(1, true, nginxParams("/again"), nil)
	})
}

func TestServerCancelsTheHandlerContextWhenTheConnectionCloses(t *testing.T) {
	tests := []struct {
		name  string
		close func(c *testClient)
	}{
		{"by EOF", func(c *testClient) { c.conn.Close() }},
		{"by a half-close", func(c *testClient) { c.conn.(*net.UnixConn).CloseWrite() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			started := make(chan struct{})
			causes := make(chan [2]error, 1)
			env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
				close(started)
				<-r.Context().Done()
				_, err := w.Write([]byte("x"))
				causes <- [2]error{context.Cause(r.Context()), err}
			}))
			c := env.dial()
			c.send(encodeBegin(1, 1, 1))
			c.send(encodeStream(typeParams, 1, encodePairs(nginxParams("/")), 0xffff, padTo8))
			recv(t, started, "handler start")
			tt.close(c)
			errs := recv(t, causes, "cancellation")
			if !errors.Is(errs[0], ErrConnClosed) || !errors.Is(errs[1], ErrConnClosed) {
				t.Errorf("cause = %v, Write error = %v; want ErrConnClosed", errs[0], errs[1])
			}
			if w := env.logs.lines("WARN"); len(w) != 0 {
				t.Errorf("a closed connection is no protocol error, got %q", w)
			}
		})
	}
}

func TestServerClosesTheConnectionOnMalformedRecords(t *testing.T) {
	begin := encodeBegin(1, 1, 1)
	tests := []struct {
		name   string
		stream []byte
		logged string
	}{
		{"with record version 2", []byte{2, 1, 0, 1, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0}, "record version 2, want 1"},
		{"with record version 0 mid-request", append(begin[:16:16], 0, 4, 0, 1, 0, 0, 0, 0), "record version 0, want 1"},
		{"with a truncated header", []byte{1, 1, 0}, "truncated record header: got 3 of 8 bytes"},
		{"with truncated content", []byte{1, 4, 0, 1, 0, 100, 0, 0, 'a', 'b'}, "truncated PARAMS record content: got 2 of 100 bytes"},
		{"with truncated padding", append(encodeRecord(typeStdin, 1, nil, 0)[:6:6], 9, 0, 1, 2), "truncated STDIN record padding: got 2 of 9 bytes"},
		{"with a short BEGIN_REQUEST", encodeRecord(typeBeginRequest, 1, []byte{0, 1, 1}, padTo8), "BEGIN_REQUEST with content length 3, want 8"},
		{"with a pair longer than the params", append(append([]byte{}, begin...), append(encodeRecord(typeParams, 1, []byte{5, 100, 'N', 'A', 'M', 'E', '1', 'v'}, padTo8), encodeRecord(typeParams, 1, nil, 0)...)...), "lengths 5+100 exceed the 6 remaining bytes"},
		{"with a truncated 4-byte length", append(append([]byte{}, begin...), append(encodeRecord(typeParams, 1, []byte{0x80, 0}, padTo8), encodeRecord(typeParams, 1, nil, 0)...)...), "truncated name length"},
		{"with a second BEGIN_REQUEST for the active id", append(append([]byte{}, begin...), begin...), "BEGIN_REQUEST for request id 1, which is still active"},
		{"with STDIN before the end of PARAMS", append(append([]byte{}, begin...), encodeRecord(typeStdin, 1, []byte("early"), padTo8)...), "STDIN record for request id 1 before the end of its PARAMS"},
		{"with a malformed GET_VALUES", encodeRecord(typeGetValues, 0, []byte{3, 0, 'a'}, padTo8), "exceed the 1 remaining bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := startServer(t, echoHandler)
			other := env.dial() // an established connection, unaffected
			c := env.dial()
			c.send(tt.stream)
			if tt.name == "with a truncated header" || tt.name == "with truncated content" || tt.name == "with truncated padding" {
				c.conn.(*net.UnixConn).CloseWrite()
			}
			c.expectClosed()
			waitFor(t, "the warning", func() bool { return len(env.logs.lines("WARN")) > 0 })
			warns := env.logs.lines("WARN")
			if len(warns) != 1 || !strings.Contains(warns[0], tt.logged) || !strings.Contains(warns[0], "remote=") {
				t.Errorf("want one warning with remote and %q, got %q", tt.logged, warns)
			}
			other.roundTrip(1, true, nginxParams("/still-serving"), nil)
			env.dial().roundTrip(1, true, nginxParams("/new-conn"), nil)
		})
	}
}

func TestServerCancelsTheHandlerOnAProtocolError(t *testing.T) {
	causes := make(chan error, 1)
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		<-r.Context().Done()
		causes <- context.Cause(r.Context())
	}))
	c := env.dial()
	c.send(encodeBegin(1, 1, 1))
	c.send(encodeStream(typeParams, 1, nil, 1, padTo8))
	c.send([]byte{9, 9, 9, 9, 9, 9, 9, 9})
	cause := recv(t, causes, "cancellation")
	var perr *protocolError
	if !errors.Is(cause, ErrConnClosed) || !errors.As(cause, &perr) {
		t.Errorf("cause = %v, want ErrConnClosed wrapping a protocol error", cause)
	}
	c.expectClosed()
}

func TestServerSplitsLargeOutputIntoRecords(t *testing.T) {
	payload := make([]byte, 1<<20+123)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	tests := []struct {
		name  string
		write func(w *ResponseWriter)
	}{
		{"from one 1 MiB write", func(w *ResponseWriter) { w.Write(payload) }},
		{"from a header write and a 1 MiB write", func(w *ResponseWriter) {
			w.Write(payload[:10])
			w.Write(payload[10:])
		}},
		{"from many small writes", func(w *ResponseWriter) {
			for p := payload; len(p) > 0; p = p[min(len(p), 1000):] {
				w.Write(p[:min(len(p), 1000)])
			}
		}},
		{"from 40000-byte writes with flushes", func(w *ResponseWriter) {
			for p := payload; len(p) > 0; p = p[min(len(p), 40000):] {
				w.Write(p[:min(len(p), 40000)])
				w.Flush()
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) { tt.write(w) }))
			c := env.dial()
			c.send(encodeRequest(1, true, nil, nil))
			var got []byte
			for {
				r := c.mustReadRecord()
				if r.typ == typeEndRequest {
					break
				}
				if r.typ != typeStdout {
					t.Fatalf("unexpected %s", typeName(r.typ))
				}
				if len(r.content) > maxChunk {
					t.Fatalf("STDOUT record of %d bytes, want at most %d", len(r.content), maxChunk)
				}
				got = append(got, r.content...)
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("output differs: got %d bytes, want %d", len(got), len(payload))
			}
		})
	}
}

func TestServerFlushSendsOutputBeforeTheHandlerReturns(t *testing.T) {
	release := make(chan struct{})
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		io.WriteString(w, "Status: 200 OK\r\n\r\nfirst")
		if err := w.Flush(); err != nil {
			t.Errorf("Flush: %v", err)
		}
		w.Flush() // nothing buffered: no empty record
		<-release
		io.WriteString(w, "second")
	}))
	c := env.dial()
	c.send(encodeRequest(1, true, nil, nil))
	r := c.mustReadRecord()
	if r.typ != typeStdout || !bytes.HasSuffix(r.content, []byte("first")) {
		t.Fatalf("got %s %q before the handler returned", typeName(r.typ), r.content)
	}
	close(release)
	if resp := c.readResponse(1); string(resp.stdout) != "second" {
		t.Errorf("rest of stdout = %q", resp.stdout)
	}
}

func TestServerSendsStderrRecords(t *testing.T) {
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		io.WriteString(w, "Status: 200 OK\r\n\r\n")
		e := w.Stderr()
		e.Write([]byte("first line"))
		e.Write(nil) // no empty record
		io.WriteString(w, "body")
		e.Write([]byte("second line"))
		e.Write(bytes.Repeat([]byte("e"), 70000)) // two records
	}))
	c := env.dial()
	resp := c.roundTrip(1, true, nil, nil)
	if string(resp.stdout) != "Status: 200 OK\r\n\r\nbody" {
		t.Errorf("stdout = %q", resp.stdout)
	}
	if want := "first linesecond line" + strings.Repeat("e", 70000); string(resp.stderr) != want {
		t.Errorf("stderr differs")
	}
	if resp.stderrRecords != 4 || !resp.stderrTerm {
		t.Errorf("%d STDERR records, terminator %v; want 4 and a terminator", resp.stderrRecords, resp.stderrTerm)
	}
}

func TestServerEndsARequestWhoseHandlerWroteNothing(t *testing.T) {
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) { w.SetAppStatus(3) }))
	c := env.dial()
	resp := c.roundTrip(1, true, nil, nil)
	if len(resp.stdout) != 0 || resp.stdoutRecords != 0 || resp.stderrTerm || resp.appStatus != 3 {
		t.Errorf("got %+v, want only the STDOUT terminator and END_REQUEST with appStatus 3", resp)
	}
}

func TestServerEchoesTheRequestID(t *testing.T) {
	env := startServer(t, echoHandler)
	c := env.dial()
	for _, id := range []uint16{1, 2, 0xffff, 1} {
		if resp := c.roundTrip(id, true, nginxParams("/id"), nil); !bytes.Contains(resp.stdout, []byte("/id")) {
			t.Errorf("id %d: stdout = %q", id, resp.stdout)
		}
	}
}

func TestServerIgnoresStrayRecordsBetweenRequests(t *testing.T) {
	env := startServer(t, echoHandler)
	c := env.dial()
	c.roundTrip(1, true, nginxParams("/a"), nil)
	c.send(encodeRecord(typeStdin, 1, nil, padTo8))                // leftover empty STDIN
	c.send(encodeRecord(typeStdin, 5, []byte("stray"), padTo8))    // unknown id
	c.send(encodeRecord(typeParams, 3, []byte{1, 1, 'a', 'b'}, 0)) // unknown id
	c.send(encodeRecord(typeAbortRequest, 9, nil, 0))              // unknown id
	c.send(encodeRecord(typeData, 1, []byte("data"), 0))
	resp := c.roundTrip(1, true, nginxParams("/b"), nil)
	if !bytes.Contains(resp.stdout, []byte("/b\n")) || len(resp.others) != 0 {
		t.Errorf("stdout = %q, others = %v", resp.stdout, resp.others)
	}
	if w := env.logs.lines("WARN"); len(w) != 0 {
		t.Errorf("stray records logged as warnings: %q", w)
	}
}

func TestServerReadsTheBodyWithBackPressure(t *testing.T) {
	body := bytes.Repeat([]byte("abcdefgh"), 64<<10) // 512 KiB
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		time.Sleep(20 * time.Millisecond) // let the buffer fill up
		n, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d %v", n, err)
	}), func(s *Server) { s.MaxBodyBuffer = 64 << 10 })
	c := env.dial()
	go c.conn.Write(encodeRequest(1, true, nil, body))
	if resp := c.readResponse(1); string(resp.stdout) != fmt.Sprintf("%d <nil>", len(body)) {
		t.Errorf("stdout = %q", resp.stdout)
	}
}

func TestServerClosesConnectionsIdleLongerThanIdleTimeout(t *testing.T) {
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		time.Sleep(150 * time.Millisecond) // longer than IdleTimeout: not counted
		echoHandler(w, r)
	}), func(s *Server) { s.IdleTimeout = 80 * time.Millisecond })
	c := env.dial()
	c.roundTrip(1, true, nginxParams("/slow"), nil)
	c.roundTrip(1, true, nginxParams("/slow2"), nil)
	start := time.Now()
	c.expectClosed()
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("closed after %v, before the idle timeout", d)
	}
}

func TestServerRecoversFromAHandlerPanic(t *testing.T) {
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		if r.Param("PANIC") != "" {
			io.WriteString(w, "Status: 200 OK\r\n\r\npartial")
			panic("boom")
		}
		echoHandler(w, r)
	}))
	c := env.dial()
	resp := c.roundTrip(1, true, []pair{{"PANIC", "1"}}, nil)
	if !bytes.HasPrefix(resp.stdout, []byte("Status: 500")) {
		t.Errorf("stdout = %q, want a 500", resp.stdout)
	}
	if e := env.logs.lines("ERROR"); len(e) != 1 || !strings.Contains(e[0], "boom") {
		t.Errorf("want one error line about the panic, got %q", e)
	}
	c.roundTrip(1, true, nginxParams("/after"), nil)
}

func TestServerShutdownWaitsForAnInFlightRequest(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		if r.Param("WAIT") != "" {
			close(started)
			<-release
		}
		io.WriteString(w, "Status: 200 OK\r\n\r\ndone")
	}))
	busy := env.dial()
	idle := env.dial()
	idle.roundTrip(1, true, nil, nil)
	busy.send(encodeRequest(1, true, []pair{{"WAIT", "1"}}, nil))
	<-started

	shutdown := make(chan error, 1)
	go func() { shutdown <- env.srv.Shutdown(ctxWithTimeout(t)) }()
	idle.expectClosed()
	if err := recv(t, env.serveErr, "Serve to return"); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve returned %v", err)
	}
	env.serveErr <- ErrServerClosed // for the cleanup
	if _, err := net.Dial("unix", env.addr); err == nil {
		t.Errorf("still accepting after Shutdown")
	}
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned %v before the request finished", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if resp := busy.readResponse(1); string(resp.stdout) != "Status: 200 OK\r\n\r\ndone" {
		t.Errorf("stdout = %q", resp.stdout)
	}
	busy.expectClosed() // kept connections close after their request
	if err := recv(t, shutdown, "Shutdown"); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestServerShutdownGivesUpWhenItsContextEnds(t *testing.T) {
	causes := make(chan error, 1)
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		<-r.Context().Done()
		causes <- context.Cause(r.Context())
	}))
	c := env.dial()
	c.send(encodeRequest(1, true, nil, nil))
	waitFor(t, "the request", func() bool {
		env.srv.mu.Lock()
		defer env.srv.mu.Unlock()
		for cc := range env.srv.conns {
			cc.mu.Lock()
			started := cc.active != nil && cc.active.started
			cc.mu.Unlock()
			if started {
				return true
			}
		}
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := env.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if cause := recv(t, causes, "cancellation"); !errors.Is(cause, ErrServerClosed) {
		t.Errorf("cause = %v, want ErrServerClosed", cause)
	}
	c.expectClosed()
}

func TestServerCloseClosesEverythingAtOnce(t *testing.T) {
	causes := make(chan error, 1)
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		_, err := io.ReadAll(r.Body) // blocked: the body never ends
		causes <- err
	}))
	busy := env.dial()
	idle := env.dial()
	idle.expectOpen()
	busy.send(encodeBegin(1, 1, 1))
	busy.send(encodeStream(typeParams, 1, nil, 1, padTo8))
	busy.send(encodeRecord(typeStdin, 1, []byte("x"), padTo8))
	busy.expectOpen()
	if err := env.srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := recv(t, causes, "Body.Read to fail"); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Body.Read error = %v, want ErrServerClosed", err)
	}
	busy.expectClosed()
	idle.expectClosed()
	if err := env.srv.Shutdown(ctxWithTimeout(t)); err != nil {
		t.Errorf("Shutdown after Close: %v", err)
	}
}

func TestServerLeavesNoGoroutinesBehind(t *testing.T) {
	check := goroutineBaseline(t)
	dir := t.TempDir()
	l, err := net.Listen("unix", dir+"/s")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Handler: HandlerFunc(func(w *ResponseWriter, r *Request) {
		if r.Param("BLOCK") != "" {
			<-r.Context().Done()
			return
		}
		echoHandler(w, r)
	}), Logger: discardLogger(), IdleTimeout: time.Minute}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	var conns []net.Conn
	for i := range 5 {
		conn, err := net.Dial("unix", dir+"/s")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		c := &testClient{t: t, conn: conn, br: bufio.NewReader(conn)}
		c.roundTrip(1, true, nginxParams("/"), []byte("body"))
		switch i {
		case 1: // aborted request
			c.send(encodeRequest(1, true, []pair{{"BLOCK", "1"}}, nil))
			c.send(encodeRecord(typeAbortRequest, 1, nil, 0))
			c.readResponse(1)
		case 2: // client gone mid-request
			c.send(encodeRequest(1, true, []pair{{"BLOCK", "1"}}, nil))
			conn.Close()
		case 3: // handler blocked in Body.Read: Shutdown has to give up
			c.send(encodeBegin(1, 1, 1))
			c.send(encodeRecord(typeParams, 1, nil, 0))
			c.expectOpen() // the request is active now
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if err := recv(t, serveErr, "Serve"); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve = %v", err)
	}
	for _, c := range conns {
		c.Close()
	}
	check()
}

// flakyListener fails the first fails Accept calls with err.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
	err   error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, l.err
	}
	return l.Listener.Accept()
}

type temporaryError struct{}

func (temporaryError) Error() string   { return "accept: too many open files" }
func (temporaryError) Temporary() bool { return true }
func (temporaryError) Timeout() bool   { return false }

func TestServeBacksOffOnTemporaryAcceptErrors(t *testing.T) {
	dir := t.TempDir()
	inner, err := net.Listen("unix", dir+"/s")
	if err != nil {
		t.Fatal(err)
	}
	l := &flakyListener{Listener: inner, err: temporaryError{}}
	l.fails.Store(3)
	logs := &syncBuffer{}
	srv := &Server{Handler: echoHandler, Logger: slogTo(logs)}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	conn, err := net.Dial("unix", dir+"/s")
	if err != nil {
		t.Fatal(err)
	}
	newTestClient(t, conn).roundTrip(1, true, nginxParams("/after-backoff"), nil)
	if n := len(logs.lines("WARN")); n != 3 {
		t.Errorf("%d warnings, want one per failed Accept (3):\n%s", n, logs)
	}
	srv.Close()
	if err := recv(t, serveErr, "Serve"); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve = %v, want ErrServerClosed", err)
	}
}

func TestServeReturnsPermanentAcceptErrors(t *testing.T) {
	inner, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	boom := errors.New("boom")
	l := &flakyListener{Listener: inner, err: boom}
	l.fails.Store(1)
	srv := &Server{Handler: echoHandler, Logger: discardLogger()}
	if err := srv.Serve(l); !errors.Is(err, boom) {
		t.Errorf("Serve = %v, want boom", err)
	}
}

func TestServerRefusesToServeAfterShutdown(t *testing.T) {
	srv := &Server{Handler: echoHandler, Logger: discardLogger()}
	if err := srv.Shutdown(ctxWithTimeout(t)); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := srv.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve = %v, want ErrServerClosed", err)
	}
	client, server := net.Pipe()
	defer client.Close()
	srv.ServeConn(server) // returns at once, closing the connection
	if _, err := client.Write([]byte{1}); err == nil {
		t.Errorf("ServeConn after Shutdown left the connection open")
	}
}

func TestServerCancelsRequestsWhenItsBaseContextIsCanceled(t *testing.T) {
	base, cancel := context.WithCancelCause(context.Background())
	stop := errors.New("manager stopping")
	causes := make(chan error, 1)
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		<-r.Context().Done()
		causes <- context.Cause(r.Context())
	}), func(s *Server) { s.BaseContext = func() context.Context { return base } })
	c := env.dial()
	c.send(encodeRequest(1, true, nil, nil))
	c.expectOpen()
	cancel(stop)
	if cause := recv(t, causes, "cancellation"); !errors.Is(cause, stop) {
		t.Errorf("cause = %v, want the base context's cause", cause)
	}
	c.expectClosed()
}

func TestServerAcceptsANewRequestWhenTheOldBodyWasAbandoned(t *testing.T) {
	env := startServer(t, HandlerFunc(func(w *ResponseWriter, r *Request) {
		io.WriteString(w, "Status: 200 OK\r\n\r\n"+r.Param("REQUEST_URI"))
	}))
	c := env.dial()
	c.send(encodeBegin(1, 1, 1))
	c.send(encodeStream(typeParams, 1, encodePairs(nginxParams("/early")), 0xffff, padTo8))
	c.send(encodeRecord(typeStdin, 1, []byte("unfinished"), padTo8))
	c.readResponse(1)
	// No STDIN terminator: the web server gave up on the body.
	if resp := c.roundTrip(1, true, nginxParams("/next"), nil); !bytes.HasSuffix(resp.stdout, []byte("/next")) {
		t.Errorf("stdout = %q", resp.stdout)
	}
	// An abort for a request whose response is complete just frees the slot.
	c.send(encodeBegin(1, 1, 1))
	c.send(encodeStream(typeParams, 1, encodePairs(nginxParams("/third")), 0xffff, padTo8))
	c.readResponse(1)
	c.send(encodeRecord(typeAbortRequest, 1, nil, padTo8))
	if resp := c.roundTrip(1, true, nginxParams("/fourth"), nil); !bytes.HasSuffix(resp.stdout, []byte("/fourth")) {
		t.Errorf("stdout = %q", resp.stdout)
	}
}

func TestServerAnswers500WithoutAHandler(t *testing.T) {
	env := startServer(t, nil)
	if resp := env.dial().roundTrip(1, true, nil, nil); !bytes.HasPrefix(resp.stdout, []byte("Status: 500")) {
		t.Errorf("stdout = %q", resp.stdout)
	}
}

// countingConn counts the writes made to a connection.
type countingConn struct {
	net.Conn
	writes atomic.Int32
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func TestServerSendsASmallResponseInOneWrite(t *testing.T) {
	srv := &Server{Logger: discardLogger(), Handler: HandlerFunc(func(w *ResponseWriter, r *Request) {
		io.WriteString(w, "Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n")
		io.WriteString(w, "hello")
		w.Stderr().Write([]byte("note"))
		io.WriteString(w, " world")
	})}
	client, server := net.Pipe()
	counted := &countingConn{Conn: server}
	done := make(chan struct{})
	go func() {
		srv.ServeConn(counted)
		close(done)
	}()
	c := newTestClient(t, client)
	go client.Write(encodeRequest(1, true, nginxParams("/"), nil))
	resp := c.readResponse(1)
	if string(resp.stdout) != "Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nhello world" || string(resp.stderr) != "note" {
		t.Errorf("stdout %q, stderr %q", resp.stdout, resp.stderr)
	}
	if n := counted.writes.Load(); n != 1 {
		t.Errorf("response took %d writes, want 1", n)
	}
	client.Close()
	recv(t, done, "ServeConn to return")
}
