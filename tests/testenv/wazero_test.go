package testenv_test

// These tests run the fixtures with plain wazero + WASI preview 1, to prove
// the modules behave as documented independently of our server.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// harness is one wazero runtime with WASI preview 1, closed at the end of the test.
type harness struct {
	t   *testing.T
	ctx context.Context
	r   wazero.Runtime
}

func newHarness(t *testing.T, ctx context.Context, rc wazero.RuntimeConfig) *harness {
	t.Helper()
	if rc == nil {
		rc = wazero.NewRuntimeConfig()
	}
	r := wazero.NewRuntimeWithConfig(ctx, rc)
	t.Cleanup(func() { r.Close(context.Background()) })
	wasi_snapshot_preview1.MustInstantiate(ctx, r)
	return &harness{t: t, ctx: ctx, r: r}
}

func (h *harness) compile(name string) wazero.CompiledModule {
	h.t.Helper()
	b, err := os.ReadFile(testenv.Module(h.t, name))
	if err != nil {
		h.t.Fatal(err)
	}
	c, err := h.r.CompileModule(h.ctx, b)
	if err != nil {
		h.t.Fatalf("compiling %s: %v", name, err)
	}
	return c
}

// result is what one run of a module produced.
type result struct {
	stdout, stderr string
	err            error
}

// run instantiates (and so runs the start functions of) module name with cfg,
// capturing stdout and stderr unless cfg already set them.
func (h *harness) run(name string, cfg wazero.ModuleConfig) result {
	h.t.Helper()
	return h.runCompiled(h.compile(name), cfg)
}

func (h *harness) runCompiled(c wazero.CompiledModule, cfg wazero.ModuleConfig) result {
	h.t.Helper()
	var stdout, stderr bytes.Buffer
	if cfg == nil {
		cfg = newConfig()
	}
	cfg = cfg.WithStdout(&stdout).WithStderr(&stderr)
	mod, err := h.r.InstantiateModule(h.ctx, c, cfg)
	if mod != nil {
		mod.Close(h.ctx)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), err: err}
}

// newConfig is an anonymous module config (several instances may coexist).
func newConfig(args ...string) wazero.ModuleConfig {
	return wazero.NewModuleConfig().WithName("").WithArgs(args...)
}

func exitCode(err error) (uint32, bool) {
	var ee *sys.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), true
	}
	return 0, false
}

func wantOK(t *testing.T, name string, res result, stdout string) {
	t.Helper()
	if res.err != nil {
		t.Errorf("%s: err = %v, want success", name, res.err)
	}
	if res.stdout != stdout {
		t.Errorf("%s: stdout = %q, want %q", name, res.stdout, stdout)
	}
}

// binaryBody is n bytes covering every byte value, CR/LF and NUL included.
func binaryBody(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/256)
	}
	return b
}

func TestWazeroHello(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	wantOK(t, "hello", h.run("hello", newConfig("/hello")), "Content-Type: text/plain\n\nHello, world!\n")
}

func TestWazeroEnv(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	cfg := newConfig("/env", "a", "", "b c", "x%20y").
		WithEnv("REQUEST_METHOD", "GET").
		WithEnv("K2", "v=2").
		WithEnv("EMPTY", "")
	want := "Content-Type: text/plain\n\n" +
		"argv[0]=/env\nargv[1]=a\nargv[2]=\nargv[3]=b c\nargv[4]=x%20y\n" +
		"env:REQUEST_METHOD=GET\nenv:K2=v=2\nenv:EMPTY=\n"
	wantOK(t, "env", h.run("env", cfg), want)

	// No arguments and no environment at all (how _routes is run).
	wantOK(t, "env (empty)", h.run("env", wazero.NewModuleConfig().WithName("")), "Content-Type: text/plain\n\n")
}

func TestWazeroEcho(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	for _, name := range []string{"echo", "goecho"} {
		c := h.compile(name)
		for _, n := range []int{0, 1, 65536, 300001} {
			body := binaryBody(n)
			res := h.runCompiled(c, newConfig("/"+name).WithStdin(bytes.NewReader(body)))
			want := "Content-Type: application/octet-stream\n\n" + string(body)
			if res.err != nil || res.stdout != want {
				t.Errorf("%s with %d bytes: err = %v, stdout %d bytes (want %d), equal = %v",
					name, n, res.err, len(res.stdout), len(want), res.stdout == want)
			}
		}
	}
}

func TestWazeroRaw(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	out := "Status: 302 Found\r\nLocation: /x\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Bad: \x01\r\n\r\n" +
		string(binaryBody(100000))
	wantOK(t, "raw", h.run("raw", newConfig("/raw").WithStdin(strings.NewReader(out))), out)
	wantOK(t, "raw (empty)", h.run("raw", newConfig("/raw")), "")
}

func TestWazeroExit(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	c := h.compile("exit")
	const out = "Content-Type: text/plain\n\nexiting\n"
	wantOK(t, "exit", h.runCompiled(c, newConfig("/exit")), out)
	wantOK(t, "exit 0", h.runCompiled(c, newConfig("/exit", "0")), out)
	for _, code := range []uint32{1, 3, 255} {
		res := h.runCompiled(c, newConfig("/exit", strconv.Itoa(int(code))))
		got, ok := exitCode(res.err)
		if !ok || got != code {
			t.Errorf("exit %d: err = %v, want exit code %d", code, res.err, code)
		}
		if res.stdout != out {
			t.Errorf("exit %d: stdout = %q, want %q", code, res.stdout, out)
		}
	}
}

func TestWazeroStderr(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	c := h.compile("stderr")
	for _, tc := range []struct {
		args  []string
		lines int
	}{{[]string{"/stderr"}, 3}, {[]string{"/stderr", ""}, 3}, {[]string{"/stderr", "2"}, 2}, {[]string{"/stderr", "0"}, 0}} {
		res := h.runCompiled(c, newConfig(tc.args...))
		wantOK(t, "stderr", res, "Content-Type: text/plain\n\nok\n")
		var want strings.Builder
		for i := 1; i <= tc.lines; i++ {
			fmt.Fprintf(&want, "line %d to stderr\n", i)
		}
		if res.stderr != want.String() {
			t.Errorf("stderr %q: stderr = %q, want %q", tc.args, res.stderr, want.String())
		}
	}
}

func TestWazeroSleep(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	start := time.Now()
	res := h.run("sleep", newConfig("/sleep", "150").WithSysNanosleep().WithSysNanotime().WithSysWalltime())
	elapsed := time.Since(start)
	wantOK(t, "sleep", res, "Content-Type: text/plain\n\nslept\n")
	if elapsed < 150*time.Millisecond {
		t.Errorf("sleep 150: returned after %v", elapsed)
	}
}

func TestWazeroFiles(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	c := h.compile("files")
	rw, ro := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(ro, "a.txt"), []byte("static\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fsc := wazero.NewFSConfig().WithDirMount(rw, "/data").WithReadOnlyDirMount(ro, "/static")
	run := func(stdin string, args ...string) result {
		return h.runCompiled(c, newConfig(append([]string{"/files"}, args...)...).
			WithFSConfig(fsc).WithStdin(strings.NewReader(stdin)))
	}
	const text = "Content-Type: text/plain\n\n"
	body := string(binaryBody(70000))

	wantOK(t, "read static", run("", "read", "/static/a.txt"), text+"static\n")
	wantOK(t, "write", run(body, "write", "/data/b.bin"), text+"wrote 70000\n")
	wantOK(t, "append", run("tail", "append", "/data/b.bin"), text+"wrote 4\n")
	wantOK(t, "read back", run("", "read", "/data/b.bin"), text+body+"tail")
	if b, err := os.ReadFile(filepath.Join(rw, "b.bin")); err != nil || string(b) != body+"tail" {
		t.Errorf("host file b.bin: %d bytes, err %v", len(b), err)
	}
	wantOK(t, "write truncates", run("short", "write", "/data/b.bin"), text+"wrote 5\n")
	wantOK(t, "read short", run("", "read", "/data/b.bin"), text+"short")
	wantOK(t, "write c", run("", "write", "/data/c.txt"), text+"wrote 0\n")
	if err := os.Mkdir(filepath.Join(rw, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	wantOK(t, "ls", run("", "ls", "/data"), text+"b.bin\nc.txt\nsub\n")

	wantOK(t, "read missing", run("", "read", "/data/missing"),
		"Status: 404 Not Found\n"+text+"No such file or directory\n")
	wantOK(t, "ls missing", run("", "ls", "/data/missing"),
		"Status: 404 Not Found\n"+text+"No such file or directory\n")
	res := run("x", "write", "/static/new.txt")
	if res.err != nil || !strings.HasPrefix(res.stdout, "Status: 500 Internal Server Error\n"+text) {
		t.Errorf("write to read-only mount: err = %v, stdout = %q", res.err, res.stdout)
	}
	t.Logf("write to read-only mount answers %q", res.stdout)
	res = run("x", "write", "/elsewhere/new.txt")
	if res.err != nil || !strings.HasPrefix(res.stdout, "Status: 500 Internal Server Error\n"+text) {
		t.Errorf("write outside mounts: err = %v, stdout = %q", res.err, res.stdout)
	}
	res = run("", "read")
	if res.err != nil || !strings.HasPrefix(res.stdout, "Status: 400 Bad Request\n") {
		t.Errorf("missing path: err = %v, stdout = %q", res.err, res.stdout)
	}
}

// failingWriter accepts limit bytes, then fails every write.
type failingWriter struct {
	buf   bytes.Buffer
	limit int
}

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.buf.Len()+len(p) > w.limit {
		return 0, errors.New("output limit")
	}
	return w.buf.Write(p)
}

func TestWazeroFlood(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	w := &failingWriter{limit: 4 << 20}
	mod, err := h.r.InstantiateModule(h.ctx, h.compile("flood"), newConfig("/flood").WithStdout(w))
	if mod != nil {
		mod.Close(h.ctx)
	}
	if code, ok := exitCode(err); !ok || code != 1 {
		t.Errorf("flood: err = %v, want exit code 1 once writes fail", err)
	}
	const header = "Content-Type: text/plain\n\n"
	out := w.buf.String()
	if !strings.HasPrefix(out, header) || len(out) < 1<<20 ||
		strings.Trim(out[len(header):], "x") != "" {
		t.Errorf("flood: %d bytes of output, want the header then at least 1 MiB of x", len(out))
	}
}

func TestWazeroLoop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	h := newHarness(t, ctx, wazero.NewRuntimeConfig().WithCloseOnContextDone(true))
	start := time.Now()
	res := h.run("loop", newConfig("/loop"))
	if res.err == nil {
		t.Fatal("loop: returned without error")
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 10*time.Second {
		t.Errorf("loop: stopped after %v, want at the 300ms deadline", d)
	}
	if res.stdout != "" {
		t.Errorf("loop: stdout = %q", res.stdout)
	}
}

func TestWazeroTrap(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	res := h.run("trap", newConfig("/trap"))
	if _, isExit := exitCode(res.err); res.err == nil || isExit || !strings.Contains(res.err.Error(), "unreachable") {
		t.Errorf("trap: err = %v, want an unreachable trap", res.err)
	}
	if res.stdout != "Content-Type: text/plain\n\n" {
		t.Errorf("trap: stdout = %q", res.stdout)
	}
}

func TestWazeroGrow(t *testing.T) {
	h := newHarness(t, context.Background(), wazero.NewRuntimeConfig().WithMemoryLimitPages(64))
	res := h.run("grow", newConfig("/grow"))
	if _, isExit := exitCode(res.err); res.err == nil || isExit || !strings.Contains(res.err.Error(), "unreachable") {
		t.Errorf("grow: err = %v, want an unreachable trap once memory.grow fails", res.err)
	}
}

func TestWazeroRoutes(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	c := h.compile("routes")
	const text = "Content-Type: text/plain\n\n"
	for _, tc := range []struct{ export, out string }{
		{"_routes", "/a a_handler\n/b/... b_handler\n"},
		{"a_handler", text + "a\n"},
		{"b_handler", text + "b\n"},
		{"_start", text + "parent\n"},
		{"other", text + "other entrypoint\n"},
	} {
		wantOK(t, "routes "+tc.export, h.runCompiled(c, newConfig().WithStartFunctions(tc.export)), tc.out)
		if f := c.ExportedFunctions()[tc.export]; f == nil || len(f.ParamTypes()) != 0 || len(f.ResultTypes()) != 0 {
			t.Errorf("routes: export %s is not a nullary function", tc.export)
		}
	}
	if _, ok := c.ExportedMemories()["memory"]; !ok {
		t.Error("routes: memory not exported")
	}

	b := h.compile("badroutes")
	wantOK(t, "badroutes _routes", h.runCompiled(b, newConfig().WithStartFunctions("_routes")), "nonsense\n")
	wantOK(t, "badroutes _start", h.runCompiled(b, newConfig()), text+"badroutes\n")
}

func TestWazeroNoHeaders(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	wantOK(t, "noheaders", h.run("noheaders", newConfig("/noheaders")), "just a body, no headers\n")
}

func TestWazeroBadImport(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	c := h.compile("badimport")
	found := false
	for _, f := range c.ImportedFunctions() {
		mod, name, _ := f.Import()
		if mod == "env" && name == "missing_host_function" &&
			equalTypes(f.ParamTypes(), []api.ValueType{api.ValueTypeI32}) &&
			equalTypes(f.ResultTypes(), []api.ValueType{api.ValueTypeI32}) {
			found = true
		}
	}
	if !found {
		t.Error("badimport: no import env.missing_host_function (i32) -> i32")
	}
	res := h.runCompiled(c, newConfig("/badimport"))
	if res.err == nil {
		t.Error("badimport: instantiated without error")
	}
	t.Logf("badimport: wazero says %v", res.err)
}

func equalTypes(a, b []api.ValueType) bool {
	return bytes.Equal(a, b)
}

func TestWazeroGoHello(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	cfg := newConfig("/gohello").WithEnv("REQUEST_METHOD", "POST").WithEnv("PATH_INFO", "/a;b")
	// proc_exit(0) is a success: wazero returns the module and a nil error.
	wantOK(t, "gohello", h.run("gohello", cfg),
		"Content-Type: text/plain\n\nHello from Go\nmethod=POST\npath_info=/a;b\n")
}

func TestNotWasmDoesNotCompile(t *testing.T) {
	h := newHarness(t, context.Background(), nil)
	b, err := os.ReadFile(testenv.Module(t, "notwasm"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.r.CompileModule(h.ctx, b); err == nil {
		t.Error("notwasm compiled")
	}
}
