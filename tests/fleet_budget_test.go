package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// The fleet-wide budget's timing, as configured below and in the manager:
// sync is the [budget] sync interval, poll the CPU poll of a running
// request (runner.cpuPoll, and the fast path's tick), stale the age past
// which a node's view of the fleet is not trusted (fleetbudget.New:
// max(3 × sync, 300ms)).
const (
	fleetSync  = 100 * time.Millisecond
	fleetPoll  = 5 * time.Millisecond
	fleetStale = 300 * time.Millisecond
	// replacement is what a child killed at the budget costs its module:
	// its replacement's start (see TestDailyBudgetHoldsUnderConcurrency).
	replacement = 50 * time.Millisecond
)

// fleetStatus is the part of /_wagi/status?json the fleet tests read.
type fleetStatus struct {
	Modules []struct {
		Route         string   `json:"route"`
		CPUToday      float64  `json:"cpu_today_seconds"`
		FleetCPUToday *float64 `json:"fleet_cpu_today_seconds"`
		Module        string   `json:"module"`
	} `json:"modules"`
	Fleet *struct {
		Store     string `json:"store"`
		Node      string `json:"node"`
		Connected bool   `json:"connected"`
		LastError string `json:"last_error"`
	} `json:"fleet"`
}

// fleetNode is one wagi-fcgi with its own state_dir, served over --http.
type fleetNode struct {
	w    *wagiProc
	base string
	hc   *http.Client
}

// startFleetNode starts node i of a fleet sharing a budget through store.
func startFleetNode(t *testing.T, bin string, i int, store, daily string, share float64) *fleetNode {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	cfg := fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 2
uid_range = "%d-%d"
[limits]
cpu = "30s"
timeout = "120s"
daily_cpu = %q
[budget]
shared = %q
local_share = %v
sync = %q
[[module]]
route = "/burn"
module = "{{mods}}/burn.wasm"
`, 71000+100*i, 71000+100*i+63, daily, store, share, fleetSync)
	w := startWagi(t, bin, dir, cfg, "--http", fmt.Sprintf("127.0.0.1:%d", port))
	n := &fleetNode{w: w, base: fmt.Sprintf("http://127.0.0.1:%d", port), hc: &http.Client{Timeout: 60 * time.Second}}
	waitListening(t, "tcp", fmt.Sprintf("127.0.0.1:%d", port), w.done, 20*time.Second, "wagi-fcgi --http", func() string { return w.log.String() })
	return n
}

// get is one request; a transport error is a status of 0.
func (n *fleetNode) get(path string) (int, http.Header, string) {
	resp, err := n.hc.Get(n.base + path)
	if err != nil {
		return 0, nil, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func (n *fleetNode) status(t *testing.T) fleetStatus {
	t.Helper()
	code, _, body := n.get("/_wagi/status?json")
	if code != 200 {
		t.Fatalf("status page: %d %s", code, body)
	}
	var st fleetStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("status page: %v\n%s", err, body)
	}
	return st
}

// spent is this node's own CPU today on /burn (its local ledger).
func (n *fleetNode) spent(t *testing.T) float64 {
	for _, m := range n.status(t).Modules {
		if m.Route == "/burn" {
			return m.CPUToday
		}
	}
	return 0
}

// isBudget503 tells the budget's 503 from the others (a full queue).
func isBudget503(code int, h http.Header, body string) bool {
	return code == 503 && h.Get("Retry-After") != "" && h.Get("Retry-After") != "1" && strings.Contains(body, "CPU time for today")
}

// load runs workers on every node, each sending /burn?50 (50 ms of
// spinning) until the node refuses it for the budget or stop is closed.
// served counts the 200s per node.
type load struct {
	wg       sync.WaitGroup
	stop     chan struct{}
	served   []atomic.Int64
	refused  []atomic.Bool
	failures atomic.Int64
}

func startLoad(nodes []*fleetNode, workers int) *load {
	l := &load{stop: make(chan struct{}), served: make([]atomic.Int64, len(nodes)), refused: make([]atomic.Bool, len(nodes))}
	for i, n := range nodes {
		for range workers {
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				for {
					select {
					case <-l.stop:
						return
					default:
					}
					code, h, body := n.get("/burn?50")
					switch {
					case code == 200:
						l.served[i].Add(1)
					case isBudget503(code, h, body):
						l.refused[i].Store(true)
						time.Sleep(20 * time.Millisecond)
					default:
						l.failures.Add(1)
						time.Sleep(20 * time.Millisecond)
					}
				}
			}()
		}
	}
	return l
}

func (l *load) end() {
	close(l.stop)
	l.wg.Wait()
}

// waitRefused waits until every node has refused a request for the budget.
func (l *load) waitRefused(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		all := true
		for i := range l.refused {
			all = all && l.refused[i].Load()
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every node refused within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// slackBound is how far past its limit a fleet may be charged while every
// node's view is fresh: once the fleet's true total reaches the limit, a
// node sees it at the latest after the others' next push (sync) of their
// spend as of their last poll, plus the age its own view may reach before
// it counts as stale; then its running requests are killed at their next
// poll. Until then the whole machine (NumCPU cores) may be spinning for
// the fleet. Each child killed at the budget also costs its replacement.
func slackBound(children int) time.Duration {
	return time.Duration(runtime.NumCPU())*(fleetStale+fleetSync+2*fleetPoll) + time.Duration(children)*replacement
}

func TestFleetBudgetHoldsAcrossThreeNodesUnderConcurrentLoad(t *testing.T) {
	r := testenv.StartRedis(t)
	bin := buildBinary(t, t.TempDir())
	var nodes []*fleetNode
	for i := range 3 {
		nodes = append(nodes, startFleetNode(t, bin, i, r.URL, "1s", 0.25))
	}
	l := startLoad(nodes, 3)
	l.waitRefused(t, 3*time.Minute)
	l.end()

	total := 0.0
	var per []string
	for i, n := range nodes {
		s := n.spent(t)
		total += s
		per = append(per, fmt.Sprintf("node %d %.3f s, %.3f s of it in request lines (%d served)", i, s, requestCPU(t, n.w.log.String(), "/burn"), l.served[i].Load()))
		code, h, body := n.get("/burn?1")
		if !isBudget503(code, h, body) {
			t.Errorf("node %d after the budget: %d, Retry-After %q, %q; want the budget's 503", i, code, h.Get("Retry-After"), body)
		}
	}
	bound := time.Second + slackBound(3*2)
	t.Logf("fleet of 3 sharing a 1 s budget: charged %.3f s in all (%s); limit 1 s, bound %.3f s = 1 s + %d cores × (stale %v + sync %v + 2 × poll %v) + 6 children × %v replacement",
		total, strings.Join(per, ", "), bound.Seconds(), runtime.NumCPU(), fleetStale, fleetSync, fleetPoll, replacement)
	if total > bound.Seconds() {
		t.Errorf("the fleet was charged %.3f s against a 1 s budget, past the %.3f s bound", total, bound.Seconds())
	}
	if total < 0.9 {
		t.Errorf("the fleet was charged only %.3f s: the budget was not used", total)
	}
	for i := range nodes {
		if l.served[i].Load() == 0 {
			t.Errorf("node %d served nothing: the load was not on all three", i)
		}
	}
}

// redisTotals reads the store's hash of /burn's budget today: node id →
// CPU in µs.
func redisTotals(t *testing.T, r *testenv.Redis, module string) map[string]int64 {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys, err := c.Keys(ctx, "wagi-fcgi:cpu:*:"+module).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, k := range keys {
		m, err := c.HGetAll(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		for node, v := range m {
			var n int64
			fmt.Sscan(v, &n)
			out[node] += n
		}
	}
	return out
}

func TestFleetBudgetLosesNoChargeWhenTheStoreIsKilledAndRestarted(t *testing.T) {
	r := testenv.StartRedis(t)
	bin := buildBinary(t, t.TempDir())
	// 4 s for the fleet; each node alone at most a quarter of it, 1 s.
	const share = 1.0
	var nodes []*fleetNode
	for i := range 3 {
		nodes = append(nodes, startFleetNode(t, bin, i, r.URL, "4s", 0.25))
	}
	l := startLoad(nodes, 2)
	// Mid-run: the fleet has spent a sixth of its budget.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		sum := 0.0
		for _, n := range nodes {
			sum += n.spent(t)
		}
		if sum >= 0.6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fleet spent only %.3f s in 3 minutes", sum)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.Kill(t)
	var servedBefore []int64
	var atKill []float64
	for i, n := range nodes {
		servedBefore = append(servedBefore, l.served[i].Load())
		atKill = append(atKill, n.spent(t))
	}
	// Down: every node goes on, each up to its local share, then refuses.
	l.waitRefused(t, 3*time.Minute)
	l.end()
	var own []float64
	for i, n := range nodes {
		s := n.spent(t)
		own = append(own, s)
		// Until its view goes stale the node still decides on the fleet's
		// figures; from then on, on its local share. Past either, each of
		// its two children overruns by a poll and costs a replacement.
		fresh := atKill[i] + (time.Duration(runtime.NumCPU()) * (fleetStale + fleetSync)).Seconds()
		bound := max(share, fresh) + (2*fleetPoll + 2*replacement).Seconds()
		servedDown := l.served[i].Load() - servedBefore[i]
		t.Logf("store down: node %d served %d more requests, its own spend %.3f s (local share %.3f s, bound %.3f s)", i, servedDown, s, share, bound)
		if servedDown == 0 {
			t.Errorf("node %d served nothing while the store was down", i)
		}
		if s > bound {
			t.Errorf("node %d spent %.3f s on its own while the store was down, past its local share %.3f s (bound %.3f s)", i, s, share, bound)
		}
		if st := n.status(t); st.Fleet == nil || st.Fleet.Connected {
			t.Errorf("node %d status while the store is down: %+v, want unreachable", i, st.Fleet)
		}
	}

	r.Restart(t) // empty: --save "" --appendonly no
	for _, n := range nodes {
		n.w.log.waitFor(t, time.Minute, "fleet budget store reachable again")
	}
	// The store refilled from the nodes' own totals: none lost, none twice.
	mod := ""
	ids := map[string]int{}
	for i, n := range nodes {
		st := n.status(t)
		ids[st.Fleet.Node] = i
		for _, m := range st.Modules {
			if m.Route == "/burn" {
				mod = m.Module
			}
		}
	}
	var got map[string]int64
	var sumRedis, sumOwn int64
	deadline = time.Now().Add(time.Minute)
	for {
		got = redisTotals(t, r, mod)
		sumRedis, sumOwn = 0, 0
		same := len(got) == len(nodes)
		for id, v := range got {
			i, ok := ids[id]
			if !ok {
				t.Fatalf("the store holds a total for %q, which no node has", id)
			}
			want := int64(math.Floor(nodes[i].spent(t)*1e6 + 1e-4)) // the store holds whole µs
			sumRedis += v
			sumOwn += want
			same = same && (v-want <= 1 && want-v <= 1) // µs rounding of the status page's seconds
		}
		if same {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store holds %v µs per node; the nodes' own totals are %v s", got, own)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("after the restart the store holds %d µs for the fleet; the nodes' own totals sum to %d µs", sumRedis, sumOwn)

	// Back: fleet-wide budgets apply again, and the fleet runs on to its
	// limit, not past it.
	l = startLoad(nodes, 2)
	l.waitRefused(t, 3*time.Minute)
	l.end()
	total := 0.0
	for _, n := range nodes {
		total += n.spent(t)
	}
	limit := 4*time.Second + slackBound(3*2)
	t.Logf("after the restart the fleet ran to %.3f s against its 4 s budget (bound %.3f s)", total, limit.Seconds())
	if total > limit.Seconds() {
		t.Errorf("the fleet was charged %.3f s against a 4 s budget, past the %.3f s bound", total, limit.Seconds())
	}
	if total < 3.6 {
		t.Errorf("after the restart the fleet stopped at %.3f s of its 4 s: the nodes stayed on their local share", total)
	}
}

func TestAStoreUnreachableFromTheStartHoldsANodeToItsLocalShare(t *testing.T) {
	bin := buildBinary(t, t.TempDir())
	// Nothing listens there.
	store := fmt.Sprintf("redis://127.0.0.1:%d/0", freePort(t))
	n := startFleetNode(t, bin, 0, store, "2s", 0.25)
	l := startLoad([]*fleetNode{n}, 3)
	l.waitRefused(t, 3*time.Minute)
	l.end()
	s := n.spent(t)
	share := 0.5
	bound := share + (2*fleetPoll + 2*replacement).Seconds() // two children: a poll and a replacement each
	t.Logf("store unreachable: the node spent %.3f s (%.3f s in request lines) of its 0.5 s local share of a 2 s budget (bound %.3f s), served %d",
		s, requestCPU(t, n.w.log.String(), "/burn"), bound, l.served[0].Load())
	if s > bound {
		t.Errorf("spent %.3f s with the store unreachable, past the %.3f s local share (bound %.3f s)", s, share, bound)
	}
	if s < 0.4 || l.served[0].Load() == 0 {
		t.Errorf("spent %.3f s, served %d: the node did not serve up to its local share", s, l.served[0].Load())
	}
	st := n.status(t)
	if st.Fleet == nil || st.Fleet.Connected || st.Fleet.LastError == "" || !strings.HasPrefix(st.Fleet.Store, "redis://127.0.0.1:") {
		t.Errorf("status fleet = %+v, want the store unreachable, with the error", st.Fleet)
	}
	if c := strings.Count(n.w.log.String(), "fleet budget store unreachable"); c != 1 {
		t.Errorf("the loss of the store was logged %d times, want once", c)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(n.w.sock), "state", "node-id")); err != nil {
		t.Errorf("no node id kept in state_dir: %v", err)
	}
}

// redisClients is how many connections redis-server has, this test's own
// excluded.
func redisClients(t *testing.T, r *testenv.Redis) int {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := c.ClientList(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(strings.TrimSpace(list), "\n")
}

func TestReloadsStopTheOldGenerationsFleetSync(t *testing.T) {
	r := testenv.StartRedis(t)
	bin := buildBinary(t, t.TempDir())
	n := startFleetNode(t, bin, 0, r.URL, "10s", 0.25)
	if code, _, body := n.get("/burn?1"); code != 200 {
		t.Fatalf("before the reloads: %d %s", code, body)
	}
	const reloads = 5
	for i := range reloads {
		if err := n.w.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Minute)
		for strings.Count(n.w.log.String(), `msg=reloaded`) < i+1 {
			if time.Now().After(deadline) {
				t.Fatalf("reload %d did not happen:\n%s", i+1, n.w.log.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Each generation's sync goroutine holds at most two connections;
	// the old ones' goroutines are stopped and their clients closed.
	deadline := time.Now().Add(time.Minute)
	for {
		c := redisClients(t, r)
		if c <= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections to the store after %d reloads of one node: old generations still sync", c, reloads)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, _, body := n.get("/burn?1"); code != 200 {
		t.Fatalf("after the reloads: %d %s", code, body)
	}
	if st := n.status(t); st.Fleet == nil || !st.Fleet.Connected {
		t.Errorf("status after the reloads: %+v, want connected", st.Fleet)
	}
}
