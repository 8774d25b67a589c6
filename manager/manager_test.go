package manager_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/yookoala/gofast"

	"github.com/wagi-fcgi/wagi-fcgi/child"
	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/fcgi"
	"github.com/wagi-fcgi/wagi-fcgi/internal/compiler"
	"github.com/wagi-fcgi/wagi-fcgi/internal/sandbox"
	"github.com/wagi-fcgi/wagi-fcgi/manager"
	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// The test binary doubles as the child: the manager re-executes it with
// the argument "child", as it re-executes wagi-fcgi in production.
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "hostile-child" {
		// A hostile child is still started as one: switch uids like a
		// real child would (the manager checks them).
		if i := slices.Index(os.Args, "--uids"); i > 0 && i+1 < len(os.Args) {
			ids, err := sandbox.ParseIDs(os.Args[i+1])
			if err == nil {
				err = sandbox.DropUser(ids)
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		if os.Args[2] == "fast" {
			hostileFastChild()
		} else {
			hostileChild(os.Args[2])
		}
		os.Exit(0)
	}
	if len(os.Args) > 1 && os.Args[1] == "child" {
		if err := child.Main(context.Background(), os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) > 2 && os.Args[1] == "hostile-compile" {
		hostileCompile(os.Args[2])
	}
	if len(os.Args) > 1 && os.Args[1] == "compile" {
		if err := compiler.Main(context.Background(), os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Geteuid() == 0 {
		// Children of a root manager run as the wagi-fcgi user: they
		// must reach this test binary (see reachable).
		if err := reachable(filepath.Dir(os.Args[0])); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// reachable makes dir and its parents traversable when the tests run as
// root, for children that run as the wagi-fcgi user (tests/setup.sh
// creates it); go test and t.TempDir make their directories 0700.
func reachable(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// syncBuffer is a log sink tests can read while the manager writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fixture struct {
	m    *manager.Manager
	log  *syncBuffer
	h    http.Handler
	sock string
	stop func() // idempotent
}

// newFixture starts a manager on cfgText (with {{mods}} and {{dir}}
// expanded) behind an fcgi.Server, and a gofast client for it.
func newFixture(t testing.TB, cfgText string) *fixture {
	t.Helper()
	f, err := tryFixture(t, cfgText)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func tryFixture(t testing.TB, cfgText string) (*fixture, error) {
	t.Helper()
	return startManager(t, t.TempDir(), cfgText, nil)
}

// startManager starts a manager whose state lives in dir, with an optional
// clock.
func startManager(t testing.TB, dir, cfgText string, now func() time.Time) (*fixture, error) {
	t.Helper()
	if err := reachable(dir); err != nil {
		t.Fatal(err)
	}
	cfgText = strings.NewReplacer("{{mods}}", testenv.Modules(t), "{{dir}}", dir).Replace(cfgText)
	cfg, err := config.Parse([]byte(cfgText), "test.toml", dir)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	cfg.StateDir = filepath.Join(dir, "state")
	log := &syncBuffer{}
	m, err := manager.New(cfg, manager.Options{
		Logger:       slog.New(slog.NewTextHandler(log, nil)),
		ChildCommand: []string{os.Args[0], "child"},
		Version:      "test",
		Now:          now,
	})
	if err != nil {
		return nil, err
	}
	if err := m.Start(context.Background()); err != nil {
		m.Close()
		return nil, err
	}
	return serveFixture(t, dir, m, log), nil
}

// serveFixture serves a started manager on a unix socket in dir, with a
// gofast client for it; the test's end stops both.
func serveFixture(t testing.TB, dir string, m *manager.Manager, log *syncBuffer) *fixture {
	t.Helper()
	sock := filepath.Join(dir, "fcgi.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &fcgi.Server{Handler: m, Logger: slog.New(slog.NewTextHandler(log, nil))}
	go func() { _ = srv.Serve(l) }()
	f := &fixture{m: m, log: log, sock: sock}
	f.stop = func() {
		_ = srv.Close()
		_ = m.Close()
	}
	t.Cleanup(f.stop)
	cf := gofast.SimpleClientFactory(gofast.SimpleConnFactory("unix", sock))
	h := gofast.NewHandler(gofast.Chain(gofast.BasicParamsMap, gofast.MapHeader)(gofast.BasicSession), cf)
	f.h = h
	return f
}

func (f *fixture) do(t testing.TB, method, target string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, httptest.NewRequest(method, target, rd))
	return rec
}

// waitPool waits until the manager has n live children other than the
// ones in gone.
func waitPool(t testing.TB, m *manager.Manager, n int, gone []int, d time.Duration) []int {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		pids := m.ChildPIDs()
		fresh := 0
		for _, p := range pids {
			if !slices.Contains(gone, p) {
				fresh++
			}
		}
		if len(pids) == n && fresh == n {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool has %v, want %d children not in %v", pids, n, gone)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

const basicConfig = `
[pool]
children = 2
queue = 4
queue_timeout = "300ms"

[limits]
timeout = "1s"
cpu = "300ms"
max_output = "1MiB"

[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"

# The wall clock is only the backstop here: a CPU-bound child is reniced
# to 19 after 20 ms, and on a loaded machine 300 ms of CPU can take half a
# minute of wall time (manager/RATIONALE.md).
[[module]]
route = "/loop"
module = "{{mods}}/loop.wasm"
timeout = "120s"

[[module]]
route = "/sleep"
module = "{{mods}}/sleep.wasm"

[[module]]
route = "/flood"
module = "{{mods}}/flood.wasm"
timeout = "120s"

[[module]]
route = "/grow"
module = "{{mods}}/grow.wasm"
memory = "1MiB"
`

func TestChildrenRunBeforeTheFirstRequest(t *testing.T) {
	f := newFixture(t, basicConfig)
	if n := len(f.m.ChildPIDs()); n != 2 {
		t.Fatalf("%d children after Start, want 2", n)
	}
	if rec := f.do(t, "GET", "/hello", nil); rec.Code != 200 || rec.Body.String() != "Hello, world!\n" {
		t.Fatalf("got %d %q", rec.Code, rec.Body)
	}
	kids := f.m.Children()
	var served int64
	for _, c := range kids {
		if c.PID <= 0 || c.RSS <= 0 || c.CPU <= 0 || c.Started.IsZero() || c.State == "" {
			t.Errorf("child info %+v", c)
		}
		served += c.Requests
	}
	if len(kids) != 2 || served != 1 {
		t.Fatalf("%d children served %d requests, want 2 and 1", len(kids), served)
	}
	if s := f.m.Stats(); s.Requests != 1 || s.ChargedCPU <= 0 || s.Children != 2 || s.Spawned != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestLimitsKillTheChildAndAnswer504(t *testing.T) {
	f := newFixture(t, basicConfig)
	// Only the wall-clock limit is checked against the wall clock (and
	// generously); the CPU limit is checked on the CPU charged, which holds
	// however loaded the machine is.
	cases := []struct {
		name, path, reason string
		status             int
		maxWait            time.Duration // 0: not a wall-clock limit
		cpuFrom, cpuTo     time.Duration // CPU charged to the request; 0: unchecked
	}{
		{"a sleeping module past its wall clock", "/sleep?5000", "reason=timeout", 504, 10 * time.Second, 0, 0},
		{"a spinning module past its CPU time", "/loop", "reason=cpu", 504, 0, 300 * time.Millisecond, 400 * time.Millisecond},
		// The flood passes the 64 KiB commit point first, so the answer is
		// a 200 whose stream is cut at max_output.
		{"a module flooding stdout past max_output", "/flood", "reason=max_output", 200, 0, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := f.m.ChildPIDs()
			start := time.Now()
			rec := f.do(t, "GET", tc.path, nil)
			took := time.Since(start)
			if rec.Code != tc.status {
				t.Fatalf("got %d %q, want %d", rec.Code, rec.Body, tc.status)
			}
			if tc.maxWait > 0 && took > tc.maxWait {
				t.Fatalf("took %s, want within %s", took, tc.maxWait)
			}
			if tc.status == 200 {
				if n := rec.Body.Len(); n > 1<<20 {
					t.Fatalf("%d bytes reached the client, over max_output", n)
				}
			} else if !strings.Contains(rec.Body.String(), "request id: ") {
				t.Fatalf("body %q has no request id", rec.Body)
			}
			// The child's slot logs the kill when it reaps it.
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(f.log.String(), tc.reason); {
				if time.Now().After(deadline) {
					t.Fatalf("log has no %q:\n%s", tc.reason, f.log)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if tc.cpuTo > 0 {
				if used := requestCPU(t, f.log.String(), tc.path); used < tc.cpuFrom || used > tc.cpuTo {
					t.Fatalf("the request was charged %s of CPU, want %s to %s", used, tc.cpuFrom, tc.cpuTo)
				}
			}
			// One child was replaced; the pool is full again.
			pids := waitPool(t, f.m, 2, nil, 10*time.Second)
			replaced := 0
			for _, p := range before {
				if !slices.Contains(pids, p) {
					replaced++
				}
			}
			if replaced != 1 {
				t.Fatalf("children before %v, after %v: want exactly one replaced", before, pids)
			}
			if rec := f.do(t, "GET", "/hello", nil); rec.Code != 200 {
				t.Fatalf("hello after the kill: %d", rec.Code)
			}
		})
	}
}

// requestCPU is the CPU charged to the last request for path, read from
// its "request" log line (cpu=...).
func requestCPU(t testing.TB, log, path string) time.Duration {
	t.Helper()
	var used time.Duration = -1
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "msg=request ") || !strings.Contains(line, " path="+path+" ") {
			continue
		}
		_, v, ok := strings.Cut(line, " cpu=")
		if !ok {
			continue
		}
		v, _, _ = strings.Cut(v, " ")
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("log line %q: cpu: %v", line, err)
		}
		used = d
	}
	if used < 0 {
		t.Fatalf("no request log line for %s with its CPU:\n%s", path, log)
	}
	return used
}

func TestAMemoryBombTrapsWith500(t *testing.T) {
	f := newFixture(t, basicConfig)
	if rec := f.do(t, "GET", "/grow", nil); rec.Code != 500 {
		t.Fatalf("got %d %q", rec.Code, rec.Body)
	}
}

func TestAChildKilledFromOutsideIsReplaced(t *testing.T) {
	f := newFixture(t, basicConfig)
	before := f.m.ChildPIDs()
	if err := syscall.Kill(before[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitPool(t, f.m, 2, before[:1], 2*time.Second)
	for i := 0; i < 4; i++ {
		if rec := f.do(t, "GET", "/hello", nil); rec.Code != 200 {
			t.Fatalf("request %d after the kill: %d %q", i, rec.Code, rec.Body)
		}
	}
}

func TestAFullQueueAnswers503WithRetryAfter(t *testing.T) {
	f := newFixture(t, `
[pool]
children = 1
queue = 1
queue_timeout = "200ms"

[[module]]
route = "/sleep"
module = "{{mods}}/sleep.wasm"
`)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f.do(t, "GET", "/sleep?1500", nil) // holds the only child
	}()
	time.Sleep(300 * time.Millisecond)
	// One waits in the queue until queue_timeout; with it queued, the next
	// finds the queue full.
	var queued *httptest.ResponseRecorder
	wg.Add(1)
	go func() {
		defer wg.Done()
		queued = f.do(t, "GET", "/sleep?1", nil)
	}()
	time.Sleep(50 * time.Millisecond)
	full := f.do(t, "GET", "/sleep?1", nil)
	wg.Wait()
	for name, rec := range map[string]*httptest.ResponseRecorder{"queue timeout": queued, "queue full": full} {
		if rec.Code != 503 || rec.Header().Get("Retry-After") == "" {
			t.Errorf("%s: got %d %v %q", name, rec.Code, rec.Header(), rec.Body)
		}
	}
}

func TestMaxRequestsRecyclesChildren(t *testing.T) {
	f := newFixture(t, `
[pool]
children = 1
max_requests = 3

[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"
`)
	first := f.m.ChildPIDs()
	for i := 0; i < 3; i++ {
		if rec := f.do(t, "GET", "/hello", nil); rec.Code != 200 {
			t.Fatalf("request %d: %d", i, rec.Code)
		}
	}
	waitPool(t, f.m, 1, first, 2*time.Second)
}

func TestBadModulesFailToLoadWithAClearError(t *testing.T) {
	cases := []struct {
		name, module, want string
	}{
		{"a file that is not wasm", "notwasm.wasm", "not a WebAssembly binary"},
		{"a module importing an unknown host function", "badimport.wasm", "env.missing_host_function"},
		{"a module whose _routes prints nonsense", "badroutes.wasm", "_routes"},
		{"a missing file", "no-such-module.wasm", "no such file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tryFixture(t, fmt.Sprintf(`
[pool]
children = 1

[[module]]
route = "/x"
module = "{{mods}}/%s"
`, tc.module))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.module) {
				t.Fatalf("got %v, want an error naming %q and %q", err, tc.module, tc.want)
			}
		})
	}
}

func TestRunOncePassesTheExitCodeThrough(t *testing.T) {
	dir := t.TempDir()
	if err := reachable(dir); err != nil {
		t.Fatal(err)
	}
	opts := manager.Options{ChildCommand: []string{os.Args[0], "child"}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	lim := config.Default().Limits
	code, err := manager.RunOnce(context.Background(), manager.RunSpec{
		Module: testenv.Module(t, "exit"), Args: []string{"7"}, Limits: lim, StateDir: dir,
	}, opts)
	if err != nil || code != 7 {
		t.Fatalf("got %d, %v; want 7", code, err)
	}
	lim.Timeout = 300 * time.Millisecond
	_, err = manager.RunOnce(context.Background(), manager.RunSpec{
		Module: testenv.Module(t, "loop"), Limits: lim, StateDir: dir,
	}, opts)
	if err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("a looping module: %v, want a limit error", err)
	}
}

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func TestADailyCPUBudgetHoldsAcrossRestartsUntilTheDayEnds(t *testing.T) {
	const cfg = `
[pool]
children = 1

[[module]]
route = "/burn"
module = "{{mods}}/burn.wasm"
daily_cpu = "300ms"
cpu = "5s"
day_start = "06:00+02:00"
`
	dir := t.TempDir()
	// 03:00 UTC = 05:00 at +02:00: the budget day began yesterday 04:00 UTC
	// and resets at 04:00 UTC, an hour from now.
	clk := &clock{now: time.Date(2026, 11, 24, 3, 0, 0, 0, time.UTC)}
	f, err := startManager(t, dir, cfg, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	// burn spins for 120 ms of wall time: on an idle machine nearly all
	// of it is CPU, on a loaded one much less, so how many requests fit
	// in the budget depends on the load. What must hold is what the
	// module was charged when it was refused: the whole budget, and no
	// more than one request's overshoot of it (the request that crosses
	// the budget is stopped at it with 503 too).
	const budget = 300 * time.Millisecond
	spent := 0
	var last *httptest.ResponseRecorder
	for i := 0; i < 200; i++ {
		last = f.do(t, "GET", "/burn?120", nil)
		if last.Code != 200 {
			break
		}
		spent++
	}
	if last.Code != 503 || spent < 1 {
		t.Fatalf("after %d requests got %d %q", spent, last.Code, last.Body)
	}
	var charged time.Duration
	for _, ms := range f.m.Status(false).Modules {
		if ms.Route == "/burn" {
			charged = time.Duration(ms.CPUToday * float64(time.Second))
		}
	}
	if charged < budget || charged > budget+100*time.Millisecond {
		t.Fatalf("refused after %d requests with %s of CPU charged today, want %s to %s",
			spent, charged, budget, budget+100*time.Millisecond)
	}
	for i := 0; i < 2; i++ {
		rec := f.do(t, "GET", "/burn?1", nil)
		if rec.Code != 503 || rec.Header().Get("Retry-After") != "3600" {
			t.Fatalf("spent budget: got %d, Retry-After %q; want 503 and 3600", rec.Code, rec.Header().Get("Retry-After"))
		}
	}

	f.stop()
	f, err = startManager(t, dir, cfg, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	if rec := f.do(t, "GET", "/burn?1", nil); rec.Code != 503 {
		t.Fatalf("after a restart the budget was handed out again: %d", rec.Code)
	}

	clk.set(time.Date(2026, 11, 24, 4, 0, 1, 0, time.UTC))
	if rec := f.do(t, "GET", "/burn?1", nil); rec.Code != 200 {
		t.Fatalf("after the day boundary: %d %q", rec.Code, rec.Body)
	}
}

func TestTheSameModuleUnderTwoRoutesSharesOneBudget(t *testing.T) {
	f := newFixture(t, `
[pool]
children = 1

[limits]
daily_cpu = "200ms"

[[module]]
route = "/a"
module = "{{mods}}/burn.wasm"

[[module]]
route = "/b"
module = "{{mods}}/burn.wasm"
`)
	// burn spins for wall time: how many requests spend 200 ms of CPU
	// depends on the load, so spend it until /a is refused.
	spent := false
	for i := 0; i < 200 && !spent; i++ {
		spent = f.do(t, "GET", "/a?100", nil).Code == 503
	}
	if !spent {
		t.Fatal("/a never spent the budget")
	}
	if rec := f.do(t, "GET", "/b?1", nil); rec.Code != 503 {
		t.Fatalf("/b after /a spent the module's budget: %d", rec.Code)
	}
}

func TestTheStatusPageCountsRequestsInEveryFormat(t *testing.T) {
	f := newFixture(t, basicConfig)
	for i := 0; i < 3; i++ {
		f.do(t, "GET", "/hello", nil)
	}
	f.do(t, "GET", "/sleep?5000", nil) // 504: wall clock
	f.do(t, "GET", "/nothing-here", nil)
	waitPool(t, f.m, 2, nil, 2*time.Second) // the killed child's replacement

	rec := f.do(t, "GET", "/_wagi/status?json&full", nil)
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("json: %d %v", rec.Code, rec.Header())
	}
	var st manager.Status
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Pool.Children != 2 || st.Pool.Requests != 4 || st.Pool.Killed["timeout"] != 1 || len(st.Children) != 2 {
		t.Fatalf("pool %+v, %d children listed", st.Pool, len(st.Children))
	}
	byRoute := map[string]manager.ModuleStatus{}
	for _, m := range st.Modules {
		byRoute[m.Route] = m
	}
	hello, sleep := byRoute["/hello"], byRoute["/sleep"]
	if hello.Requests["2xx"] != 3 || hello.CPUToday <= 0 || hello.P50Seconds <= 0 || hello.DailyCPU != 3600 {
		t.Fatalf("hello %+v", hello)
	}
	if sleep.Requests["5xx"] != 1 || sleep.Timeouts != 1 {
		t.Fatalf("sleep %+v", sleep)
	}

	rec = f.do(t, "GET", "/_wagi/status?openmetrics", nil)
	if !strings.HasPrefix(rec.Header().Get("Content-Type"), "application/openmetrics-text") {
		t.Fatalf("openmetrics content type %q", rec.Header().Get("Content-Type"))
	}
	om := rec.Body.String()
	for _, want := range []string{
		"wagi_children 2", `wagi_children_killed_total{reason="timeout"} 1`, "wagi_requests_total 4",
		`class="2xx",module="` + hello.Module[:12] + `",route="/hello"} 3`, "wagi_module_request_duration_seconds_bucket", "# EOF",
	} {
		if !strings.Contains(om, want) {
			t.Errorf("openmetrics lacks %q:\n%s", want, om)
		}
	}
	rec = f.do(t, "GET", "/_wagi/status?prometheus", nil)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	if _, err := parser.TextToMetricFamilies(strings.NewReader(rec.Body.String())); err != nil {
		t.Fatalf("the Prometheus text format does not parse: %v", err)
	}
	rec = f.do(t, "GET", "/_wagi/status", nil)
	for _, want := range []string{"idle children:", "killed (timeout):", "route:                /hello", "requests:             1xx=0 2xx=3"} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, rec.Body)
		}
	}
}

func TestTheStatusPageAnswersWhileEveryChildIsBusy(t *testing.T) {
	f := newFixture(t, basicConfig)
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); f.do(t, "GET", "/sleep?700", nil) }()
	}
	time.Sleep(200 * time.Millisecond)
	rec := f.do(t, "GET", "/_wagi/status?json", nil)
	wg.Wait()
	var st manager.Status
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil || rec.Code != 200 {
		t.Fatalf("%d %v", rec.Code, err)
	}
	if st.Pool.Busy != 2 || st.Pool.Idle != 0 {
		t.Fatalf("pool %+v, want 2 busy", st.Pool)
	}
}

func TestIPFSFailuresGetTheirStatus(t *testing.T) {
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // a node that never answers
	}))
	defer hang.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close() // nothing listens there any more
	const cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
	cases := []struct {
		name, api  string
		status     int
		retryAfter bool
	}{
		{"a node that does not answer in fetch_timeout is 504", hang.URL, 504, false},
		{"an unreachable node with the module not cached is 503", closedURL, 503, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fmt.Sprintf(`
[pool]
children = 1
[ipfs]
api = %q
fetch_timeout = "300ms"
[[module]]
route = "/m"
module = "ipfs://%s"
`, tc.api, cid))
			start := time.Now()
			rec := f.do(t, "GET", "/m", nil)
			if rec.Code != tc.status || (rec.Header().Get("Retry-After") != "") != tc.retryAfter {
				t.Fatalf("got %d %v %q", rec.Code, rec.Header(), rec.Body)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("took %s", d)
			}
			if !strings.Contains(f.log.String(), cid) {
				t.Fatalf("the log does not name the CID:\n%s", f.log)
			}
		})
	}
}
