package ipc

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

func TestRunRoundTripsEveryField(t *testing.T) {
	in := Run{
		ID: "abc-1", ModuleKey: "k", ModulePath: "/state/k.wasm", MemoryPages: 2048, Entrypoint: "_start",
		Args: []string{"/p", "", "x=1"}, Env: []string{"A=1", "B="},
		Mounts: []Mount{{Guest: "/a", Host: "/h/a", ReadOnly: true}, {Guest: "/b", Kind: MountMFS, Host: "unix:@wagi-fcgi-mfs-0123", MFSPath: "/wagi/b",
			QuotaBytes: 64 << 20, QuotaFiles: 1<<40 + 1}},
		Stdin: []byte{0, 1, 2, 255}, BodySize: 1 << 33, InheritStdio: true, StderrCap: 4096, MFSGrant: "00112233445566778899aabbccddeeff",
		HTTPProxy: "unix:@wagi-fcgi-egress-0123", HTTPGrant: "ffeeddccbbaa99887766554433221100",
	}
	var out Run
	if err := DecodeRun(AppendRun(nil, &in), &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("got %+v, want %+v", out, in)
	}
}

func TestDoneRoundTrips(t *testing.T) {
	in := Done{Outcome: OutcomeExit, ExitCode: 7, Message: "exit 7"}
	var out Done
	if err := DecodeDone(AppendDone(nil, &in), &out); err != nil || out != in {
		t.Fatalf("got %+v %v", out, err)
	}
}

func TestTruncatedAndPaddedPayloadsAreErrors(t *testing.T) {
	full := AppendRun(nil, &Run{ID: "x", Args: []string{"a", "b"}, Stdin: []byte("body"),
		Mounts: []Mount{{Guest: "/d", Host: "/h", QuotaBytes: 1, QuotaFiles: 2}}, MFSGrant: "tok"})
	for n := 0; n < len(full); n++ {
		var r Run
		if err := DecodeRun(full[:n], &r); err == nil {
			t.Fatalf("a payload cut to %d of %d bytes decoded", n, len(full))
		}
	}
	var r Run
	if err := DecodeRun(append(full, 0), &r); err == nil {
		t.Fatal("a payload with a trailing byte decoded")
	}
	// A count that cannot fit must not allocate its way into trouble.
	huge := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}
	if err := DecodeRun(huge, &r); err == nil {
		t.Fatal("an impossible count decoded")
	}
}

func TestFramesRoundTripAndEndCleanly(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, 16)
	frames := []struct {
		t Type
		p []byte
	}{{TypeReady, nil}, {TypeStdout, []byte("hello")}, {TypeStderr, bytes.Repeat([]byte("e"), 100)}}
	for _, f := range frames {
		if err := w.WriteFrame(f.t, f.p); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&buf, 16)
	for _, f := range frames {
		typ, p, err := r.ReadFrame()
		if err != nil || typ != f.t || !bytes.Equal(p, f.p) {
			t.Fatalf("got %s %q %v, want %s %q", typ, p, err, f.t, f.p)
		}
	}
	if _, _, err := r.ReadFrame(); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
	r = NewReader(bytes.NewReader([]byte{byte(TypeStdout), 0, 0, 0, 9, 'a'}), 16)
	if _, _, err := r.ReadFrame(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a cut frame: %v, want io.ErrUnexpectedEOF", err)
	}
	r = NewReader(bytes.NewReader([]byte{byte(TypeStdout), 0xff, 0xff, 0xff, 0xff}), 16)
	if _, _, err := r.ReadFrame(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("a huge frame: %v, want ErrFrameTooLarge", err)
	}
}

func BenchmarkRunEncodeDecode(b *testing.B) {
	run := &Run{ID: "a1b2c3d4-1", ModuleKey: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		ModulePath: "/var/lib/wagi-fcgi/modules/0123456789abcdef.wasm", MemoryPages: 2048, Entrypoint: "_start",
		Args: []string{"/hello"}, Env: make([]string, 25), StderrCap: 65536}
	for i := range run.Env {
		run.Env[i] = "HTTP_SOME_HEADER=some value of moderate length"
	}
	var buf []byte
	var out Run
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = AppendRun(buf[:0], run)
		if err := DecodeRun(buf, &out); err != nil {
			b.Fatal(err)
		}
	}
}

// stutterReader hands out its data one byte per Read and fails every other
// Read with errTimeout, like a connection whose read deadline keeps passing
// in the middle of frames.
type stutterReader struct {
	data []byte
	fail bool
}

var errTimeout = errors.New("deadline exceeded")

func (s *stutterReader) Read(p []byte) (int, error) {
	s.fail = !s.fail
	if s.fail {
		return 0, errTimeout
	}
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	p[0] = s.data[0]
	s.data = s.data[1:]
	return 1, nil
}

func TestReadFrameResumesAfterATimeoutInsideAFrame(t *testing.T) {
	var stream bytes.Buffer
	w := NewWriter(&stream, 64)
	frames := []struct {
		t Type
		p string
	}{{TypeStdout, "hello"}, {TypeDone, ""}, {TypeStderr, "a longer payload"}}
	for _, f := range frames {
		if err := w.WriteFrame(f.t, []byte(f.p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&stutterReader{data: stream.Bytes()}, 16)
	timeouts := 0
	for _, want := range frames {
		for {
			typ, p, err := r.ReadFrame()
			if errors.Is(err, errTimeout) {
				timeouts++
				continue
			}
			if err != nil {
				t.Fatalf("reading %s frame: %v", want.t, err)
			}
			if typ != want.t || string(p) != want.p {
				t.Fatalf("got %s %q, want %s %q", typ, p, want.t, want.p)
			}
			break
		}
	}
	if timeouts == 0 {
		t.Fatal("the reader never saw a timeout; the test proves nothing")
	}
	for {
		_, _, err := r.ReadFrame()
		if errors.Is(err, errTimeout) {
			continue
		}
		if err != io.EOF {
			t.Fatalf("at the end of the stream got %v, want io.EOF", err)
		}
		break
	}
}

func TestReadFrameReportsAStreamCutInsideAFrame(t *testing.T) {
	var stream bytes.Buffer
	w := NewWriter(&stream, 64)
	if err := w.WriteFrame(TypeStdout, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	full := stream.Bytes()
	for _, n := range []int{1, headerLen, headerLen + 2} {
		r := NewReader(bytes.NewReader(full[:n]), 16)
		if _, _, err := r.ReadFrame(); err != io.ErrUnexpectedEOF {
			t.Errorf("cut after %d bytes: got %v, want io.ErrUnexpectedEOF", n, err)
		}
	}
}
