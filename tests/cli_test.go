package tests

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runBin runs the binary and returns stdout, stderr and the exit code.
func runBin(t *testing.T, bin string, stdin []byte, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func TestCheckReportsEveryProblemWithItsPlace(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	cases := []struct {
		name   string
		config string
		code   int
		want   []string
	}{
		{"a good config lists its routes, sub-routes first", `
state_dir = "{{dir}}/state"
[[module]]
route = "/r/..."
module = "{{mods}}/routes.wasm"
`, 0, []string{"ok", "/r/b/...", "/r/a", "/r/..."}},
		{"a file that is not wasm is named", `
state_dir = "{{dir}}/state"
[[module]]
route = "/x"
module = "{{mods}}/notwasm.wasm"
`, 1, []string{"wagi.toml:3", "notwasm.wasm", "not a WebAssembly"}},
		{"an import wagi-fcgi does not provide is named", `
state_dir = "{{dir}}/state"
[[module]]
route = "/x"
module = "{{mods}}/badimport.wasm"
`, 1, []string{"badimport.wasm", "env.missing_host_function"}},
		{"an unknown key is named with its line", `
state_dir = "{{dir}}/state"

[[module]]
rute = "/x"
module = "{{mods}}/hello.wasm"
`, 1, []string{"wagi.toml:5", `"rute"`}},
		{"a bad value is named with its line", `
state_dir = "{{dir}}/state"
[limits]
timeout = "5 seconds"
`, 1, []string{"wagi.toml:4", "timeout", "5 seconds"}},
		{"a TOML syntax error has its line", `
state_dir = "{{dir}}/state"
[[module]
`, 1, []string{"wagi.toml:3"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(dir, "wagi.toml")
			if err := os.WriteFile(cfg, []byte(expand(t, tc.config, dir)), 0o644); err != nil {
				t.Fatal(err)
			}
			out, errs, code := runBin(t, bin, nil, "check", "-c", cfg)
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

func TestServeRefusesAConfigWithABrokenModule(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	cfg := filepath.Join(dir, "wagi.toml")
	text := expand(t, `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[[module]]
route = "/x"
module = "{{mods}}/badimport.wasm"
`, dir)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errs, code := runBin(t, bin, nil, "serve", "-c", cfg)
	if code != 1 || !strings.Contains(errs, "env.missing_host_function") {
		t.Fatalf("exit %d: %s", code, errs)
	}
}

func TestRunRunsOneModuleLikeACommand(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	mods := expand(t, "{{mods}}", dir)
	state := []string{"run", "--state-dir", filepath.Join(dir, "state")}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "in.txt"), []byte("mounted"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		args  []string
		stdin string
		code  int
		out   string
		err   string
	}{
		{"output goes to stdout", []string{mods + "/hello.wasm"}, "", 0, "Content-Type: text/plain\n\nHello, world!\n", ""},
		{"the exit code is the module's", []string{mods + "/exit.wasm", "5"}, "", 5, "exiting", ""},
		{"stdin is the terminal's", []string{mods + "/echo.wasm"}, "piped in", 0, "piped in", ""},
		{"arguments and --env reach the module", []string{"--env", "K=V", mods + "/env.wasm", "a", "b"}, "", 0, "argv[1]=a\nargv[2]=b\nenv:K=V\n", ""},
		{"--dir mounts a directory", []string{"--dir", "/d=" + data + ":ro", mods + "/files.wasm", "read", "/d/in.txt"}, "", 0, "mounted", ""},
		{"a module past --timeout is killed with status 124", []string{"--timeout", "300ms", mods + "/loop.wasm"}, "", 124, "", "limit"},
		{"a module past --cpu is killed with status 124", []string{"--cpu", "200ms", "--timeout", "10m", mods + "/loop.wasm"}, "", 124, "", "CPU"},
		{"a memory limit makes a memory bomb trap", []string{"--memory", "1MiB", mods + "/grow.wasm"}, "", 1, "", "trap"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdin []byte
			if tc.stdin != "" {
				stdin = []byte(tc.stdin)
			}
			out, errs, code := runBin(t, bin, stdin, append(state, tc.args...)...)
			if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errs, tc.err) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, out, errs, tc.code, tc.out, tc.err)
			}
		})
	}
}

func TestVersionPrintsTheStampedVersion(t *testing.T) {
	dir := t.TempDir()
	out, _, code := runBin(t, buildBinary(t, dir), nil, "version")
	if code != 0 || out != fmt.Sprintf("wagi-fcgi %s\n", testVersion) {
		t.Fatalf("got %d %q", code, out)
	}
}
