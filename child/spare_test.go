package child

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// spareDriver runs requests on an engine the way Serve does (run, then the
// spare after the response), recording whether each one found a spare.
type spareDriver struct {
	t   *testing.T
	e   *engine
	ctx context.Context
}

func newSpareDriver(t *testing.T) *spareDriver {
	t.Helper()
	ctx := context.Background()
	e, err := newEngine(ctx, Options{CacheDir: t.TempDir(), MaxModules: 4, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.close(ctx) })
	return &spareDriver{t: t, e: e, ctx: ctx}
}

// run runs m and returns its stdout and whether a spare was waiting for it.
func (d *spareDriver) run(m *ipc.Run) (string, bool) {
	d.t.Helper()
	hadSpare := d.e.spare.mod != nil
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, 64<<10)
	done := d.e.run(d.ctx, m, w)
	if err := w.Flush(); err != nil {
		d.t.Fatal(err)
	}
	if done.Outcome != ipc.OutcomeOK {
		d.t.Fatalf("%s: %s %s", m.ModuleKey, done.Outcome, done.Message)
	}
	d.e.prepareSpare(d.ctx)
	var out []byte
	r := ipc.NewReader(&buf, 64<<10)
	for {
		typ, p, err := r.ReadFrame()
		if err != nil {
			break
		}
		if typ == ipc.TypeStdout {
			out = append(out, p...)
		}
	}
	return string(out), hadSpare
}

func runOf(t *testing.T, name string, args ...string) *ipc.Run {
	return &ipc.Run{ModuleKey: name, ModulePath: testenv.Module(t, name), MemoryPages: 16,
		Entrypoint: "_start", Args: append([]string{name}, args...), StderrCap: 1 << 10}
}

func TestASpareInstanceIsAsFreshAsANewOne(t *testing.T) {
	d := newSpareDriver(t)
	const want = "Content-Type: text/plain\n\nglobal=0 data=A heap=0 pages=1 grown=0\n"
	spares := 0
	for i := range 6 {
		out, hadSpare := d.run(runOf(t, "fresh"))
		if out != want {
			t.Fatalf("request %d (spare: %v) saw %q, want %q: state of an earlier request leaked", i, hadSpare, out, want)
		}
		if hadSpare {
			spares++
		}
	}
	// The first two requests make the streak; the others find a spare.
	if spares != 4 {
		t.Fatalf("%d of 6 requests used a spare, want 4", spares)
	}
}

func TestASpareInstanceGetsItsRequestsInput(t *testing.T) {
	d := newSpareDriver(t)
	for i := range 4 {
		m := runOf(t, "echo")
		m.Stdin = fmt.Appendf(nil, "body of request %d", i)
		out, hadSpare := d.run(m)
		if want := "Content-Type: application/octet-stream\n\n" + string(m.Stdin); out != want {
			t.Fatalf("request %d (spare: %v): %q, want %q", i, hadSpare, out, want)
		}
		if hadSpare != (i >= 2) {
			t.Fatalf("request %d: spare %v, want %v", i, hadSpare, i >= 2)
		}
	}
	for i := range 4 {
		m := runOf(t, "env", "same")
		m.Env = []string{fmt.Sprintf("N=%d", i)}
		out, _ := d.run(m)
		if want := fmt.Sprintf("argv[0]=env\nargv[1]=same\nenv:N=%d\n", i); !bytes.HasSuffix([]byte(out), []byte(want)) {
			t.Fatalf("request %d: %q, want it to end with %q", i, out, want)
		}
	}
}

func TestASpareIsNotUsedForOtherArgumentsOrAnotherModule(t *testing.T) {
	d := newSpareDriver(t)
	d.run(runOf(t, "env", "a"))
	d.run(runOf(t, "env", "a"))
	out, hadSpare := d.run(runOf(t, "env", "b"))
	if !hadSpare {
		t.Fatal("no spare was waiting after two requests to the same module")
	}
	if want := "argv[0]=env\nargv[1]=b\n"; !bytes.Contains([]byte(out), []byte(want)) {
		t.Fatalf("%q, want the request's own arguments %q, not the spare's", out, want)
	}
	// A route whose query string varies: no spare is made, to be thrown
	// away by the next request.
	for i := range 4 {
		if out, hadSpare := d.run(runOf(t, "env", fmt.Sprint(i))); hadSpare || !strings.Contains(out, fmt.Sprintf("argv[1]=%d\n", i)) {
			t.Fatalf("request %d with its own arguments: spare %v, %q", i, hadSpare, out)
		}
	}
	d.run(runOf(t, "fresh"))
	d.run(runOf(t, "fresh"))
	if d.e.spare.mod == nil {
		t.Fatal("no spare after two requests to the same module")
	}
	if out, _ := d.run(runOf(t, "hello")); out != "Content-Type: text/plain\n\nHello, world!\n" {
		t.Fatalf("hello after fresh's spare: %q", out)
	}
	if d.e.spare.mod != nil {
		t.Fatal("a spare was made after one request to a module")
	}
}

// A module whose instantiation is costly gets no spare: a request for
// another module that came while its spare was being made would wait for
// it, with its own limits running.
func TestAModuleWithACostlyInstantiationGetsNoSpare(t *testing.T) {
	dir := t.TempDir()
	const elements = 1_000_000 // within wasmbound.Default's 1 Mi table elements
	wat := "(module (func $f) (func (export \"_start\")) (table " + fmt.Sprint(elements) + " funcref)\n(elem (i32.const 0) func" +
		strings.Repeat(" $f", elements) + "))\n"
	if err := os.WriteFile(filepath.Join(dir, "costly.wat"), []byte(wat), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "costly.wasm")
	if out, err := exec.Command("wat2wasm", "-o", path, filepath.Join(dir, "costly.wat")).CombinedOutput(); err != nil {
		t.Fatalf("wat2wasm: %v\n%s", err, out)
	}
	d := newSpareDriver(t)
	m := &ipc.Run{ModuleKey: "costly", ModulePath: path, MemoryPages: 16, Entrypoint: "_start", Args: []string{"costly"}}
	for i := range 4 {
		if _, hadSpare := d.run(m); hadSpare {
			t.Fatalf("request %d found a spare of a module whose instantiation took %v", i, d.e.spare.cost)
		}
		if d.e.spare.cost <= spareMaxInstantiate {
			t.Fatalf("instantiating %d table elements took %v, not over %v: the test needs a costlier module", elements, d.e.spare.cost, spareMaxInstantiate)
		}
	}
}
