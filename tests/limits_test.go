package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// statusPage is the part of /_wagi/status?json these tests read.
type statusPage struct {
	Pool struct {
		Children   int              `json:"children"`
		Idle       int              `json:"idle"`
		Spawned    int64            `json:"spawned"`
		Killed     map[string]int64 `json:"killed"`
		ChargedCPU float64          `json:"charged_cpu_seconds"`
	} `json:"pool"`
	Modules []struct {
		Module   string  `json:"module"`
		Route    string  `json:"route"`
		CPUToday float64 `json:"cpu_today_seconds"`
		DailyCPU float64 `json:"daily_cpu_seconds"`
	} `json:"modules"`
	Gateway *struct {
		CPUToday float64 `json:"cpu_today_seconds"`
		DailyCPU float64 `json:"daily_cpu_seconds"`
	} `json:"gateway"`
}

func readStatus(t testing.TB, c *client) statusPage {
	t.Helper()
	r := c.get("/_wagi/status?json")
	if r.status != 200 {
		t.Fatalf("status page: %d %q", r.status, r.body)
	}
	var st statusPage
	if err := json.Unmarshal(r.body, &st); err != nil {
		t.Fatalf("status page: %v\n%s", err, r.body)
	}
	return st
}

// cpuToday is the CPU charged today to the modules whose route starts with
// prefix.
func (st statusPage) cpuToday(prefix string) float64 {
	total := 0.0
	for _, m := range st.Modules {
		if strings.HasPrefix(m.Route, prefix) {
			total += m.CPUToday
		}
	}
	return total
}

// budgetCase is one run of the concurrency test.
type budgetCase struct {
	name    string
	n       int  // concurrent requests, and children
	gateway bool // through gateway CIDs, each its own module
}

// TestADailyBudgetHoldsUnderConcurrency sends n concurrent requests to a
// module that spins forever, against a 1 s daily budget: together they must
// not be charged more than the budget plus about one CPU poll each, however
// many run at once. Through gateway CIDs, n distinct CIDs share the
// gateway-wide budget the same way.
func TestADailyBudgetHoldsUnderConcurrency(t *testing.T) {
	k := testenv.StartKubo(t)
	loop, err := os.ReadFile(testenv.Module(t, "loop"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []budgetCase{
		{"four requests to one module", 4, false},
		{"sixteen requests to one module", 16, false},
		{"four requests to four gateway CIDs", 4, true},
		{"sixteen requests to sixteen gateway CIDs", 16, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bin := buildBinary(t, dir)
			modPath := filepath.Join(dir, "loop.wasm")
			if err := os.WriteFile(modPath, withCustomSection(loop, "budget "+tc.name, 0), 0o644); err != nil {
				t.Fatal(err)
			}
			var paths []string
			for i := 0; i < tc.n; i++ {
				if !tc.gateway {
					paths = append(paths, "/loop")
					continue
				}
				cid := k.AddBytes(t, withCustomSection(loop, fmt.Sprintf("%s %d", tc.name, i), 0))
				paths = append(paths, "/ipfs/"+cid+"/")
			}
			// Each CID's own budget is large: what must hold is the
			// gateway's.
			daily := `daily_cpu = "1s"`
			if tc.gateway {
				daily = `daily_cpu = "1h"`
			}
			w := startWagi(t, bin, dir, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = %d
[limits]
cpu = "5s"
timeout = "120s"
%s
[ipfs]
api = %q
gateway = "/ipfs/"
allow = ["*"]
gateway_daily_cpu = "1s"
[[module]]
route = "/loop"
module = %q
`, tc.n, daily, k.API, modPath))
			n := startNginx(t, dir, w.sock)
			c := newClient(t, n.base)
			// The first requests of gateway CIDs fetch and compile them
			// too: that CPU is the gateway's as well.
			statuses := make([]int, tc.n)
			var wg sync.WaitGroup
			for i, p := range paths {
				wg.Add(1)
				go func() {
					defer wg.Done()
					statuses[i] = c.get(p).status
				}()
			}
			wg.Wait()
			after := readStatus(t, c)
			for i, s := range statuses {
				if s != 503 {
					t.Errorf("request %d: status %d, want 503 (budget spent)", i, s)
				}
			}
			charged := after.cpuToday("/loop")
			if tc.gateway {
				charged = after.Gateway.CPUToday
			}
			// What the requests themselves were charged, from their log
			// lines: one CPU poll is 5 ms, and twice that per request
			// allows for a poll that a busy machine delays.
			requests := requestCPU(t, w.log.String(), "/loop", "/ipfs/")
			limit := 1.0 + float64(tc.n)*0.010
			t.Logf("%d concurrent requests: requests charged %.3f s, %.3f s in all with the replacement children, against a 1 s budget (bound %.3f s)",
				tc.n, requests, charged, limit)
			if requests > limit {
				t.Errorf("requests charged %.3f s against a 1 s budget: more than one poll per running request over", requests)
			}
			// Each request's child was killed, and its replacement (a Go
			// runtime start and a preload, a few ms) is charged to the
			// module that caused it.
			if extra := charged - requests; extra > float64(tc.n)*0.050 {
				t.Errorf("%.3f s charged beyond the requests, more than %d replacement children cost", extra, tc.n)
			}
			if charged < 0.9 {
				t.Errorf("charged only %.3f s: the budget was not used", charged)
			}
			// Spent: the next request is turned away before it runs.
			r := c.get(paths[0])
			if r.status != 503 || r.header.Get("Retry-After") == "" {
				t.Errorf("after the budget: %d, Retry-After %q", r.status, r.header.Get("Retry-After"))
			}
		})
	}
}

// requestCPU adds up the CPU of the request log lines whose path starts
// with one of prefixes.
func requestCPU(t testing.TB, log string, prefixes ...string) float64 {
	t.Helper()
	re := regexp.MustCompile(`msg=request .*path=(\S+) .* cpu=(\S+)`)
	total := 0.0
	for _, m := range re.FindAllStringSubmatch(log, -1) {
		for _, p := range prefixes {
			if strings.HasPrefix(m[1], p) {
				d, err := time.ParseDuration(m[2])
				if err != nil {
					t.Fatalf("request line cpu=%q: %v", m[2], err)
				}
				total += d.Seconds()
				break
			}
		}
	}
	return total
}

// procStat returns the CPU a process used, its own and that of the
// children it has reaped, from /proc/PID/stat (in clock ticks of 10 ms).
func procStat(t testing.TB, pid int) (self, reaped time.Duration) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	tick := func(i int) time.Duration {
		n, _ := strconv.ParseInt(f[i], 10, 64)
		return time.Duration(n) * 10 * time.Millisecond
	}
	// Fields after the command: state is [0]; utime [11], stime [12],
	// cutime [13], cstime [14].
	return tick(11) + tick(12), tick(13) + tick(14)
}

// serverCPU is all the CPU the manager and its children have used: the
// manager's own, the children it has reaped, and the live children's.
func serverCPU(t testing.TB, w *wagiProc) time.Duration {
	self, reaped := procStat(t, w.cmd.Process.Pid)
	total := self + reaped
	for _, pid := range w.children(t) {
		s, _ := procStat(t, pid)
		total += s
	}
	return total
}

// TestEarlyClientAbortsCostTheServerOnlyWhatIsCharged hangs up on 100
// requests to a sleeping module after 50 ms, the way `curl -m 0.05` does.
// Each abort gets its child killed; what the server spends on that, the
// replacement child's start and its preload included, must be charged to
// the module that was running.
func TestEarlyClientAbortsCostTheServerOnlyWhatIsCharged(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	// Several modules, so that each fresh child has something to preload.
	var mods strings.Builder
	for _, name := range []string{"hello", "echo", "env", "files", "burn", "gohello", "goecho"} {
		fmt.Fprintf(&mods, "[[module]]\nroute = \"/%s\"\nmodule = \"{{mods}}/%s.wasm\"\n", name, name)
	}
	w := startWagi(t, bin, dir, `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 2
[[module]]
route = "/sleep"
module = "{{mods}}/sleep.wasm"
`+mods.String())
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)
	settle := func() statusPage {
		w.waitChildren(t, 2, 20*time.Second)
		for {
			st := readStatus(t, c)
			if st.Pool.Idle == st.Pool.Children {
				return st
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	before := settle()
	cpuBefore := serverCPU(t, w)
	const aborts = 100
	for i := 0; i < aborts; i++ {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", n.port))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET /sleep?1000 HTTP/1.1\r\nHost: x\r\n\r\n")
		time.Sleep(50 * time.Millisecond)
		conn.Close()
	}
	// Let every abort be seen and every replacement start.
	time.Sleep(500 * time.Millisecond)
	after := settle()
	cpuAfter := serverCPU(t, w)
	total := cpuAfter - cpuBefore
	charged := time.Duration((after.Pool.ChargedCPU - before.Pool.ChargedCPU) * float64(time.Second))
	uncharged := total - charged
	t.Logf("%d early aborts: %d children spawned, server CPU %s, charged %s, uncharged %s",
		aborts, after.Pool.Spawned-before.Pool.Spawned, total, charged.Round(time.Millisecond), uncharged.Round(time.Millisecond))
	if after.Pool.Spawned == before.Pool.Spawned {
		t.Fatal("no child was replaced: the aborts did not reach the manager")
	}
	// /proc counts in 10 ms ticks per process; what remains uncharged is
	// the manager's own work per request. Before respawns were charged it
	// was over 90% of the total.
	if uncharged > total/4+100*time.Millisecond {
		t.Errorf("uncharged CPU %s of %s: the aborts cost the server CPU nobody paid for", uncharged, total)
	}
}

// limitCase checks one [limits] key on a route: path is what to request
// after the route's prefix.
type limitCase struct {
	key    string
	limits string // the [limits] table and any [pool] keys it needs
	pool   string
	module string
	check  func(t *testing.T, c *client, base string, w *wagiProc)
}

// TestEveryLimitHoldsOnConfiguredRoutesAndGatewayCIDs runs each [limits]
// key against a configured route and against a gateway CID of the same
// code: a gateway CID must get every limit a configured route gets.
func TestEveryLimitHoldsOnConfiguredRoutesAndGatewayCIDs(t *testing.T) {
	k := testenv.StartKubo(t)
	mods := testenv.Modules(t)
	expect := func(want int, path string, body ...[]byte) func(t *testing.T, c *client, base string, w *wagiProc) {
		return func(t *testing.T, c *client, base string, w *wagiProc) {
			var r response
			if len(body) > 0 {
				r = c.do("POST", base+path, body[0])
			} else {
				r = c.get(base + path)
			}
			if r.status != want {
				t.Fatalf("GET %s%s: %d %q, want %d", base, path, r.status, r.body, want)
			}
		}
	}
	dayStart := time.Now().UTC().Add(-2*time.Hour).Format("15:04") + "Z"
	cases := []limitCase{
		{key: "timeout", limits: `timeout = "300ms"`, module: "sleep", check: expect(504, "?5000")},
		{key: "cpu", limits: `cpu = "200ms"` + "\n" + `timeout = "120s"`, module: "loop",
			check: func(t *testing.T, c *client, base string, w *wagiProc) {
				expect(504, "")(t, c, base, w)
				w.log.waitFor(t, 10*time.Second, "child killed", `reason=cpu`)
			}},
		{key: "daily_cpu", limits: `daily_cpu = "200ms"` + "\n" + `cpu = "5s"` + "\n" + `timeout = "120s"`, module: "loop",
			check: func(t *testing.T, c *client, base string, w *wagiProc) {
				expect(503, "")(t, c, base, w)
				expect(503, "")(t, c, base, w)
			}},
		{key: "day_start", limits: `daily_cpu = "100ms"` + "\n" + `cpu = "5s"` + "\n" + `timeout = "120s"` + "\n" + `day_start = "` + dayStart + `"`, module: "loop",
			check: func(t *testing.T, c *client, base string, w *wagiProc) {
				r := c.get(base)
				if r.status != 503 {
					t.Fatalf("%d, want 503", r.status)
				}
				// The day began two hours ago: it resets in about 22.
				if s := retryAfter(t, r); s < 21*3600 || s > 22*3600+120 {
					t.Fatalf("Retry-After %d s, want about 22 h (day_start %s)", s, dayStart)
				}
			}},
		{key: "memory", limits: `memory = "4MiB"`, module: "alloc",
			check: func(t *testing.T, c *client, base string, w *wagiProc) {
				r := c.get(base)
				m := regexp.MustCompile(`allocated (\d+) MiB`).FindSubmatch(r.body)
				if r.status != 200 || m == nil {
					t.Fatalf("%d %q", r.status, r.body)
				}
				if n, _ := strconv.Atoi(string(m[1])); n >= 4 {
					t.Fatalf("allocated %d MiB under memory = 4MiB", n)
				}
			}},
		{key: "max_body", limits: `max_body = "1KiB"`, module: "echo", check: expect(413, "", bytes.Repeat([]byte("x"), 4096))},
		{key: "max_output", limits: `max_output = "32KiB"`, module: "flood", check: expect(502, "")},
		{key: "max_concurrency", limits: `max_concurrency = 1`, pool: `queue_timeout = "500ms"`, module: "sleep",
			check: func(t *testing.T, c *client, base string, w *wagiProc) {
				statuses := make([]int, 2)
				var wg sync.WaitGroup
				for i := range statuses {
					wg.Add(1)
					go func() {
						defer wg.Done()
						statuses[i] = c.get(base + "?3000").status
					}()
				}
				wg.Wait()
				if !(statuses[0] == 200 && statuses[1] == 503) && !(statuses[0] == 503 && statuses[1] == 200) {
					t.Fatalf("two concurrent requests under max_concurrency = 1 with a 500 ms queue: %v, want one 200 and one 503", statuses)
				}
			}},
	}
	for _, tc := range cases {
		bin, err := os.ReadFile(filepath.Join(mods, tc.module+".wasm"))
		if err != nil {
			t.Fatal(err)
		}
		for _, gateway := range []bool{false, true} {
			name := tc.key + " holds on a configured route"
			if gateway {
				name = tc.key + " holds on a gateway CID"
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				wagi := buildBinary(t, dir)
				modPath := filepath.Join(dir, tc.module+".wasm")
				if err := os.WriteFile(modPath, withCustomSection(bin, "configured", 0), 0o644); err != nil {
					t.Fatal(err)
				}
				cid := k.AddBytes(t, withCustomSection(bin, "gateway "+tc.key, 0))
				w := startWagi(t, wagi, dir, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 3
%s
[limits]
%s
[ipfs]
api = %q
gateway = "/ipfs/"
allow = [%q]
[[module]]
route = "/m/..."
module = %q
`, tc.pool, tc.limits, k.API, cid, modPath))
				n := startNginx(t, dir, w.sock)
				c := newClient(t, n.base)
				base := "/m/x"
				if gateway {
					base = "/ipfs/" + cid + "/x"
				}
				tc.check(t, c, base, w)
			})
		}
	}
}

// buildWAT compiles WebAssembly text with wabt's wat2wasm and returns the
// module's bytes.
func buildWAT(t testing.TB, src string) []byte {
	t.Helper()
	dir := t.TempDir()
	in, out := filepath.Join(dir, "m.wat"), filepath.Join(dir, "m.wasm")
	if err := os.WriteFile(in, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("wat2wasm", "--enable-all", "-o", out, in).CombinedOutput(); err != nil {
		t.Fatalf("wat2wasm: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestASpinningRoutesExportIsChargedOnEveryLoad serves a gateway CID whose
// _routes never returns. Its load fails (502) and is tried again on the
// next request; each try is CPU the module causes, so its budget must pay
// for it and, once spent, the CID gets 503 without another try.
func TestASpinningRoutesExportIsChargedOnEveryLoad(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	cid := k.AddBytes(t, buildWAT(t, `(module
  (memory (export "memory") 1)
  (func (export "_routes") (loop $spin (br $spin)))
  (func (export "_start")))`))
	w := startWagi(t, bin, dir, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 2
[limits]
cpu = "200ms"
timeout = "60s"
daily_cpu = "500ms"
[ipfs]
api = %q
gateway = "/ipfs/"
allow = ["*"]
`, k.API))
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)
	var got []int
	for i := 0; i < 8; i++ {
		r := c.get("/ipfs/" + cid + "/")
		got = append(got, r.status)
		if r.status == 503 {
			if r.header.Get("Retry-After") == "" {
				t.Fatal("503 without Retry-After")
			}
			break
		}
		if r.status != 502 {
			t.Fatalf("request %d: %d %q, want 502 (the load failed) or 503 (budget spent)", i, r.status, r.body)
		}
	}
	if got[len(got)-1] != 503 {
		t.Fatalf("statuses %v: the _routes runs were never charged against the 500 ms budget", got)
	}
	t.Logf("statuses until the budget was spent: %v", got)
}
