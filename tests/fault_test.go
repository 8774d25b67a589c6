package tests

import (
	"bufio"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// wrkScript counts answers by status, checks that every 5xx carries the
// manager's X-Request-Id (an anonymous nginx 502 has none), and prints the
// latency percentiles and socket errors.
const wrkScript = `
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {}; anonymous = 0 end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if status >= 500 and headers["X-Request-Id"] == nil then anonymous = anonymous + 1 end
end
function done(summary, latency, requests)
  local total = {}
  local anon = 0
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("counts")) do total[s] = (total[s] or 0) + n end
    anon = anon + t:get("anonymous")
  end
  for s, n in pairs(total) do io.write(string.format("status %d %d\n", s, n)) end
  io.write(string.format("anonymous5xx %d\n", anon))
  local e = summary.errors
  io.write(string.format("errors %d\n", e.connect + e.read + e.write + e.timeout))
  io.write(string.format("p50_us %d\np99_us %d\n", latency:percentile(50), latency:percentile(99)))
end
`

// wrkResult is what one wrk run reported.
type wrkResult struct {
	status    map[int]int
	anonymous int
	errors    int
	p50, p99  time.Duration
}

func (r wrkResult) total() int {
	n := 0
	for _, c := range r.status {
		n += c
	}
	return n
}

// runWrk runs wrk against url for d with conns connections.
func runWrk(t *testing.T, ctx context.Context, dir, url string, conns int, d time.Duration) wrkResult {
	t.Helper()
	script := filepath.Join(dir, "count.lua")
	if err := os.WriteFile(script, []byte(wrkScript), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "wrk", "-t2", "-c"+strconv.Itoa(conns), "-d"+d.String(), "--timeout", "10s", "-s", script, url)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("wrk (run tests/setup.sh to install it): %v\n%s", err, out)
	}
	res := wrkResult{status: map[int]int{}}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 3 && f[0] == "status":
			s, _ := strconv.Atoi(f[1])
			n, _ := strconv.Atoi(f[2])
			res.status[s] = n
		case len(f) == 2 && f[0] == "anonymous5xx":
			res.anonymous, _ = strconv.Atoi(f[1])
		case len(f) == 2 && f[0] == "errors":
			res.errors, _ = strconv.Atoi(f[1])
		case len(f) == 2 && f[0] == "p50_us":
			us, _ := strconv.Atoi(f[1])
			res.p50 = time.Duration(us) * time.Microsecond
		case len(f) == 2 && f[0] == "p99_us":
			us, _ := strconv.Atoi(f[1])
			res.p99 = time.Duration(us) * time.Microsecond
		}
	}
	if res.total() == 0 {
		t.Fatalf("wrk reported no responses:\n%s", out)
	}
	return res
}

const faultConfig = `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 3
queue = 1024
queue_timeout = "10s"
[limits]
timeout = "5s"
[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"
[[module]]
route = "/loop"
module = "{{mods}}/loop.wasm"
cpu = "200ms"
max_concurrency = 1
[[module]]
route = "/burn"
module = "{{mods}}/burn.wasm"
daily_cpu = "300ms"
`

// TestFaultsUnderLoad drives a healthy route with wrk through nginx while
// things go wrong. Bounded: about 40 s, loopback only.
func TestFaultsUnderLoad(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	w := startWagi(t, bin, dir, faultConfig)
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)
	w.waitChildren(t, 3, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t.Run("children SIGKILLed every 100 ms: only their requests fail, each with the manager's 5xx", func(t *testing.T) {
		stop := make(chan struct{})
		killed := make(chan int, 1)
		go func() {
			k := 0
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					killed <- k
					return
				case <-tick.C:
					if pids := w.children(t); len(pids) > 0 {
						if syscall.Kill(pids[rand.IntN(len(pids))], syscall.SIGKILL) == nil {
							k++
						}
					}
				}
			}
		}()
		res := runWrk(t, ctx, dir, n.base+"/hello", 8, 10*time.Second)
		close(stop)
		kills := <-killed
		failed := res.total() - res.status[200]
		t.Logf("%d kills; %d requests, %d failed (%v), %d socket errors", kills, res.total(), failed, res.status, res.errors)
		if res.errors != 0 || res.anonymous != 0 {
			t.Fatalf("%d socket errors, %d 5xx without the manager's request id: a hung or empty answer", res.errors, res.anonymous)
		}
		for s := range res.status {
			if s != 200 && s != 502 {
				t.Fatalf("unexpected status %d: %v", s, res.status)
			}
		}
		if failed > kills {
			t.Fatalf("%d requests failed but only %d children were killed", failed, kills)
		}
		w.waitChildren(t, 3, 2*time.Second)
		if r := c.get("/hello"); r.status != 200 {
			t.Fatalf("after the kills: %d", r.status)
		}
	})

	// The healthy route's p99 beside the hostile one is logged, not
	// asserted: latency is a benchmark figure (make bench), and on a
	// loaded machine it measures the machine. What must hold is that the
	// healthy route keeps answering and the hostile one is stopped.
	t.Run("a hostile neighbour leaves the healthy route at 100%", func(t *testing.T) {
		solo := runWrk(t, ctx, dir, n.base+"/hello", 4, 5*time.Second)
		hctx, hcancel := context.WithCancel(ctx)
		hostileDone := make(chan wrkResult, 1)
		go func() { hostileDone <- runWrk(t, hctx, dir, n.base+"/loop", 4, 7*time.Second) }()
		time.Sleep(time.Second) // the hostile load is running
		mixed := runWrk(t, ctx, dir, n.base+"/hello", 4, 5*time.Second)
		hostile := <-hostileDone
		hcancel()
		// Alone again: the solo p99 is the worse of before and after, so a
		// shared machine's drift does not count against the neighbour.
		after := runWrk(t, ctx, dir, n.base+"/hello", 4, 5*time.Second)
		if after.p99 > solo.p99 {
			solo = after
		}
		t.Logf("healthy alone: p50 %s p99 %s; beside the hostile route: p50 %s p99 %s (%.2fx); hostile answers %v",
			solo.p50, solo.p99, mixed.p50, mixed.p99, float64(mixed.p99)/float64(solo.p99), hostile.status)
		if mixed.status[200] != mixed.total() || mixed.errors != 0 {
			t.Fatalf("the healthy route failed beside the hostile one: %v, %d errors", mixed.status, mixed.errors)
		}
		if hostile.status[504]+hostile.status[503] == 0 {
			t.Fatalf("the hostile route was never stopped: %v", hostile.status)
		}
	})

	t.Run("kill -9 of the manager keeps the CPU ledger, and service resumes", func(t *testing.T) {
		// burn spins for wall time, so on a loaded machine more requests
		// fit in the CPU budget: bound the loop by far more than 300/120.
		var spentAt int
		for i := 1; i <= 200; i++ {
			if r := c.get("/burn?120"); r.status == 503 {
				spentAt = i
				break
			}
		}
		if spentAt == 0 {
			t.Fatal("the budget never ran out")
		}
		if err := w.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-w.done
		start := time.Now()
		startWagi(t, bin, dir, faultConfig)
		for c.get("/hello").status != 200 {
			if time.Since(start) > 20*time.Second {
				t.Fatal("service did not resume")
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("service resumed %s after the restart began", time.Since(start).Round(time.Millisecond))
		if r := c.get("/burn?1"); r.status != 503 {
			t.Fatalf("the budget spent before kill -9 was handed out again: %d", r.status)
		}
	})
}
