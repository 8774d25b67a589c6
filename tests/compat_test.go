package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// requestID is the request id a wagi-fcgi 5xx body carries.
func requestID(t *testing.T, body []byte) string {
	t.Helper()
	m := regexp.MustCompile(`request id: (\S+)`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("no request id in %q", body)
	}
	return string(m[1])
}

const wrongEntrypointConfig = `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 1

[[module]]
route = "/good"
module = "{{mods}}/hello.wasm"

[[module]]
route = "/bad"
module = "{{mods}}/hello.wasm"
entrypoint = "no_such_export"
`

func TestAWrongEntrypointBreaksOnlyItsRoute(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	w := startWagi(t, bin, dir, wrongEntrypointConfig)
	w.log.waitFor(t, 10*time.Second, "entrypoint not exported", "hello.wasm")
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	if r := c.get("/good"); r.status != 200 || !strings.Contains(string(r.body), "Hello, world!") {
		t.Fatalf("/good: %d %q, want 200 with the greeting", r.status, r.body)
	}
	r := c.get("/bad")
	if r.status != 500 {
		t.Fatalf("/bad: %d %q, want 500", r.status, r.body)
	}
	if strings.Contains(string(r.body), "no_such_export") {
		t.Errorf("/bad: the reason is in the body (it belongs in the log): %q", r.body)
	}
	id := requestID(t, r.body)
	w.log.waitFor(t, 5*time.Second, "id="+id, `entrypoint \"no_such_export\" is not an exported function`)
	// And it stays that way: the good route still serves after it.
	if r := c.get("/good"); r.status != 200 {
		t.Fatalf("/good after /bad: %d %q", r.status, r.body)
	}
}

func TestCheckWarnsOfAWrongEntrypointAndStrictFails(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	cfg := filepath.Join(dir, "wagi.toml")
	if err := os.WriteFile(cfg, []byte(expand(t, wrongEntrypointConfig, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"check warns, names the file and line, and passes", []string{"check", "-c", cfg}, 0,
			[]string{"warning: " + cfg + ":11:", `"no_such_export"`, "/bad", "ok, 2 modules"}},
		{"check --strict fails on the warning", []string{"check", "--strict", "-c", cfg}, 1,
			[]string{cfg + ":11:", "--strict"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, errs, code := runBin(t, bin, nil, tc.args...)
			all := out + errs
			if code != tc.code {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.code, all)
			}
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("output lacks %q:\n%s", w, all)
				}
			}
		})
	}
}

// helloWAT is a WebAssembly text module in the spirit of WAGI's
// examples/hello.wat: a CGI response written with one fd_write.
const helloWAT = `(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory 1)
  (export "memory" (memory 0))
  (data (i32.const 8) "content-type: text/plain\n\nOh hi from text\n")
  (func $main (export "_start")
    (i32.store (i32.const 0) (i32.const 8))  ;; iov.buf
    (i32.store (i32.const 4) (i32.const 42)) ;; iov.len
    (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 60))
    drop))
`

// preview0WAT imports only WASI preview0 (wasi_unstable), as the first
// WASI toolchains emitted: environment and argument sizes, the clock,
// fd_write and proc_exit.
const preview0WAT = `(module
  (import "wasi_unstable" "args_sizes_get" (func $args_sizes (param i32 i32) (result i32)))
  (import "wasi_unstable" "environ_sizes_get" (func $env_sizes (param i32 i32) (result i32)))
  (import "wasi_unstable" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_unstable" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_unstable" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "content-type: text/plain\n\nhello from wasi_unstable\n")
  (func (export "_start")
    (if (call $args_sizes (i32.const 200) (i32.const 204)) (then (call $exit (i32.const 3))))
    (if (call $env_sizes (i32.const 208) (i32.const 212)) (then (call $exit (i32.const 4))))
    ;; A CGI request has environment variables.
    (if (i32.eqz (i32.load (i32.const 208))) (then (call $exit (i32.const 5))))
    (if (call $clock (i32.const 0) (i64.const 1) (i32.const 216)) (then (call $exit (i32.const 6))))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 51))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const 0))))
`

// preview0StatWAT imports a preview0 function whose ABI differs from
// preview1's (filestat has a 32-bit nlink): refused at load.
const preview0StatWAT = `(module
  (import "wasi_unstable" "fd_filestat_get" (func $stat (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (drop (call $stat (i32.const 1) (i32.const 0)))))
`

// badWAT does not convert: line 3 has an instruction that does not exist.
const badWAT = `(module
  (func (export "_start")
    (i32.bogus)))
`

// writeFiles writes name → text into dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestTextModulesServeThroughNginx(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	writeFiles(t, dir, map[string]string{"hello.wat": helloWAT, "unstable.wat": preview0WAT})
	w := startWagi(t, bin, dir, `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 1

[[module]]
route = "/hello"
module = "{{dir}}/hello.wat"

[[module]]
route = "/unstable"
module = "{{dir}}/unstable.wat"

[[module]]
route = "/binary"
module = "{{mods}}/hello.wasm"
`)
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)
	cases := []struct{ path, body string }{
		{"/hello", "Oh hi from text\n"},
		{"/unstable", "hello from wasi_unstable\n"},
		{"/binary", "Hello, world!\n"},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			r := c.get(tc.path)
			if r.status != 200 || string(r.body) != tc.body {
				t.Fatalf("%d %q, want 200 %q", r.status, r.body, tc.body)
			}
		})
	}
}

func TestTextModulesFromIPFS(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	hello := k.AddBytes(t, []byte(helloWAT))
	unstable := k.AddBytes(t, []byte(preview0WAT))
	bad := k.AddBytes(t, []byte(badWAT))
	stat := k.AddBytes(t, []byte(preview0StatWAT))
	w := startWagi(t, bin, dir, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 1

[ipfs]
api = %q
gateway = "/ipfs/"
allow = [%q, %q]

[[module]]
route = "/hello"
module = "ipfs://%s"

[[module]]
route = "/bad"
module = "ipfs://%s"

[[module]]
route = "/stat"
module = "/ipfs/%s"
`, k.API, hello, unstable, hello, bad, stat))
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	t.Run("a text module serves by CID from the config", func(t *testing.T) {
		if r := c.get("/hello"); r.status != 200 || string(r.body) != "Oh hi from text\n" {
			t.Fatalf("%d %q", r.status, r.body)
		}
	})
	t.Run("a text module serves through the gateway", func(t *testing.T) {
		if r := c.get("/ipfs/" + unstable + "/x"); r.status != 200 || string(r.body) != "hello from wasi_unstable\n" {
			t.Fatalf("%d %q", r.status, r.body)
		}
	})
	t.Run("malformed text answers 502, the wat2wasm error with its line in the log", func(t *testing.T) {
		r := c.get("/bad")
		if r.status != 502 {
			t.Fatalf("%d %q, want 502", r.status, r.body)
		}
		w.log.waitFor(t, 5*time.Second, "id="+requestID(t, r.body), "line 3, column 6", "i32.bogus")
	})
	t.Run("a refused wasi_unstable import answers 502 and is named in the log", func(t *testing.T) {
		r := c.get("/stat")
		if r.status != 502 {
			t.Fatalf("%d %q, want 502", r.status, r.body)
		}
		w.log.waitFor(t, 5*time.Second, "id="+requestID(t, r.body), "wasi_unstable.fd_filestat_get", "nlink")
	})
	t.Run("without wat2wasm a fetched text module answers 502 naming it in the log", func(t *testing.T) {
		dir := t.TempDir()
		// The manager looks wat2wasm up in its PATH when it starts.
		t.Setenv("PATH", "/nonexistent")
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		w := startWagi(t, bin, dir, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 1
[ipfs]
api = %q
[[module]]
route = "/hello"
module = "ipfs://%s"
`, k.API, hello), "--http", addr)
		r := newClient(t, "http://"+addr).get("/hello")
		if r.status != 502 {
			t.Fatalf("%d %q, want 502", r.status, r.body)
		}
		w.log.waitFor(t, 5*time.Second, "id="+requestID(t, r.body), "wat2wasm", "wabt")
	})
}

func TestCheckNamesWhatIsWrongWithATextModule(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	writeFiles(t, dir, map[string]string{"hello.wat": helloWAT, "bad.wat": badWAT, "stat.wat": preview0StatWAT})
	cases := []struct {
		name   string
		module string
		env    []string
		code   int
		want   []string
	}{
		{"a good text module passes", "hello.wat", nil, 0, []string{"ok, 1 modules"}},
		{"malformed text is named with the config line and its own", "bad.wat", nil, 1,
			[]string{"wagi.toml:2:", "bad.wat", "line 3, column 6", "i32.bogus"}},
		{"a refused wasi_unstable import is named", "stat.wat", nil, 1,
			[]string{"wagi.toml:2:", "wasi_unstable.fd_filestat_get"}},
		{"without wat2wasm a text module is a config error naming it", "hello.wat", []string{"PATH=/nonexistent"}, 1,
			[]string{"wagi.toml:2:", "hello.wat", "wat2wasm", "wabt"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(dir, "wagi.toml")
			text := fmt.Sprintf("state_dir = %q\n[[module]]\nroute = \"/x\"\nmodule = %q\n", filepath.Join(dir, "state"), filepath.Join(dir, tc.module))
			if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "check", "-c", cfg)
			cmd.Env = append(os.Environ(), tc.env...)
			out, err := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != tc.code {
				t.Fatalf("exit %d (%v), want %d:\n%s", code, err, tc.code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestRunRunsATextModule(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	writeFiles(t, dir, map[string]string{"hello.wat": helloWAT})
	state := filepath.Join(dir, "state")
	out, errs, code := runBin(t, bin, nil, "run", "--state-dir", state, filepath.Join(dir, "hello.wat"))
	if code != 0 || out != "content-type: text/plain\n\nOh hi from text\n" {
		t.Fatalf("exit %d, stdout %q, stderr %s", code, out, errs)
	}

	t.Run("without wat2wasm it says what is missing", func(t *testing.T) {
		cmd := exec.Command(bin, "run", "--state-dir", filepath.Join(dir, "state2"), filepath.Join(dir, "hello.wat"))
		cmd.Env = append(os.Environ(), "PATH=/nonexistent")
		b, _ := cmd.CombinedOutput()
		if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(b), "wat2wasm") || !strings.Contains(string(b), "wabt") {
			t.Fatalf("exit %d: %s", cmd.ProcessState.ExitCode(), b)
		}
		// A binary module needs no wat2wasm.
		cmd = exec.Command(bin, "run", "--state-dir", filepath.Join(dir, "state2"), testenv.Module(t, "hello"))
		cmd.Env = append(os.Environ(), "PATH=/nonexistent")
		if b, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(b), "Hello, world!") {
			t.Fatalf("binary module without wat2wasm: %v: %s", err, b)
		}
	})
}

// compiledCPU is the CPU the manager collected for the compile in log
// (its "module compiled" line, from `run`): the figure it charges to the
// module.
func compiledCPU(t *testing.T, log string) time.Duration {
	t.Helper()
	m := regexp.MustCompile(`msg="module compiled".* cpu=(\S+)`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no \"module compiled\" line with cpu in:\n%s", log)
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestTheConversionCPUIsChargedLikeTheCompile(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	// 6 MB of data written as 18 MB of escapes: much work for wat2wasm,
	// little for the compiler.
	text := `(module (memory 200) (data (i32.const 0) "` + strings.Repeat(`\ab`, 6<<20) + `") (func (export "_start")))`
	writeFiles(t, dir, map[string]string{"big.wat": text})
	conv := exec.Command("wat2wasm", "-o", filepath.Join(dir, "big.wasm"), filepath.Join(dir, "big.wat"))
	if b, err := conv.CombinedOutput(); err != nil {
		t.Fatalf("wat2wasm: %v: %s", err, b)
	}
	watCPU := conv.ProcessState.UserTime() + conv.ProcessState.SystemTime()

	_, errs, code := runBin(t, bin, nil, "run", "--state-dir", filepath.Join(dir, "s1"), filepath.Join(dir, "big.wat"))
	if code != 0 {
		t.Fatalf("big.wat: exit %d: %s", code, errs)
	}
	textCPU := compiledCPU(t, errs)
	_, errs, code = runBin(t, bin, nil, "run", "--state-dir", filepath.Join(dir, "s2"), filepath.Join(dir, "big.wasm"))
	if code != 0 {
		t.Fatalf("big.wasm: exit %d: %s", code, errs)
	}
	binCPU := compiledCPU(t, errs)
	t.Logf("wat2wasm alone %s; compile charged: text %s, binary %s", watCPU, textCPU, binCPU)
	if textCPU-binCPU < watCPU/2 {
		t.Fatalf("the text compile was charged %s, the binary's %s: less than half of wat2wasm's own %s more (its CPU is not in the rusage)",
			textCPU, binCPU, watCPU)
	}
}

// A module author's text that crashes wat2wasm (a failed assertion, a
// stack overflow) is remembered as bad for what it is: the operator is not
// told to raise compile_memory for it.
func TestTextThatCrashesWat2wasmIsNotBlamedOnCompileMemory(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	writeFiles(t, dir, map[string]string{
		"quote.wat": `(module quote "(module)")`,
		"deep.wat":  "(module (func " + strings.Repeat("(block ", 2_000_000) + strings.Repeat(")", 2_000_000) + "))",
	})
	for _, tc := range []struct{ module, signal string }{
		{"quote.wat", "signal: aborted"},
		{"deep.wat", "signal: segmentation fault"},
	} {
		t.Run(tc.module, func(t *testing.T) {
			cfg := filepath.Join(dir, "wagi.toml")
			text := fmt.Sprintf("state_dir = %q\n[[module]]\nroute = \"/x\"\nmodule = %q\n", filepath.Join(dir, "state"), filepath.Join(dir, tc.module))
			if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "check", "-c", cfg)
			out, _ := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != 1 {
				t.Fatalf("exit %d, want 1:\n%s", code, out)
			}
			for _, w := range []string{"wagi.toml:2:", tc.module, "wat2wasm crashed on it", tc.signal} {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(string(out), "compile_memory") {
				t.Errorf("the crash is blamed on compile_memory:\n%s", out)
			}
		})
	}
}
