package tests

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// hostileConfig has one well-behaved route and one route per kind of
// hostile module.
const hostileConfig = `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 3
queue = 64
queue_timeout = "3s"
user = "nobody"

[limits]
timeout = "2s"
cpu = "1s"
max_output = "1MiB"

[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"

# The wall clock is only the backstop for the CPU-bound modules: a child
# is reniced to 19 after 20 ms of CPU, and on a loaded machine 300 ms of
# CPU can take half a minute of wall time (manager/RATIONALE.md).
[[module]]
route = "/loop"
module = "{{mods}}/loop.wasm"
cpu = "300ms"
timeout = "120s"

[[module]]
route = "/sleep"
module = "{{mods}}/sleep.wasm"
timeout = "500ms"

[[module]]
route = "/recurse"
module = "{{mods}}/recurse.wasm"
# wazero grows the guest stack a long way before it overflows (~0.1 s of
# CPU with wazero v1.12.0, ~2 s with earlier versions).
cpu = "8s"
timeout = "120s"

[[module]]
route = "/grow"
module = "{{mods}}/grow.wasm"
memory = "4MiB"

[[module]]
route = "/flood"
module = "{{mods}}/flood.wasm"

[[module]]
route = "/stderrflood"
module = "{{mods}}/stderrflood.wasm"
timeout = "500ms"

[[module]]
route = "/hog"
module = "{{mods}}/sleep.wasm"
max_concurrency = 1
timeout = "10s"

[[module]]
route = "/files"
module = "{{mods}}/files.wasm"
volumes = { "/data" = "{{dir}}/data" }
`

// logCPU reads the CPU charged (cpu=...) from a request log line.
func logCPU(t testing.TB, line string) time.Duration {
	t.Helper()
	_, v, _ := strings.Cut(line, " cpu=")
	v, _, _ = strings.Cut(v, " ")
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("no CPU in log line %q: %v", line, err)
	}
	return d
}

// neighbour hammers a well-behaved route until stopped and counts answers.
type neighbour struct {
	ok, failed atomic.Int64
	stop       chan struct{}
	done       sync.WaitGroup
	lastErr    atomic.Value
}

func startNeighbour(base string) *neighbour {
	n := &neighbour{stop: make(chan struct{})}
	hc := &http.Client{Timeout: 10 * time.Second}
	for i := 0; i < 2; i++ {
		n.done.Add(1)
		go func() {
			defer n.done.Done()
			for {
				select {
				case <-n.stop:
					return
				default:
				}
				resp, err := hc.Get(base + "/hello")
				if err != nil {
					n.failed.Add(1)
					n.lastErr.Store(err.Error())
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 && string(b) == "Hello, world!\n" {
					n.ok.Add(1)
				} else {
					n.failed.Add(1)
					n.lastErr.Store(fmt.Sprintf("%d %q", resp.StatusCode, b))
				}
			}
		}()
	}
	return n
}

// finish stops the neighbour and fails the test unless every one of its
// requests succeeded.
func (n *neighbour) finish(t *testing.T) {
	t.Helper()
	close(n.stop)
	n.done.Wait()
	if n.failed.Load() != 0 || n.ok.Load() == 0 {
		t.Fatalf("the well-behaved neighbour: %d ok, %d failed (last: %v)", n.ok.Load(), n.failed.Load(), n.lastErr.Load())
	}
}

func TestHostileModules(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "secret.txt")
	if err := os.WriteFile(secret, []byte("outside the volume"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(dir, "data", "link")); err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t, dir)
	// The children run as nobody: they must reach the binary and the
	// state directory, and write the volume.
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(dir, "data"), uid, -1); err != nil {
		t.Fatal(err)
	}
	w := startWagi(t, bin, dir, hostileConfig)
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)
	w.waitChildren(t, 3, 5*time.Second)

	t.Run("children are hardened", func(t *testing.T) {
		for _, pid := range w.children(t) {
			status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				t.Fatal(err)
			}
			// Effective uid pool.user's; the real one is the slot's own.
			if !regexp.MustCompile(`\nUid:\t[1-9][0-9]*\t` + nobody.Uid + `\t`).Match(status) {
				t.Errorf("child %d does not run as %s: %s", pid, nobody.Uid, status)
			}
			for _, want := range []string{"NoNewPrivs:\t1"} {
				if !strings.Contains(string(status), want) {
					t.Errorf("child %d: no %q in its status", pid, want)
				}
			}
			env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			if err != nil || len(env) != 0 {
				t.Errorf("child %d has an environment: %q %v", pid, env, err)
			}
			// stdin and stdout are /dev/null, stderr goes to the manager's
			// log, fd 3 was the IPC socket; anything else the child opened
			// itself (Go runtime). No descriptor of the manager leaks.
			fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			if err != nil {
				t.Fatal(err)
			}
			for _, fd := range fds {
				target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
				if strings.Contains(target, dir) || strings.Contains(target, ".sock") || strings.HasPrefix(target, "/work") {
					t.Errorf("child %d: fd %s -> %s leaked in", pid, fd.Name(), target)
				}
			}
			if lim, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid)); err != nil || !regexp.MustCompile(`Max core file size\s+0\s+0`).Match(lim) {
				t.Errorf("child %d: core dumps are not off: %v\n%s", pid, err, lim)
			}
		}
		if r := c.get("/hello"); r.status != 200 {
			t.Fatalf("a child running as nobody: %d %q", r.status, r.body)
		}
	})

	// Only wall-clock limits are checked against the wall clock, and
	// generously (the box is shared); a CPU limit is checked on the CPU
	// charged and the kill reason, which hold however loaded the box is.
	cases := []struct {
		name    string
		path    string
		status  int
		within  time.Duration // bound on the answer where the limit is wall time; 0: none
		cpuTo   time.Duration // the CPU limit: charged at least this, and at most 100 ms more; 0: unchecked
		logWant string
	}{
		{"a tight loop is killed at its CPU limit", "/loop", 504, 0, 300 * time.Millisecond, "reason=cpu"},
		{"a module sleeping in poll_oneoff is killed at its wall clock", "/sleep?60000", 504, 10 * time.Second, 0, "reason=timeout"},
		{"recursion to a stack overflow is a trap", "/recurse", 500, 0, 0, "stack overflow"},
		{"a memory bomb traps at the memory limit", "/grow", 500, 0, 0, "module failed"},
		{"a stderr flood is capped and killed at its wall clock", "/stderrflood", 504, 10 * time.Second, 0, "stderr limit reached"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nb := startNeighbour(n.base)
			start := time.Now()
			r := c.get(tc.path)
			took := time.Since(start)
			if r.status != tc.status {
				t.Errorf("status %d, want %d: %q", r.status, tc.status, r.body)
			}
			if tc.within > 0 && took > tc.within {
				t.Errorf("answered after %s, want within %s", took, tc.within)
			}
			if !strings.Contains(string(r.body), "request id: ") {
				t.Errorf("body %q has no request id", r.body)
			}
			w.log.waitFor(t, 10*time.Second, tc.logWant)
			if tc.cpuTo > 0 {
				line := w.log.waitFor(t, 10*time.Second, "msg=request", "path="+tc.path+" ", "cpu=")
				if used := logCPU(t, line); used < tc.cpuTo || used > tc.cpuTo+100*time.Millisecond {
					t.Errorf("charged %s of CPU, want %s to %s", used, tc.cpuTo, tc.cpuTo+100*time.Millisecond)
				}
			}
			w.waitChildren(t, 3, 10*time.Second)
			nb.finish(t)
		})
	}

	t.Run("a stdout flood is cut at max_output and the client sees a truncated response", func(t *testing.T) {
		nb := startNeighbour(n.base)
		resp, err := http.Get(n.base + "/flood")
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatalf("read %d bytes with no error: a cut stream must not look complete", len(b))
		}
		if len(b) > 1<<20 {
			t.Fatalf("%d bytes reached the client, over max_output", len(b))
		}
		w.log.waitFor(t, 5*time.Second, "reason=max_output")
		w.waitChildren(t, 3, 2*time.Second)
		nb.finish(t)
	})

	t.Run("a module holding its max_concurrency queues its excess, then gets 503", func(t *testing.T) {
		nb := startNeighbour(n.base)
		var wg sync.WaitGroup
		statuses := make(chan int, 3)
		for i := 0; i < 3; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				statuses <- c.get("/hog?2000").status
			}()
			time.Sleep(50 * time.Millisecond)
		}
		wg.Wait()
		close(statuses)
		count := map[int]int{}
		for s := range statuses {
			count[s]++
		}
		// One runs (2 s), one waits for it and runs, the third waits
		// longer than queue_timeout (3 s) and gets 503.
		if count[200] != 2 || count[503] != 1 {
			t.Fatalf("statuses %v, want two 200 and one 503", count)
		}
		nb.finish(t)
	})

	traversal := []struct{ name, path string }{
		{"dot-dot out of the volume", "/files?read&/data/../secret.txt"},
		{"dot-dot past the root", "/files?read&/data/../../../../etc/passwd"},
		{"an absolute path outside any volume", "/files?read&/etc/passwd"},
		{"a symlink placed in the volume pointing outside", "/files?read&/data/link"},
	}
	for _, tc := range traversal {
		t.Run("path traversal: "+tc.name, func(t *testing.T) {
			r := c.get(tc.path)
			if r.status == 200 || strings.Contains(string(r.body), "outside the volume") || strings.Contains(string(r.body), "root:") {
				t.Fatalf("escaped: %d %q", r.status, r.body)
			}
		})
	}
	t.Run("path traversal: a module cannot create a symlink out of its volume", func(t *testing.T) {
		r := c.get("/files?symlink&" + secret + "&/data/evil")
		if r.status == 200 {
			t.Fatalf("symlink created: %q", r.body)
		}
		if _, err := os.Lstat(filepath.Join(dir, "data", "evil")); err == nil {
			t.Fatal("a symlink appeared in the volume")
		}
		if r := c.get("/files?read&/data/evil"); r.status == 200 {
			t.Fatalf("read through it: %q", r.body)
		}
	})
}

// retryAfter parses a Retry-After header in seconds.
func retryAfter(t *testing.T, r response) int {
	t.Helper()
	n, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil {
		t.Fatalf("Retry-After %q: %v", r.header.Get("Retry-After"), err)
	}
	return n
}

func TestADailyCPUBudgetSurvivesKill9OfTheManager(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	// Two hours before now (to the minute) the budget day began; a restart
	// with the boundary one minute ago moves it past every charge so far.
	dayStart := func(ago time.Duration) string {
		return time.Now().UTC().Add(-ago).Format("15:04") + "Z"
	}
	config := func(start string) string {
		return `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 2
[[module]]
route = "/burn"
module = "{{mods}}/burn.wasm"
daily_cpu = "400ms"
cpu = "5s"
day_start = "` + start + `"
[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"
daily_cpu = "400ms"
`
	}
	first := dayStart(2 * time.Hour) // reused: a later minute would be a new day
	w := startWagi(t, bin, dir, config(first))
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	// burn spins for wall time; on a loaded machine much of that is not
	// CPU, so the number of requests that fit in the budget is not fixed.
	var last response
	for i := 0; i < 200; i++ {
		if last = c.get("/burn?150"); last.status != 200 {
			break
		}
	}
	if last.status != 503 {
		t.Fatalf("the budget never ran out: %d", last.status)
	}
	if s := retryAfter(t, last); s <= 0 || s > 22*3600 {
		t.Fatalf("Retry-After %d, want the seconds until the reset (about 22 h)", s)
	}
	if r := c.get("/hello"); r.status != 200 {
		t.Fatalf("another module is not affected: %d", r.status)
	}

	children := w.children(t)
	if err := w.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-w.done
	// The children die with the manager (PR_SET_PDEATHSIG).
	deadline := time.Now().Add(2 * time.Second)
	for _, pid := range children {
		for {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
				break
			}
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); strings.Contains(string(b), ") Z ") {
				break // a zombie waiting for init: dead
			}
			if time.Now().After(deadline) {
				t.Fatalf("child %d outlived a killed manager", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	w = startWagi(t, bin, dir, config(first))
	if r := c.get("/burn?1"); r.status != 503 {
		t.Fatalf("kill -9 and a restart handed the budget out again: %d", r.status)
	}
	w.stop(t)

	startWagi(t, bin, dir, config(dayStart(time.Minute)))
	if r := c.get("/burn?1"); r.status != 200 {
		t.Fatalf("after the day boundary moved past: %d %q", r.status, r.body)
	}
}
