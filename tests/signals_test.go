package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const reloadConfig = `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
log_file = "{{dir}}/wagi.log"
log_format = "json"
[pool]
children = 2
queue = 256
[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"
[[module]]
route = "/sleep"
module = "{{mods}}/sleep.wasm"
`

// extra is appended to reloadConfig to change it between reloads.
const extraRoute = `
[[module]]
route = "/new%d"
module = "{{mods}}/echo.wasm"
`

func TestSignals(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	w := startWagi(t, bin, dir, reloadConfig)
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)
	cfgPath := filepath.Join(dir, "wagi.toml")
	logPath := filepath.Join(dir, "wagi.log")
	logText := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	waitLog := func(sub string, count int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for strings.Count(logText(), sub) < count {
			if time.Now().After(deadline) {
				t.Fatalf("log never had %d × %q:\n%s", count, sub, tail(logText(), 20))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	t.Run("the JSON log has one line per request and per child event", func(t *testing.T) {
		if r := c.get("/hello"); r.status != 200 {
			t.Fatalf("got %d", r.status)
		}
		waitLog(`"msg":"request"`, 1)
		var req map[string]any
		for _, line := range strings.Split(logText(), "\n") {
			if strings.Contains(line, `"msg":"request"`) && strings.Contains(line, `"path":"/hello"`) {
				if err := json.Unmarshal([]byte(line), &req); err != nil {
					t.Fatalf("%q: %v", line, err)
				}
			}
		}
		for _, k := range []string{"id", "method", "path", "route", "module", "status", "wall", "cpu", "bytes"} {
			if _, ok := req[k]; !ok {
				t.Errorf("the request line has no %q: %v", k, req)
			}
		}
		if req["status"] != float64(200) || req["route"] != "/hello" {
			t.Errorf("request line %v", req)
		}
		if strings.Count(logText(), `"msg":"child started"`) < 2 {
			t.Errorf("no child start events:\n%s", tail(logText(), 10))
		}
	})

	t.Run("SIGHUP reloads 20 times under load with no failed request", func(t *testing.T) {
		var ok, failed atomic.Int64
		var lastErr atomic.Value
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					r := c.get("/hello")
					if r.status == 200 && string(r.body) == "Hello, world!\n" {
						ok.Add(1)
					} else {
						failed.Add(1)
						lastErr.Store(fmt.Sprintf("%d %q", r.status, r.body))
					}
				}
			}()
		}
		for i := 1; i <= 20; i++ {
			text := expand(t, reloadConfig+fmt.Sprintf(extraRoute, i), dir)
			if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := w.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			waitLog(`"msg":"reloaded"`, i)
			if r := c.do("POST", fmt.Sprintf("/new%d", i), []byte("fresh route")); r.status != 200 || string(r.body) != "fresh route" {
				t.Fatalf("route added by reload %d: %d %q", i, r.status, r.body)
			}
		}
		close(stop)
		wg.Wait()
		if failed.Load() != 0 || ok.Load() == 0 {
			t.Fatalf("%d ok, %d failed during reloads (last: %v)", ok.Load(), failed.Load(), lastErr.Load())
		}
		t.Logf("%d requests during 20 reloads, 0 failed", ok.Load())
		// The old generations' children are gone.
		w.waitChildren(t, 2, 35*time.Second)
	})

	t.Run("a bad config is refused and the running one keeps serving", func(t *testing.T) {
		if err := os.WriteFile(cfgPath, []byte(expand(t, reloadConfig+"\n[[module]]\nrute = \"/typo\"\n", dir)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := w.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitLog("reload refused", 1)
		if !strings.Contains(logText(), `unknown key \"rute\"`) {
			t.Fatalf("the refusal does not say why:\n%s", tail(logText(), 5))
		}
		if r := c.get("/hello"); r.status != 200 {
			t.Fatalf("after a refused reload: %d", r.status)
		}
		if r := c.do("POST", "/new20", []byte("x")); r.status != 200 {
			t.Fatalf("the running config's routes are gone: %d", r.status)
		}
	})

	t.Run("SIGUSR1 reopens the log file after rotation", func(t *testing.T) {
		if err := os.Rename(logPath, logPath+".1"); err != nil {
			t.Fatal(err)
		}
		if err := w.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		waitLog("log file reopened", 1)
		c.get("/hello")
		waitLog(`"path":"/hello"`, 1)
	})

	t.Run("SIGTERM lets a request in flight finish, then exits", func(t *testing.T) {
		done := make(chan response, 1)
		go func() { done <- c.get("/sleep?1500") }()
		time.Sleep(400 * time.Millisecond)
		start := time.Now()
		if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		r := <-done
		if r.status != 200 || string(r.body) != "slept\n" {
			t.Fatalf("the request in flight got %d %q", r.status, r.body)
		}
		select {
		case <-w.done:
		case <-time.After(10 * time.Second):
			t.Fatal("the manager did not exit after draining")
		}
		if d := time.Since(start); d > 8*time.Second {
			t.Fatalf("exit took %s", d)
		}
		if code := w.cmd.ProcessState.ExitCode(); code != 0 {
			t.Fatalf("exit code %d", code)
		}
	})
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
