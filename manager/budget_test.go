package manager

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/cpuacct"
	"github.com/wagi-fcgi/wagi-fcgi/internal/fleetbudget"
)

func TestBudgetsCountRunningRequestsWithFinishedOnes(t *testing.T) {
	l, err := cpuacct.OpenLedger(filepath.Join(t.TempDir(), "ledger"), cpuacct.LedgerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	day := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mod := account{key: "aaaa", day: day, limit: time.Second}
	gw := account{key: gatewayAccount, day: day, limit: 1500 * time.Millisecond}
	b := newBudgets(l)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	type step struct {
		name  string
		do    func() (account, bool)
		spent bool
		who   string
	}
	one := chargeTo{accts: []account{mod, gw}}
	other := chargeTo{accts: []account{{key: "bbbb", day: day, limit: time.Hour}, gw}}
	c1, c2 := b.open(one), b.open(one)
	c3 := b.open(other)
	for _, s := range []step{
		{name: "a fresh module has room", do: func() (account, bool) { return b.exhausted(one) }},
		{name: "one running request below the budget leaves room", do: func() (account, bool) { return c1.report(400 * time.Millisecond) }},
		{name: "two running requests that reach it together spend it", do: func() (account, bool) { return c2.report(600 * time.Millisecond) }, spent: true, who: "aaaa"},
		{name: "a new request of the module is refused", do: func() (account, bool) { return b.exhausted(one) }, spent: true, who: "aaaa"},
		{name: "another module has its own budget but shares the gateway's", do: func() (account, bool) { return c3.report(400 * time.Millisecond) }},
		{name: "the gateway budget is spent by the sum of both modules", do: func() (account, bool) { return c3.report(500 * time.Millisecond) }, spent: true, who: gatewayAccount},
		{name: "settled requests still count", do: func() (account, bool) {
			c1.settle(log, 400*time.Millisecond)
			c2.settle(log, 600*time.Millisecond)
			c3.settle(log, 500*time.Millisecond)
			return b.exhausted(other)
		}, spent: true, who: gatewayAccount},
	} {
		a, spent := s.do()
		if spent != s.spent || (spent && a.key != s.who) {
			t.Fatalf("%s: spent=%v (%q), want %v (%q)", s.name, spent, a.key, s.spent, s.who)
		}
	}
	if len(b.running) != 0 {
		t.Fatalf("%d running entries left after every claim closed", len(b.running))
	}
	if got := l.Spent(gatewayAccount, day); got != 1500*time.Millisecond {
		t.Fatalf("gateway charged %v, want 1.5s", got)
	}
}

func TestTotalsNeverCountASettlingRequestTwice(t *testing.T) {
	l, err := cpuacct.OpenLedger(filepath.Join(t.TempDir(), "ledger"), cpuacct.LedgerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	day := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	to := chargeTo{accts: []account{{key: "aaaa", day: day, limit: time.Hour}}}
	b := newBudgets(l)
	log := slog.New(slog.DiscardHandler)

	// The store keeps the largest total it was ever pushed: a total read
	// between a request's charge and its removal from the running CPU
	// would count it twice, for good.
	const requests, each = 2000, time.Millisecond
	var started atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range requests {
			started.Add(1)
			c := b.open(to)
			c.report(each)
			c.settle(log, each)
		}
	}()
	for {
		select {
		case <-done:
			if got := b.totals(); len(got) != 1 || got[0].CPU != requests*each {
				t.Fatalf("totals at the end = %+v, want %v", got, requests*each)
			}
			return
		default:
		}
		var got time.Duration
		for _, tt := range b.totals() {
			got += tt.CPU
		}
		// Each request started so far counts at most once, running or
		// settled.
		if n := started.Load(); got > time.Duration(n)*each {
			t.Fatalf("totals = %v with %d requests started: one counted twice", got, n)
		}
	}
}

// othersStore is a fleet store where the other nodes have spent others on
// every account.
type othersStore struct{ others time.Duration }

func (s othersStore) Push(_ context.Context, _ string, totals []fleetbudget.Total) ([]fleetbudget.Stored, error) {
	out := make([]fleetbudget.Stored, len(totals))
	for i, t := range totals {
		out[i] = fleetbudget.Stored{Prev: t.CPU, Own: t.CPU, Fleet: t.CPU + s.others}
	}
	return out, nil
}
func (othersStore) Ping(context.Context) error { return nil }
func (othersStore) Close() error               { return nil }

func TestWithAFleetBudgetsCountTheOtherNodesAndTheRunningRequests(t *testing.T) {
	l, err := cpuacct.OpenLedger(filepath.Join(t.TempDir(), "ledger"), cpuacct.LedgerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	now := time.Now()
	day := now.Truncate(24 * time.Hour)
	to := chargeTo{accts: []account{{key: "aaaa", day: day, limit: time.Second}}}
	b := newBudgets(l)
	f, err := fleetbudget.New(fleetbudget.Options{Store: othersStore{others: 700 * time.Millisecond}, Node: "n1", LocalShare: 0.25,
		Sync: 10 * time.Millisecond, Totals: b.totals, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	b.fleet = f
	f.Start()
	defer f.Close()

	c := b.open(to)
	c.report(200 * time.Millisecond) // this node: 200 ms running
	// Until the first round, held to the local share (250 ms): room.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if spent, ok := f.FleetSpent(fleetbudget.Account{Key: "aaaa", Day: day.Unix()}); ok && spent == 900*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the running request never reached the store's sum")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, spent := b.exhausted(to); spent {
		t.Fatal("700 ms elsewhere + 200 ms here of 1 s: refused")
	}
	if _, spent := c.report(300 * time.Millisecond); !spent {
		t.Fatal("700 ms elsewhere + 300 ms running here of 1 s: not spent")
	}
	c.settle(slog.New(slog.DiscardHandler), 300*time.Millisecond)
	if _, spent := b.exhausted(to); !spent {
		t.Fatal("700 ms elsewhere + 300 ms settled here of 1 s: not spent")
	}
}
