package ipc

import (
	"bytes"
	"strings"
	"testing"
)

func TestAStreamedBodyArrivesAsStdinAfterItsRunFrame(t *testing.T) {
	for _, size := range []int{1, bodyChunk - 1, bodyChunk, 3*bodyChunk + 7} {
		body := bytes.Repeat([]byte("b"), size)
		var wire bytes.Buffer
		w := NewWriter(&wire, 4096)
		run := &Run{ID: "r", Args: []string{"a"}, BodySize: int64(size), Body: bytes.NewReader(body), StderrCap: 9}
		if _, err := w.WriteRun(nil, run); err != nil {
			t.Fatal(err)
		}
		// The next request's frame follows; it must not be taken as body.
		w.WriteFrame(TypeRun, AppendRun(nil, &Run{ID: "next", Stdin: []byte("small")}))
		w.Flush()

		r := NewReader(&wire, 4096)
		typ, p, err := r.ReadFrame()
		if err != nil || typ != TypeRun {
			t.Fatalf("%d bytes: first frame %s, %v", size, typ, err)
		}
		var got Run
		if err := DecodeRun(p, &got); err != nil {
			t.Fatal(err)
		}
		if got.BodySize != int64(size) || len(got.Stdin) != 0 || got.StderrCap != 9 {
			t.Fatalf("decoded %+v", got)
		}
		if err := ReadBody(r, &got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Stdin, body) {
			t.Fatalf("%d bytes sent, %d read", size, len(got.Stdin))
		}
		typ, p, err = r.ReadFrame()
		var next Run
		if err != nil || typ != TypeRun || DecodeRun(p, &next) != nil || next.ID != "next" || string(next.Stdin) != "small" || ReadBody(r, &next) != nil {
			t.Fatalf("the frame after the body: %s %v %+v", typ, err, next)
		}
	}
}

func TestAStreamedBodyThatIsShortOrInterruptedIsAnError(t *testing.T) {
	var wire bytes.Buffer
	w := NewWriter(&wire, 4096)
	if _, err := w.WriteRun(nil, &Run{BodySize: 10, Body: strings.NewReader("short")}); err == nil {
		t.Fatal("WriteRun of a body shorter than BodySize succeeded")
	}

	wire.Reset()
	w = NewWriter(&wire, 4096)
	w.WriteFrame(TypeStdin, []byte("12345"))
	w.WriteFrame(TypeDone, nil)
	w.Flush()
	m := &Run{BodySize: 10}
	if err := ReadBody(NewReader(&wire, 4096), m); err == nil || !strings.Contains(err.Error(), "done frame inside a request body") {
		t.Fatalf("ReadBody = %v", err)
	}

	wire.Reset()
	w.WriteFrame(TypeStdin, []byte("123456789012"))
	w.Flush()
	if err := ReadBody(NewReader(&wire, 4096), &Run{BodySize: 10}); err == nil {
		t.Fatal("ReadBody accepted more bytes than announced")
	}
}
