package fleetbudget

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestTheDecision(t *testing.T) {
	const limit = 10 * time.Second
	tests := []struct {
		name   string
		local  time.Duration
		stored Stored
		fresh  bool
		spent  bool
	}{
		{"a fresh view with room serves", 2 * time.Second, Stored{Own: 2 * time.Second, Fleet: 5 * time.Second}, true, false},
		{"others' totals plus this node's current spend reaching the limit refuse", 6 * time.Second, Stored{Own: 2 * time.Second, Fleet: 6 * time.Second}, true, true},
		{"this node's spend since its last push counts at once", 9 * time.Second, Stored{Own: 1 * time.Second, Fleet: 2 * time.Second}, true, true},
		{"a stored sum at the limit refuses even if this node's own spend looks lower", time.Second, Stored{Own: 5 * time.Second, Fleet: limit}, true, true},
		{"a fresh view lets one node spend past its local share", 5 * time.Second, Stored{Own: 5 * time.Second, Fleet: 5 * time.Second}, true, false},
		{"a stale view holds the node to its local share", 2500 * time.Millisecond, Stored{Own: 2 * time.Second, Fleet: 2 * time.Second}, false, true},
		{"a stale view below the local share serves", 2 * time.Second, Stored{Own: time.Second, Fleet: time.Second}, false, false},
		{"a stale view still counts the others' last totals", 2 * time.Second, Stored{Own: 0, Fleet: 8 * time.Second}, false, true},
		{"nothing known holds the node to its local share", 2500 * time.Millisecond, Stored{}, false, true},
		{"nothing known and little spent serves", time.Second, Stored{}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decide(limit, tt.local, tt.stored, tt.fresh, 0.25); got != tt.spent {
				t.Errorf("decide = %v, want %v", got, tt.spent)
			}
		})
	}
}

// fakeStore answers Push with what its answer function returns: the error
// paths that a real server cannot be made to take on demand.
type fakeStore struct {
	mu     sync.Mutex
	answer func(totals []Total) ([]Stored, error)
	pushes int
}

func (s *fakeStore) Push(ctx context.Context, node string, totals []Total) ([]Stored, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pushes++
	return s.answer(totals)
}

func (s *fakeStore) Ping(ctx context.Context) error {
	_, err := s.Push(ctx, "", nil)
	return err
}

func (s *fakeStore) Close() error { return nil }

func (s *fakeStore) set(f func(totals []Total) ([]Stored, error)) {
	s.mu.Lock()
	s.answer = f
	s.mu.Unlock()
}

// clock is a settable time for staleness.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }
func newClock() *clock               { return &clock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }
func fleetAnswer(fleet time.Duration) func([]Total) ([]Stored, error) {
	return func(totals []Total) ([]Stored, error) {
		out := make([]Stored, len(totals))
		for i, t := range totals {
			out[i] = Stored{Prev: t.CPU, Own: t.CPU, Fleet: t.CPU + fleet}
		}
		return out, nil
	}
}

func TestAnUnreachableStoreHoldsTheNodeToItsLocalShareAndIsLoggedOnce(t *testing.T) {
	clk := newClock()
	day := clk.Now().Truncate(24 * time.Hour).Unix()
	acct := Account{Key: "abc", Day: day}
	var logBuf bytes.Buffer
	store := &fakeStore{answer: fleetAnswer(3 * time.Second)}
	local := 2 * time.Second
	f, err := New(Options{Store: store, Node: "n1", Sync: 100 * time.Millisecond, LocalShare: 0.25, Now: clk.Now,
		Logger: slog.New(slog.NewTextHandler(&logBuf, nil)),
		Totals: func() []Total { return []Total{{Account: acct, CPU: local}} }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const limit = 10 * time.Second

	f.round(ctx)
	if f.Exhausted(acct, limit, local) {
		t.Fatal("connected with 5s of 10s spent: refused")
	}
	store.set(func([]Total) ([]Stored, error) { return nil, errors.New("connection refused") })
	for range 3 {
		f.round(ctx)
	}
	if f.Exhausted(acct, limit, local) {
		t.Fatal("refused while the last good view is still fresh")
	}
	clk.Add(f.staleAfter + time.Millisecond)
	if f.Exhausted(acct, limit, local) {
		t.Fatal("unreachable, 2s spent here of a 2.5s local share: refused")
	}
	if !f.Exhausted(acct, limit, 2500*time.Millisecond) {
		t.Fatal("unreachable, the 2.5s local share spent here: served")
	}
	if st := f.Status(); st.Connected || !strings.Contains(st.LastError, "connection refused") {
		t.Errorf("Status = %+v, want unreachable with the error", st)
	}
	store.set(fleetAnswer(3 * time.Second))
	f.round(ctx)
	if f.Exhausted(acct, limit, local) || !f.Status().Connected {
		t.Fatal("back: still held to the local share")
	}
	log := logBuf.String()
	if n := strings.Count(log, "store unreachable"); n != 1 {
		t.Errorf("logged the loss %d times, want once:\n%s", n, log)
	}
	if n := strings.Count(log, "reachable again"); n != 1 {
		t.Errorf("logged the return %d times, want once:\n%s", n, log)
	}
}

func TestAStaleViewHoldsANodeToItsLocalShare(t *testing.T) {
	clk := newClock()
	acct := Account{Key: "abc", Day: clk.Now().Truncate(24 * time.Hour).Unix()}
	store := &fakeStore{answer: fleetAnswer(0)}
	f, err := New(Options{Store: store, Node: "n1", LocalShare: 0.25, Now: clk.Now, Logger: slog.New(slog.DiscardHandler),
		Totals: func() []Total { return []Total{{Account: acct, CPU: 3 * time.Second}} }})
	if err != nil {
		t.Fatal(err)
	}
	f.round(context.Background())
	if f.Exhausted(acct, 10*time.Second, 3*time.Second) {
		t.Fatal("fresh: refused at 3s of 10s")
	}
	clk.Add(f.staleAfter + time.Millisecond) // no round since: the sync goroutine is stuck
	if !f.Exhausted(acct, 10*time.Second, 3*time.Second) {
		t.Fatal("stale: served at 3s of 10s with a 2.5s local share")
	}
}

func TestABrokenStoreAnswerIsNotUsed(t *testing.T) {
	tests := []struct {
		name   string
		answer func([]Total) ([]Stored, error)
	}{
		{"fewer accounts than pushed", func([]Total) ([]Stored, error) { return nil, nil }},
		{"an error", func([]Total) ([]Stored, error) {
			return nil, errors.New("READONLY You can't write against a read only replica")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			acct := Account{Key: "abc", Day: clk.Now().Truncate(24 * time.Hour).Unix()}
			f, err := New(Options{Store: &fakeStore{answer: tt.answer}, Node: "n1", LocalShare: 0.5, Now: clk.Now, Logger: slog.New(slog.DiscardHandler),
				Totals: func() []Total { return []Total{{Account: acct, CPU: time.Second}} }})
			if err != nil {
				t.Fatal(err)
			}
			f.round(context.Background())
			if f.Status().Connected {
				t.Error("connected after a broken answer")
			}
			if _, ok := f.FleetSpent(acct); ok {
				t.Error("a broken answer became the view")
			}
			if !f.Exhausted(acct, 2*time.Second, time.Second) {
				t.Error("not held to the local share after a broken answer")
			}
		})
	}
}

func TestAnAccountAskedAboutIsReadOnTheNextRound(t *testing.T) {
	clk := newClock()
	acct := Account{Key: "abc", Day: clk.Now().Truncate(24 * time.Hour).Unix()}
	store := &fakeStore{answer: fleetAnswer(7 * time.Second)}
	f, err := New(Options{Store: store, Node: "n1", LocalShare: 0.25, Now: clk.Now, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if f.Exhausted(acct, 10*time.Second, 0) {
		t.Fatal("unknown account, nothing spent: refused")
	}
	f.round(context.Background())
	if !f.Exhausted(acct, 10*time.Second, 3*time.Second) {
		t.Fatal("others spent 7s, this node 3s of 10s: served")
	}
	yesterday := Account{Key: "abc", Day: acct.Day - 26*3600}
	f.Exhausted(yesterday, time.Second, 0)
	if got := f.totals(clk.Now()); len(got) != 1 || got[0].Account != acct {
		t.Errorf("totals = %+v, want only today's account (a day over is not read)", got)
	}
}

func TestLocalShareMustBeAFraction(t *testing.T) {
	for _, share := range []float64{0, -1, 1.01} {
		if _, err := New(Options{Store: &fakeStore{}, LocalShare: share}); err == nil {
			t.Errorf("local_share %v accepted", share)
		}
	}
}

func TestANodeWithNothingToPushStillLearnsWhetherTheStoreAnswers(t *testing.T) {
	store := &fakeStore{answer: func([]Total) ([]Stored, error) { return nil, errors.New("connection refused") }}
	f, err := New(Options{Store: store, Node: "n1", LocalShare: 0.25, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	f.round(context.Background())
	if st := f.Status(); st.Connected || st.LastError == "" {
		t.Errorf("store down, nothing to push: Status = %+v, want unreachable", st)
	}
	store.set(fleetAnswer(0))
	f.round(context.Background())
	if st := f.Status(); !st.Connected || st.LastSync.IsZero() {
		t.Errorf("store up, nothing to push: Status = %+v, want connected", st)
	}
}

func TestAnotherNodeUnderTheSameIDIsLoggedOnceItLasts(t *testing.T) {
	clk := newClock()
	acct := Account{Key: "abc", Day: clk.Now().Truncate(24 * time.Hour).Unix()}
	var logBuf bytes.Buffer
	// The store holds 5 s under this id; this node spent 1 s.
	store := &fakeStore{answer: func(totals []Total) ([]Stored, error) {
		return []Stored{{Prev: 5 * time.Second, Own: 5 * time.Second, Fleet: 5 * time.Second}}, nil
	}}
	f, err := New(Options{Store: store, Node: "n1", LocalShare: 0.25, Now: clk.Now, Logger: slog.New(slog.NewTextHandler(&logBuf, nil)),
		Totals: func() []Total { return []Total{{Account: acct, CPU: time.Second}} }})
	if err != nil {
		t.Fatal(err)
	}
	f.round(context.Background())
	clk.Add(idSharedAfter / 2) // a reload's overlap: not yet
	f.round(context.Background())
	if strings.Contains(logBuf.String(), "same id") {
		t.Fatal("logged before the excess lasted")
	}
	for range 3 {
		clk.Add(idSharedAfter)
		f.round(context.Background())
	}
	if n := strings.Count(logBuf.String(), "same id"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, logBuf.String())
	}
	// The fleet's total counts the larger figure meanwhile.
	if !f.Exhausted(acct, 5*time.Second, time.Second) {
		t.Error("5 s stored under this id against a 5 s limit: served")
	}
}

func TestARoundPushesOnlyHotAccountsBetweenFullRounds(t *testing.T) {
	clk := newClock()
	day := clk.Now().Truncate(24 * time.Hour).Unix()
	busy, quiet, asked := Account{Key: "busy", Day: day}, Account{Key: "quiet", Day: day}, Account{Key: "asked", Day: day}
	var mu sync.Mutex
	local := map[Account]time.Duration{busy: time.Second, quiet: 2 * time.Second, asked: 3 * time.Second}
	var lastPush []Account
	lose := false // the store answers as if it had lost everything
	answer := func(totals []Total) ([]Stored, error) {
		lastPush = lastPush[:0]
		out := make([]Stored, len(totals))
		for i, t := range totals {
			lastPush = append(lastPush, t.Account)
			out[i] = Stored{Prev: t.CPU, Own: t.CPU, Fleet: t.CPU}
			if lose {
				out[i].Prev = 0
			}
		}
		return out, nil
	}
	store := &fakeStore{answer: answer}
	var logBuf bytes.Buffer
	f, err := New(Options{Store: store, Node: "n1", LocalShare: 0.25, Now: clk.Now, Logger: slog.New(slog.NewTextHandler(&logBuf, nil)),
		Totals: func() []Total {
			mu.Lock()
			defer mu.Unlock()
			var out []Total
			for a, d := range local {
				out = append(out, Total{Account: a, CPU: d})
			}
			return out
		}})
	if err != nil {
		t.Fatal(err)
	}
	pushed := func() []string {
		var keys []string
		for _, a := range lastPush {
			keys = append(keys, a.Key)
		}
		slices.Sort(keys)
		return keys
	}
	step := func(name string, want ...string) {
		t.Helper()
		clk.Add(100 * time.Millisecond)
		f.round(context.Background())
		if got := pushed(); !slices.Equal(got, want) {
			t.Errorf("%s: pushed %v, want %v", name, got, want)
		}
	}
	step("the first round pushes everything", "asked", "busy", "quiet")
	mu.Lock()
	local[busy] += 100 * time.Millisecond
	mu.Unlock()
	step("then only what changed", "busy")
	f.Exhausted(asked, time.Hour, 0)
	step("and what was asked about", "asked")
	step("which stays hot for a while", "asked")
	clk.Add(hotFor)
	store.set(func([]Total) ([]Stored, error) { return nil, errors.New("down") })
	f.round(context.Background())
	store.set(answer)
	step("after a failed round everything is pushed again", "asked", "busy", "quiet")
	step("then nothing changed: a ping")
	mu.Lock()
	local[busy] += 100 * time.Millisecond
	mu.Unlock()
	lose = true
	step("a store that lost what it held is found out", "busy")
	lose = false
	step("and refilled on the next round", "asked", "busy", "quiet")
	if !strings.Contains(logBuf.String(), "lost totals") {
		t.Errorf("the loss was not logged:\n%s", logBuf.String())
	}
	clk.Add(fullEvery)
	step("every fullEvery everything is pushed", "asked", "busy", "quiet")
}
