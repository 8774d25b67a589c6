// Package fleetbudget shares daily CPU budgets across a fleet of nodes
// through a Redis-protocol store.
//
// Each node pushes its own cumulative total per account and budget day
// (its durable local ledger, plus what running requests have used so far)
// into one hash per account-day, one field per node; a Lua script keeps the
// largest total each node ever pushed and returns the sum. Pushes are
// idempotent, so a lost reply is retried by the next round, and a store
// that restarts empty is refilled by every node's next push: no charge is
// lost and none is counted twice (RATIONALE.md).
//
// A node decides on its cached view, never on a call to the store: a slow
// or hostile store cannot hold up a request. While the view is fresh an
// account is spent when the other nodes' last totals plus this node's
// current spend reach the limit. While it is stale (the store unreachable,
// or no round succeeded for a few sync intervals) the node may spend only
// local_share of the limit on its own, and still counts the other nodes'
// last known totals.
package fleetbudget

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
)

// Account is one budget on one day: a module's content hash (the same on
// every node) or "@gateway", and the start of its budget day in Unix
// seconds (a number, not a time.Time, so that it compares as a map key).
type Account struct {
	Key string
	Day int64
}

// Options configure a Fleet.
type Options struct {
	// URL is the store, redis:// or rediss://; ignored when Store is set.
	URL string
	// Store replaces the Redis store (tests of failure paths).
	Store Store
	// Node is this node's id: its field in every account-day hash.
	Node string
	// Sync is how often a round pushes and reads; 0 means 100ms.
	Sync time.Duration
	// LocalShare is the fraction of a limit this node may spend on its own
	// while its view is stale; in (0, 1].
	LocalShare float64
	// Totals returns this node's spend on every account of a current day.
	// It is called by the sync goroutine once per round.
	Totals func() []Total
	// Logger gets one line when the store is lost and one when it is back.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// A round pushes only the hot accounts: those whose total changed since
// it was last pushed, and those asked about (by a request, or the fast
// path's tick) within hotFor; every fullEvery, after a failed round, and
// when the store shows it lost totals (a restart), it pushes them all.
// So the store's load follows the accounts in use, not every module a node
// has served today (RATIONALE.md, "Cost").
const (
	hotFor    = 10 * time.Second
	fullEvery = 10 * time.Second
	// maxAsked bounds the accounts remembered as asked about.
	maxAsked = 4096
)

// Fleet is one node's side of the shared budgets. Exhausted is safe for
// concurrent use and never blocks on the store.
type Fleet struct {
	opts       Options
	store      Store
	staleAfter time.Duration
	timeout    time.Duration // bounds one round, every call included

	view atomic.Pointer[view]

	askMu sync.Mutex
	asked map[Account]time.Time // when each account was last asked about

	mu         sync.Mutex
	state      State
	lostLogged bool // the loss of the store was logged (this outage, or before the first round)

	// Only the sync goroutine touches these.
	pushed      map[Account]time.Duration // what the last successful push of each account sent
	lastFull    time.Time                 // the last round that pushed every account
	needFull    bool                      // the next round pushes every account
	excessSince time.Time                 // since when the store holds more under our id than we spent
	warnedID    bool                      // logged that another node pushes under our id

	cancel context.CancelFunc // ends the sync goroutine's context
	done   chan struct{}      // closed when the sync goroutine has returned
}

// view is what the successful rounds learnt: the last one's start, and
// each account's figures as of the last round that pushed it.
type view struct {
	at       time.Time
	accounts map[Account]Stored
}

// State is the store's state as the status page shows it.
type State struct {
	Store     string    // the URL without its password
	Node      string    // this node's id
	Connected bool      // the last round succeeded
	Since     time.Time // when Connected last changed (or the start)
	LastSync  time.Time // the last successful round; zero if none yet
	LastError string    // why the last round failed, while it is unreachable
}

// New makes a Fleet; Start runs its sync goroutine.
func New(o Options) (*Fleet, error) {
	if o.Sync <= 0 {
		o.Sync = 100 * time.Millisecond
	}
	if !(o.LocalShare > 0 && o.LocalShare <= 1) {
		return nil, fmt.Errorf("fleet budget: local_share %v is not in (0, 1]", o.LocalShare)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	f := &Fleet{opts: o, asked: map[Account]time.Time{}, pushed: map[Account]time.Duration{}, needFull: true}
	// A view older than staleAfter is not trusted to bound the fleet.
	// Three rounds, and never under 300ms: a loaded machine delays a
	// goroutine by tens of milliseconds, and that must not flip a node
	// into its local share.
	f.staleAfter = max(3*o.Sync, 300*time.Millisecond)
	f.timeout = f.staleAfter / 2
	f.store = o.Store
	if f.store == nil {
		s, err := openRedis(o.URL, f.timeout)
		if err != nil {
			return nil, err
		}
		f.store = s
	}
	f.state = State{Store: config.RedactURL(o.URL), Node: o.Node, Since: o.Now()}
	return f, nil
}

// Start runs the sync goroutine until Close.
func (f *Fleet) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan struct{})
	go f.run(ctx)
}

// Close stops the sync goroutine, waits for it (a round in flight ends at
// its timeout at the latest) and closes the store.
func (f *Fleet) Close() error {
	if f.cancel != nil {
		f.cancel()
		<-f.done
	}
	return f.store.Close()
}

func (f *Fleet) run(ctx context.Context) {
	defer close(f.done)
	t := time.NewTicker(f.opts.Sync)
	defer t.Stop()
	for {
		f.round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// round pushes this node's hot totals (all of them on a full round) and
// merges the fleet's answer into the view. A failed round leaves the view
// in place to age.
func (f *Fleet) round(ctx context.Context) {
	start := f.opts.Now()
	all := f.totals(start)
	full := f.needFull || start.Sub(f.lastFull) >= fullEvery
	push := all
	if !full {
		push = slices.DeleteFunc(slices.Clone(all), func(t Total) bool {
			p, ok := f.pushed[t.Account]
			return ok && p == t.CPU && !f.hot(t.Account, start)
		})
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	var stored []Stored
	var err error
	if len(push) > 0 {
		stored, err = f.store.Push(ctx, f.opts.Node, push)
		if err == nil && len(stored) != len(push) {
			err = fmt.Errorf("store answered %d accounts for %d", len(stored), len(push))
		}
	} else {
		err = f.store.Ping(ctx) // nothing to push: still say whether it answers
	}
	if err != nil {
		f.needFull = true // catch up when it is back
		f.failed(err)
		return
	}
	v := &view{at: start, accounts: map[Account]Stored{}}
	if old := f.view.Load(); old != nil {
		for a, st := range old.accounts {
			if current(a, start) {
				v.accounts[a] = st
			}
		}
	}
	excess, lost := false, false
	for i, t := range push {
		v.accounts[t.Account] = stored[i]
		excess = excess || stored[i].Own > t.CPU+time.Second
		// The store keeps each node's largest total: holding less than
		// this node pushed before, it lost data (a restart).
		lost = lost || stored[i].Prev.Microseconds() < min(f.pushed[t.Account].Microseconds(), maxMicros)
		f.pushed[t.Account] = t.CPU
	}
	for a := range f.pushed {
		if !current(a, start) {
			delete(f.pushed, a)
		}
	}
	f.view.Store(v)
	if full {
		f.lastFull, f.needFull = start, false
	}
	if lost && !full {
		f.needFull = true
		f.opts.Logger.Info("fleet budget store lost totals (restarted?): pushing every account again", "store", config.RedactURL(f.opts.URL), "node", f.opts.Node)
	}
	f.succeeded(start)
	f.checkID(start, excess)
}

// hot says whether a was asked about within hotFor of now.
func (f *Fleet) hot(a Account, now time.Time) bool {
	f.askMu.Lock()
	defer f.askMu.Unlock()
	at, ok := f.asked[a]
	return ok && now.Sub(at) < hotFor
}

// ask records that a decision about a was asked for now.
func (f *Fleet) ask(a Account, now time.Time) {
	f.askMu.Lock()
	if _, ok := f.asked[a]; ok || len(f.asked) < maxAsked {
		f.asked[a] = now
	}
	f.askMu.Unlock()
}

// idSharedAfter is how long the store must hold more under this node's id
// than the node has spent before that is taken for another node using the
// same id: during a reload two generations of one node push under one id,
// the old one's running requests included, for up to their timeout.
const idSharedAfter = time.Minute

// checkID logs once when the store has held more CPU under this node's id
// than this node spent, for idSharedAfter: another node uses the id (a
// copied state_dir), or this node's ledger was lost. The fleet's total
// still counts the larger figure (see decide). Only the sync goroutine
// calls it.
func (f *Fleet) checkID(now time.Time, excess bool) {
	switch {
	case !excess:
		f.excessSince = time.Time{}
	case f.excessSince.IsZero():
		f.excessSince = now
	case now.Sub(f.excessSince) >= idSharedAfter && !f.warnedID:
		f.warnedID = true
		f.opts.Logger.Error("fleet budget: the store holds more CPU under this node's id than this node has spent; "+
			"another node uses the same id (a copied state_dir?) or this node's ledger was lost: give each node its own [budget] node_id", "node", f.opts.Node)
	}
}

// totals is every account a round may push: this node's spend on the
// current days, and a zero for each account it was asked about recently
// without having spent on it (it only reads those).
func (f *Fleet) totals(now time.Time) []Total {
	var out []Total
	if f.opts.Totals != nil {
		out = f.opts.Totals()
	}
	have := make(map[Account]bool, len(out))
	kept := out[:0]
	for _, t := range out {
		if current(t.Account, now) && !have[t.Account] {
			have[t.Account] = true
			kept = append(kept, t)
		}
	}
	out = kept
	f.askMu.Lock()
	for a, at := range f.asked {
		switch {
		case now.Sub(at) >= hotFor || !current(a, now):
			delete(f.asked, a)
		case !have[a]:
			out = append(out, Total{Account: a})
		}
	}
	f.askMu.Unlock()
	return out
}

// current says whether an account's day may still be running: a day is
// 24 h, 25 h across a DST change.
func current(a Account, now time.Time) bool {
	return now.Sub(time.Unix(a.Day, 0)) < 25*time.Hour
}

func (f *Fleet) failed(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state.LastError = err.Error()
	if f.state.Connected || !f.lostLogged {
		if f.state.Connected {
			f.state.Since = f.opts.Now()
		}
		f.state.Connected, f.lostLogged = false, true
		f.opts.Logger.Warn("fleet budget store unreachable: each budget is limited to this node's local share until it is back",
			"store", f.state.Store, "node", f.opts.Node, "local_share", f.opts.LocalShare, "err", err)
	}
}

func (f *Fleet) succeeded(at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state.LastSync, f.state.LastError = at, ""
	if !f.state.Connected {
		if f.lostLogged {
			f.opts.Logger.Info("fleet budget store reachable again: totals pushed, fleet-wide budgets apply",
				"store", f.state.Store, "node", f.opts.Node, "down", at.Sub(f.state.Since).Round(time.Millisecond))
		} else {
			f.opts.Logger.Info("fleet budget store connected", "store", f.state.Store, "node", f.opts.Node)
		}
		f.state.Connected, f.state.Since, f.lostLogged = true, at, false
	}
}

// Status is the store's state for the status page.
func (f *Fleet) Status() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}

// FleetSpent is the fleet's total for an account as of the last
// successful round, and whether the view has it.
func (f *Fleet) FleetSpent(a Account) (time.Duration, bool) {
	v := f.view.Load()
	if v == nil {
		return 0, false
	}
	s, ok := v.accounts[a]
	return s.Fleet, ok
}

// Exhausted says whether account a, whose limit is limit (> 0), is spent
// when this node has spent local on it (finished and running requests).
// It reads only the cached view.
//
// Fresh means the last round succeeded within staleAfter and the account
// is in the view. An account asked about is hot from the next round on,
// so its figures are then one round old; before that (one asked about
// after more than hotFor of quiet) they may be up to fullEvery old.
func (f *Fleet) Exhausted(a Account, limit, local time.Duration) bool {
	now := f.opts.Now()
	f.ask(a, now)
	v := f.view.Load()
	var s Stored
	fresh := false
	if v != nil {
		var known bool
		s, known = v.accounts[a]
		fresh = known && now.Sub(v.at) <= f.staleAfter
	}
	return decide(limit, local, s, fresh, f.opts.LocalShare)
}

// decide is the rule. The fleet's spend is the other nodes' last totals
// plus this node's current spend, or the last sum if that is larger (this
// node's stored total is ahead of its current spend only if another node
// shares its id). Stale, the node is also held to its local share.
func decide(limit, local time.Duration, s Stored, fresh bool, share float64) bool {
	if max(s.Fleet-s.Own+local, s.Fleet) >= limit {
		return true
	}
	if fresh {
		return false
	}
	return float64(local) >= share*float64(limit)
}
