package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Every request runs in a fresh instance with fresh memory, also when its
// instance was made ahead of it (a spare, child/spare.go) and its memory
// reused from an earlier request's. One child serves every request here, so
// requests in a row to one module find a spare.
func TestEveryRequestSeesAFreshInstanceAlsoFromASpare(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	w := startWagi(t, bin, dir, `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 1

[[module]]
route = "/fresh"
module = "{{mods}}/fresh.wasm"

[[module]]
route = "/echo"
module = "{{mods}}/echo.wasm"

[[module]]
route = "/gohello"
module = "{{mods}}/gohello.wasm"
`, "--http", addr)
	waitListening(t, "tcp", addr, w.done, 20*time.Second, "--http", func() string { return "log:\n" + w.log.String() })
	c := newClient(t, "http://"+addr)

	const fresh = "global=0 data=A heap=0 pages=1 grown=0\n"
	for i, path := range []string{"/fresh", "/fresh", "/fresh", "/fresh", "/fresh?other&args", "/fresh?other&args",
		"/gohello", "/gohello", "/gohello", "/fresh", "/fresh", "/fresh"} {
		r := c.get(path)
		if r.status != 200 {
			t.Fatalf("request %d, GET %s: %d %q", i, path, r.status, r.body)
		}
		if strings.HasPrefix(path, "/fresh") && string(r.body) != fresh {
			t.Fatalf("request %d, GET %s: %q, want %q: an earlier request's state leaked", i, path, r.body, fresh)
		}
	}
	for i := range 4 {
		body := fmt.Sprintf("the body of request %d", i)
		if r := c.do("POST", "/echo", []byte(body)); r.status != 200 || string(r.body) != body {
			t.Fatalf("POST %d: %d %q, want %q", i, r.status, r.body, body)
		}
	}
}
