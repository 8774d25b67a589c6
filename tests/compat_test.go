package tests

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
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
