package child_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/child"
	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// session is the manager's side of a child served in-process over a pipe.
type session struct {
	t    testing.TB
	r    *ipc.Reader
	w    *ipc.Writer
	done chan error
	conn net.Conn
	// requestTime sums, over runs, the time from the child having read
	// the Run frame (a write to a net.Pipe returns then) to its Done.
	requestTime time.Duration
}

func newSession(t testing.TB, opts child.Options) *session {
	t.Helper()
	a, b := net.Pipe()
	s := &session{t: t, r: ipc.NewReader(a, 64<<10), w: ipc.NewWriter(a, 64<<10), done: make(chan error, 1), conn: a}
	go func() { s.done <- child.Serve(context.Background(), b, opts); b.Close() }()
	typ, _, err := s.r.ReadFrame()
	if err != nil || typ != ipc.TypeReady {
		t.Fatalf("want ready, got %v %v", typ, err)
	}
	t.Cleanup(func() {
		a.Close()
		if err := <-s.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

type result struct {
	stdout, stderr []byte
	done           ipc.Done
}

func (s *session) run(m *ipc.Run) result {
	s.t.Helper()
	if err := s.w.WriteFrame(ipc.TypeRun, ipc.AppendRun(nil, m)); err != nil {
		s.t.Fatal(err)
	}
	if err := s.w.Flush(); err != nil {
		s.t.Fatal(err)
	}
	start := time.Now()
	defer func() { s.requestTime += time.Since(start) }()
	var res result
	for {
		typ, p, err := s.r.ReadFrame()
		if err != nil {
			s.t.Fatalf("read: %v", err)
		}
		switch typ {
		case ipc.TypeStdout:
			res.stdout = append(res.stdout, p...)
		case ipc.TypeStderr:
			res.stderr = append(res.stderr, p...)
		case ipc.TypeDone:
			if err := ipc.DecodeDone(p, &res.done); err != nil {
				s.t.Fatal(err)
			}
			return res
		default:
			s.t.Fatalf("unexpected frame %s", typ)
		}
	}
}

// runFor returns a Run for the test module name.
func runFor(t testing.TB, name string) *ipc.Run {
	path := testenv.Module(t, name)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return &ipc.Run{ID: "test", ModuleKey: hex.EncodeToString(sum[:]), ModulePath: path,
		MemoryPages: 2048, Entrypoint: "_start", Args: []string{name}, StderrCap: 1 << 10}
}

func TestRunsEachKindOfEnding(t *testing.T) {
	s := newSession(t, child.Options{CacheDir: t.TempDir()})
	cases := []struct {
		name    string
		module  string
		mutate  func(*ipc.Run)
		outcome ipc.Outcome
		code    uint32
		stdout  string
	}{
		{"a C module returning from main is ok", "hello", nil, ipc.OutcomeOK, 0, "Content-Type: text/plain\n\nHello, world!\n"},
		{"a Go module ending with proc_exit(0) is ok", "gohello", func(r *ipc.Run) { r.Env = []string{"REQUEST_METHOD=PUT", "PATH_INFO=/p"} },
			ipc.OutcomeOK, 0, "Content-Type: text/plain\n\nHello from Go\nmethod=PUT\npath_info=/p\n"},
		{"a non-zero exit is reported with its code", "exit", func(r *ipc.Run) { r.Args = []string{"exit", "3"} }, ipc.OutcomeExit, 3, "Content-Type: text/plain\n\nexiting\n"},
		{"a trap keeps the output written before it", "trap", nil, ipc.OutcomeTrap, 0, "Content-Type: text/plain\n\n"},
		{"a missing entrypoint is reported", "hello", func(r *ipc.Run) { r.Entrypoint = "nope" }, ipc.OutcomeNoEntrypoint, 0, ""},
		{"another exported entrypoint can be called", "routes", func(r *ipc.Run) { r.Entrypoint = "other" }, ipc.OutcomeOK, 0, "Content-Type: text/plain\n\nother entrypoint\n"},
		{"a module file that is gone is a load error", "hello", func(r *ipc.Run) { r.ModuleKey = "gone"; r.ModulePath = "/nonexistent.wasm" }, ipc.OutcomeLoad, 0, ""},
		{"growing memory past the limit traps", "grow", func(r *ipc.Run) { r.MemoryPages = 16 }, ipc.OutcomeTrap, 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := runFor(t, tc.module)
			if tc.mutate != nil {
				tc.mutate(r)
			}
			res := s.run(r)
			if res.done.Outcome != tc.outcome || res.done.ExitCode != tc.code {
				t.Fatalf("got %s/%d (%s), want %s/%d", res.done.Outcome, res.done.ExitCode, res.done.Message, tc.outcome, tc.code)
			}
			if string(res.stdout) != tc.stdout {
				t.Fatalf("stdout %q, want %q", res.stdout, tc.stdout)
			}
		})
	}
}

func TestArgvEnvAndStdinReachTheGuest(t *testing.T) {
	s := newSession(t, child.Options{})
	r := runFor(t, "env")
	r.Args = []string{"/path", "a=1", "", "z"}
	r.Env = []string{"A=1", "EMPTY=", "WITH_EQ=x=y"}
	res := s.run(r)
	want := "Content-Type: text/plain\n\nargv[0]=/path\nargv[1]=a=1\nargv[2]=\nargv[3]=z\nenv:A=1\nenv:EMPTY=\nenv:WITH_EQ=x=y\n"
	if string(res.stdout) != want {
		t.Fatalf("got %q, want %q", res.stdout, want)
	}

	body := bytes.Repeat([]byte{0, 1, 2, 255, '\n'}, 40000)
	r = runFor(t, "echo")
	r.Stdin = body
	res = s.run(r)
	if got := bytes.TrimPrefix(res.stdout, []byte("Content-Type: application/octet-stream\n\n")); !bytes.Equal(got, body) {
		t.Fatalf("echo returned %d bytes, want %d", len(got), len(body))
	}
}

func TestStderrIsCappedPerRun(t *testing.T) {
	s := newSession(t, child.Options{})
	r := runFor(t, "stderr")
	r.Args = []string{"stderr", "1000"}
	r.StderrCap = 100
	res := s.run(r)
	if res.done.Outcome != ipc.OutcomeOK {
		t.Fatalf("outcome %s", res.done.Outcome)
	}
	if !bytes.HasPrefix(res.stderr, []byte("line 1 to stderr\n")) || !bytes.Contains(res.stderr, []byte("stderr limit reached")) || len(res.stderr) > 200 {
		t.Fatalf("stderr %q", res.stderr)
	}
}

func TestMountsAreVisibleAndReadOnlyHolds(t *testing.T) {
	s := newSession(t, child.Options{})
	ro, rw := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(ro, "in.txt"), []byte("from the host"), 0o644); err != nil {
		t.Fatal(err)
	}
	mounts := []ipc.Mount{{Guest: "/ro", Host: ro, ReadOnly: true}, {Guest: "/rw", Host: rw}}
	run := func(args []string, stdin string) string {
		r := runFor(t, "files")
		r.Args, r.Mounts, r.Stdin = append([]string{"files"}, args...), mounts, []byte(stdin)
		return string(s.run(r).stdout)
	}
	if out := run([]string{"read", "/ro/in.txt"}, ""); !strings.HasSuffix(out, "\n\nfrom the host") {
		t.Fatalf("read: %q", out)
	}
	if out := run([]string{"write", "/ro/new.txt"}, "x"); !strings.HasPrefix(out, "Status: 500") {
		t.Fatalf("write to read-only: %q", out)
	}
	if out := run([]string{"write", "/rw/new.txt"}, "kept"); !strings.Contains(out, "wrote 4") {
		t.Fatalf("write: %q", out)
	}
	if b, err := os.ReadFile(filepath.Join(rw, "new.txt")); err != nil || string(b) != "kept" {
		t.Fatalf("on the host: %q %v", b, err)
	}
}

func TestLeastRecentlyUsedModulesAreEvicted(t *testing.T) {
	s := newSession(t, child.Options{MaxModules: 1})
	for _, name := range []string{"hello", "exit", "hello", "exit"} {
		if res := s.run(runFor(t, name)); res.done.Outcome != ipc.OutcomeOK {
			t.Fatalf("%s: %s %s", name, res.done.Outcome, res.done.Message)
		}
	}
}

func TestServeEndsWhenTheManagerCloses(t *testing.T) {
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- child.Serve(context.Background(), b, child.Options{}) }()
	if _, _, err := ipc.NewReader(a, 1024).ReadFrame(); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if err := <-done; err != nil && err != io.EOF {
		t.Fatalf("Serve: %v", err)
	}
}

// BenchmarkRunHello measures what a child does per request once the module
// is compiled: a fresh instance, WASI wiring, running _start, and output
// frames. Requests follow each other at once, so ns/op includes making the
// spare instance (spare.go); req-ns/op is the time from the child reading
// the request to its Done, what a request waits for when the child was
// idle before it; cpu-ns/op is the process's CPU (child and this loop).
func BenchmarkRunHello(b *testing.B) {
	for _, name := range []string{"hello", "gohello"} {
		b.Run(name, func(b *testing.B) {
			s := newSession(b, child.Options{CacheDir: b.TempDir()})
			r := runFor(b, name)
			r.Env = []string{"REQUEST_METHOD=GET", "PATH_INFO=/"}
			s.run(r) // compile
			s.run(r)
			var ru0, ru1 syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			s.requestTime = 0
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if res := s.run(r); res.done.Outcome != ipc.OutcomeOK {
					b.Fatal(res.done.Message)
				}
			}
			b.StopTimer()
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
			b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(s.requestTime.Nanoseconds())/float64(b.N), "req-ns/op")
		})
	}
}

// The binary of a text module lives in the compilation cache, which the
// compile user writes: if it makes that file a FIFO, a child (a fresh
// one preloads every module) must fail that module, not wait forever.
func TestAModuleFileThatIsAFIFOFailsInsteadOfBlocking(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "module.wasm")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	s := newSession(t, child.Options{})
	r := runFor(t, "hello")
	r.ModulePath = fifo
	done := make(chan result, 1)
	go func() { done <- s.run(r) }()
	select {
	case res := <-done:
		if res.done.Outcome == ipc.OutcomeOK || !strings.Contains(res.done.Message, "not a regular file") {
			t.Fatalf("outcome %s %q, want a failure saying the module is not a regular file", res.done.Outcome, res.done.Message)
		}
	case <-time.After(20 * time.Second):
		// Unblock the child so the test can end.
		if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		<-done
		t.Fatal("the child was still reading the FIFO after 20s")
	}
}
