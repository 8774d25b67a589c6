package manager

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/cpuacct"
	"github.com/wagi-fcgi/wagi-fcgi/internal/fleetbudget"
)

// gatewayAccount is the ledger key of the budget that all gateway CIDs
// share. Module keys are hex digests, so it cannot clash with one.
const gatewayAccount = "@gateway"

// account is one daily CPU budget that a request draws on: its module's,
// and for a gateway CID also the gateway's.
type account struct {
	key   string        // ledger key: the module's content hash, or gatewayAccount
	day   time.Time     // start of the budget day
	limit time.Duration // the budget; 0 = none (the CPU is still recorded)
	next  time.Time     // when the budget resets, for Retry-After
}

// chargeTo is who pays for some CPU: one or two accounts.
type chargeTo struct {
	accts []account
}

func (c chargeTo) empty() bool { return len(c.accts) == 0 }

// module is the module's content hash, or "" for CPU that nobody's budget
// pays for (the manager's own _routes runs).
func (c chargeTo) module() string {
	if len(c.accts) == 0 {
		return ""
	}
	return c.accts[0].key
}

// budgets makes daily budgets hold under concurrency. The ledger knows what
// finished requests spent; budgets adds what running requests have spent so
// far (their children's CPU clocks, read at every poll), so a budget is
// judged on both: concurrent requests share what is left of it, and none
// runs on after the sum has reached it. Each running request then overshoots
// by at most the CPU its child used since its last poll.
//
// With a fleet (a [budget] shared store), a budget is judged on the whole
// fleet's spend instead: the other nodes' last pushed totals plus this
// node's spend, as fleetbudget decides from its cached view.
type budgets struct {
	ledger *cpuacct.Ledger    // nil: nothing is enforced or recorded
	fleet  *fleetbudget.Fleet // nil: budgets are this node's alone

	// mu guards running, and makes a finished request's move from running
	// to the ledger (settle) one step for totals: the fleet must never be
	// pushed a total that counts a request twice, since the store keeps
	// the largest total it was ever pushed.
	mu      sync.Mutex
	running map[acctKey]*runningCPU
}

type acctKey struct {
	key string
	day int64
}

// runningCPU is the CPU of the running requests of one account-day.
type runningCPU struct {
	ns   atomic.Int64
	refs int // requests holding it; under budgets.mu
}

func newBudgets(l *cpuacct.Ledger) *budgets {
	return &budgets{ledger: l, running: map[acctKey]*runningCPU{}}
}

// claim is one request's draw on its accounts while it runs.
type claim struct {
	b       *budgets
	to      chargeTo
	run     []*runningCPU
	counted time.Duration // this request's CPU included in run so far
}

// open registers a request that is about to run. The caller must close the
// claim when the request has ended and its CPU has been charged.
func (b *budgets) open(to chargeTo) *claim {
	c := &claim{b: b, to: to, run: make([]*runningCPU, len(to.accts))}
	b.mu.Lock()
	for i, a := range to.accts {
		k := acctKey{a.key, a.day.Unix()}
		r := b.running[k]
		if r == nil {
			r = &runningCPU{}
			b.running[k] = r
		}
		r.refs++
		c.run[i] = r
	}
	b.mu.Unlock()
	return c
}

// exhausted returns the first account whose day's spend, finished and
// running (and with a fleet, the other nodes'), has reached its budget.
func (b *budgets) exhausted(to chargeTo) (account, bool) {
	if b.ledger == nil {
		return account{}, false
	}
	for _, a := range to.accts {
		if a.limit <= 0 {
			continue
		}
		spent := b.spent(a)
		if b.fleet != nil {
			if a.key == "" {
				continue // no module loaded yet: nothing to ask the fleet
			}
			if b.fleet.Exhausted(fleetbudget.Account{Key: a.key, Day: a.day.Unix()}, a.limit, spent) {
				return a, true
			}
			continue
		}
		if spent >= a.limit {
			return a, true
		}
	}
	return account{}, false
}

// spent is this node's spend on a's day: the ledger's and the running
// requests'.
func (b *budgets) spent(a account) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	spent := b.ledger.Spent(a.key, a.day)
	if r := b.running[acctKey{a.key, a.day.Unix()}]; r != nil {
		spent += time.Duration(r.ns.Load())
	}
	return spent
}

// totals is this node's spend on every account it holds, finished and
// running, for the fleet's sync goroutine (which keeps the current days).
func (b *budgets) totals() []fleetbudget.Total {
	b.mu.Lock()
	defer b.mu.Unlock()
	snap := b.ledger.Snapshot()
	out := make([]fleetbudget.Total, 0, len(snap)+len(b.running))
	at := make(map[fleetbudget.Account]int, len(snap))
	for _, s := range snap {
		a := fleetbudget.Account{Key: s.Module, Day: s.Day.Unix()}
		at[a] = len(out)
		out = append(out, fleetbudget.Total{Account: a, CPU: s.CPU})
	}
	for k, r := range b.running {
		a := fleetbudget.Account{Key: k.key, Day: k.day}
		if i, ok := at[a]; ok {
			out[i].CPU += time.Duration(r.ns.Load())
		} else {
			out = append(out, fleetbudget.Total{Account: a, CPU: time.Duration(r.ns.Load())})
		}
	}
	return out
}

// report records that the request has used cpu so far, and says whether
// one of its budgets is now spent.
func (c *claim) report(cpu time.Duration) (account, bool) {
	if d := cpu - c.counted; d > 0 {
		for _, r := range c.run {
			r.ns.Add(int64(d))
		}
		c.counted = cpu
	}
	return c.b.exhausted(c.to)
}

// settle charges the request's CPU d to its accounts and removes it from
// the running CPU, in one step under b.mu (see budgets.mu): the spend is
// never seen short, nor twice.
func (c *claim) settle(log *slog.Logger, d time.Duration) {
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	b.chargeLocked(log, c.to, d)
	for i, a := range c.to.accts {
		r := c.run[i]
		r.ns.Add(-int64(c.counted))
		if r.refs--; r.refs == 0 {
			delete(b.running, acctKey{a.key, a.day.Unix()})
		}
	}
	c.counted = 0
}

// charge records CPU in the ledger for every account of to.
func (b *budgets) charge(log *slog.Logger, to chargeTo, d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.chargeLocked(log, to, d)
}

func (b *budgets) chargeLocked(log *slog.Logger, to chargeTo, d time.Duration) {
	if b.ledger == nil || d <= 0 {
		return
	}
	for _, a := range to.accts {
		if err := b.ledger.Charge(a.key, a.day, d); err != nil {
			log.Error("CPU ledger", "account", a.key, "err", err)
		}
	}
}

// budgetError is a load refused because the module's budget is spent (its
// _routes would run on it).
type budgetError struct {
	a   account
	now time.Time
}

func (e *budgetError) Error() string {
	return "daily CPU budget of " + e.a.key + " spent"
}
