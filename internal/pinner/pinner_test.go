package pinner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// fakeNode is a pin API for the error paths only: an unreachable node, a
// failing pin add, pins that change hands between a list and a remove.
// What kubo really does with names is tested against kubo (tests/).
type fakeNode struct {
	mu      sync.Mutex
	pins    map[string][2]string // CID → {type, name}
	down    bool
	addErr  error
	calls   int
	takeRm  string // PinOf reports this CID as someone else's (taken over after the list)
	removed []string
	// resolveTo is what Resolve answers; "" fails as an IPNS name that
	// does not resolve.
	resolveTo string
	// resolveTimeout makes Resolve time out, as kubo does searching for a
	// name nobody published.
	resolveTimeout bool
	resolves       int
	local          map[string]bool // CID → whether it was pinned offline
	// addTimeout makes PinAdd time out for this CID, as kubo does when no
	// peer gives the blocks.
	addTimeout string
	adds       map[string]int
}

func (f *fakeNode) call() error {
	f.calls++
	if f.down {
		return fmt.Errorf("%w: dial tcp 127.0.0.1:5001: connection refused", ipfs.ErrUnavailable)
	}
	return nil
}

func (f *fakeNode) PinsNamed(_ context.Context, sub string) (map[string]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call(); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for c, p := range f.pins {
		if p[0] == ipfs.PinRecursive && strings.Contains(p[1], sub) {
			out[c] = p[1]
		}
	}
	return out, nil
}

func (f *fakeNode) PinOf(_ context.Context, c string) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call(); err != nil {
		return "", "", err
	}
	if c == f.takeRm {
		return ipfs.PinRecursive, "", nil
	}
	p := f.pins[c]
	return p[0], p[1], nil
}

func (f *fakeNode) PinAdd(_ context.Context, c, name string, local bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call(); err != nil {
		return err
	}
	if f.adds == nil {
		f.adds = map[string]int{}
	}
	f.adds[c]++
	if c == f.addTimeout {
		return fmt.Errorf("%w: context deadline exceeded", ipfs.ErrTimeout)
	}
	if f.addErr != nil {
		return f.addErr
	}
	if f.local == nil {
		f.local = map[string]bool{}
	}
	f.local[c] = local
	f.pins[c] = [2]string{ipfs.PinRecursive, name}
	return nil
}

func (f *fakeNode) PinRm(_ context.Context, c string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call(); err != nil {
		return err
	}
	delete(f.pins, c)
	f.removed = append(f.removed, c)
	return nil
}

func (f *fakeNode) Resolve(_ context.Context, p string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call(); err != nil {
		return "", err
	}
	f.resolves++
	if f.resolveTimeout {
		return "", fmt.Errorf("%w: context deadline exceeded", ipfs.ErrTimeout)
	}
	if f.resolveTo == "" {
		return "", fmt.Errorf("%w: could not resolve name", ipfs.ErrNotFound)
	}
	return f.resolveTo, nil
}

func (f *fakeNode) set(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), sub)
}

func newTestPinner(t *testing.T, node *fakeNode, max int) (*Pinner, *syncBuf) {
	t.Helper()
	logs := &syncBuf{}
	book := OpenBook(filepath.Join(t.TempDir(), "pins-served.json"), time.Now(), quiet())
	p := New(node, book, Config{Window: time.Hour, Max: max, AddTimeout: time.Second, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	return p, logs
}

func stateOf(p *Pinner, c string) (Pin, bool) {
	for _, pin := range p.Status().Pins {
		if pin.CID == c {
			return pin, true
		}
	}
	return Pin{}, false
}

func TestPinnerErrorPaths(t *testing.T) {
	ctx := context.Background()

	t.Run("serving records a CID without a call to the node", func(t *testing.T) {
		node := &fakeNode{pins: map[string][2]string{}}
		p, _ := newTestPinner(t, node, 4)
		p.Served("/ipfs/"+testCID(t, "a"), time.Now())
		if node.calls != 0 {
			t.Fatalf("%d calls to the node on the request path", node.calls)
		}
	})

	t.Run("an unreachable node leaves everything pending, is logged once, and pinning resumes when it answers", func(t *testing.T) {
		node := &fakeNode{pins: map[string][2]string{}, down: true}
		p, logs := newTestPinner(t, node, 4)
		c := testCID(t, "cfg")
		p.Name("m0", Named{Path: "/ipfs/" + c, Route: "/a", What: "module"})
		for range 3 {
			if _, err := p.pass(ctx); !errors.Is(err, ipfs.ErrUnavailable) {
				t.Fatalf("pass: %v, want unreachable", err)
			}
		}
		if pin, _ := stateOf(p, c); pin.State != StatePending || p.Status().Reachable {
			t.Fatalf("with the node down: %v reachable=%v, want pending and unreachable", pin, p.Status().Reachable)
		}
		if n := logs.count("pinning paused"); n != 1 {
			t.Fatalf("logged %d times, want once", n)
		}
		node.set(func() { node.down = false })
		if _, err := p.pass(ctx); err != nil {
			t.Fatal(err)
		}
		if pin, _ := stateOf(p, c); pin.State != StatePinned || logs.count("pinning resumed") != 1 {
			t.Fatalf("after the node is back: %v", pin)
		}
	})

	t.Run("a failed pin add shows failed with its error, logged once over passes", func(t *testing.T) {
		node := &fakeNode{pins: map[string][2]string{}, addErr: errors.New("block was not found locally (offline)")}
		p, logs := newTestPinner(t, node, 4)
		c := testCID(t, "s")
		p.Served("/ipfs/"+c, time.Now())
		for range 2 {
			if _, err := p.pass(ctx); err != nil {
				t.Fatal(err)
			}
		}
		pin, ok := stateOf(p, c)
		if !ok || pin.State != StateFailed || !strings.Contains(pin.Error, "not found locally") {
			t.Fatalf("got %v %q, want failed with the node's error", pin, pin.Error)
		}
		if n := logs.count("pinning: pin failed"); n != 1 {
			t.Fatalf("logged %d times, want once", n)
		}
	})

	t.Run("a CID someone else pins is neither renamed nor removed", func(t *testing.T) {
		own, direct := testCID(t, "operator"), testCID(t, "direct")
		node := &fakeNode{pins: map[string][2]string{own: {ipfs.PinRecursive, "mine"}, direct: {ipfs.PinDirect, ""}}}
		p, _ := newTestPinner(t, node, 4)
		p.Name("m0", Named{Path: "/ipfs/" + own, Route: "/a"})
		p.Served("/ipfs/"+direct, time.Now())
		if _, err := p.pass(ctx); err != nil {
			t.Fatal(err)
		}
		p.Name("m0", Named{Path: "/ipfs/" + testCID(t, "other"), Route: "/a"})
		if _, err := p.pass(ctx); err != nil {
			t.Fatal(err)
		}
		if node.pins[own] != [2]string{ipfs.PinRecursive, "mine"} || node.pins[direct] != [2]string{ipfs.PinDirect, ""} {
			t.Fatalf("the operator's pins changed: %v", node.pins)
		}
		if pin, _ := stateOf(p, direct); pin.State != StatePinned || pin.Owner != "other" {
			t.Fatalf("got %v, want pinned by other", pin)
		}
	})

	t.Run("a pin taken over between the list and the remove is left alone", func(t *testing.T) {
		c := testCID(t, "taken")
		node := &fakeNode{pins: map[string][2]string{c: {ipfs.PinRecursive, "wagi-fcgi:served"}}, takeRm: c}
		p, _ := newTestPinner(t, node, 4)
		if _, err := p.pass(ctx); err != nil {
			t.Fatal(err)
		}
		if len(node.removed) != 0 {
			t.Fatalf("removed %v", node.removed)
		}
	})

	t.Run("a pass does a bounded number of calls and says there is more", func(t *testing.T) {
		node := &fakeNode{pins: map[string][2]string{}}
		p, _ := newTestPinner(t, node, 64)
		for i := range 40 {
			p.Served("/ipfs/"+testCID(t, fmt.Sprint(i)), time.Now())
		}
		more, err := p.pass(ctx)
		if err != nil || !more {
			t.Fatalf("more=%v err=%v, want more", more, err)
		}
		if node.calls > maxOps+1 {
			t.Fatalf("%d calls in one pass, want at most %d and the list", node.calls, maxOps)
		}
	})

	t.Run("CIDs pinned by someone else are looked at again only now and then, so passes stay one call", func(t *testing.T) {
		node := &fakeNode{pins: map[string][2]string{}}
		p, _ := newTestPinner(t, node, 4)
		for i := range 40 {
			c := testCID(t, fmt.Sprint("op", i))
			node.pins[c] = [2]string{ipfs.PinRecursive, "operator"}
			p.Name(fmt.Sprint("m", i), Named{Path: "/ipfs/" + c, Route: "/r"})
		}
		for more := true; more; {
			var err error
			if more, err = p.pass(ctx); err != nil {
				t.Fatal(err)
			}
		}
		node.calls = 0
		if more, err := p.pass(ctx); more || err != nil || node.calls != 1 {
			t.Fatalf("more=%v err=%v with %d calls, want one call (the list)", more, err, node.calls)
		}
		if len(node.pins) != 40 {
			t.Fatalf("the operator's pins changed: %d", len(node.pins))
		}
	})

	t.Run("an IPNS name that stops resolving keeps the CID it had pinned", func(t *testing.T) {
		c := testCID(t, "ipns target")
		node := &fakeNode{pins: map[string][2]string{}, resolveTo: "/ipfs/" + c}
		p, logs := newTestPinner(t, node, 4)
		p.Name("m0", Named{Path: "/ipns/k51example", Route: "/named"})
		if _, err := p.pass(ctx); err != nil {
			t.Fatal(err)
		}
		node.set(func() { node.resolveTo = "" })
		for range 2 {
			if _, err := p.pass(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if node.pins[c][1] != "wagi-fcgi:/named" || len(node.removed) != 0 {
			t.Fatalf("pins %v, removed %v", node.pins, node.removed)
		}
		if n := logs.count("pinning: resolve failed"); n != 1 {
			t.Fatalf("logged %d times, want once", n)
		}
	})

	t.Run("an IPNS name that times out pauses nothing else and is not asked again at every pass", func(t *testing.T) {
		node := &fakeNode{pins: map[string][2]string{}, resolveTimeout: true}
		p, logs := newTestPinner(t, node, 4)
		cfg, served := testCID(t, "config"), testCID(t, "served")
		p.Name("m0", Named{Path: "/ipns/k51unpublished", Route: "/shared"})
		p.Name("m1", Named{Path: "/ipfs/" + cfg, Route: "/a"})
		p.Served("/ipfs/"+served, time.Now())
		for range 3 {
			if _, err := p.pass(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if node.pins[cfg][1] != "wagi-fcgi:/a" || node.pins[served][1] != "wagi-fcgi:served" {
			t.Fatalf("pins %v: the other CIDs must be pinned", node.pins)
		}
		if node.resolves != 1 {
			t.Fatalf("the name was resolved %d times in 3 passes, want once (held off %v)", node.resolves, holdOffFor)
		}
		if n := logs.count("pinning paused"); n != 0 {
			t.Fatalf("a name that does not resolve paused pinning (%d log lines)", n)
		}
	})

	t.Run("a pin add that times out holds off that CID alone: the others are pinned and the removals run", func(t *testing.T) {
		stuck, other, old := testCID(t, "a stuck one"), testCID(t, "another"), testCID(t, "old")
		node := &fakeNode{pins: map[string][2]string{old: {ipfs.PinRecursive, "wagi-fcgi:/gone"}}, addTimeout: stuck}
		p, logs := newTestPinner(t, node, 4)
		p.Name("m0", Named{Path: "/ipfs/" + stuck, Route: "/a"})
		p.Name("m1", Named{Path: "/ipfs/" + other, Route: "/b"})
		for range 3 {
			if _, err := p.pass(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if node.pins[other][1] != "wagi-fcgi:/b" {
			t.Fatalf("pins %v: the other CID must be pinned", node.pins)
		}
		if _, kept := node.pins[old]; kept {
			t.Fatalf("pins %v: the pin no longer wanted must be removed", node.pins)
		}
		if node.adds[stuck] != 1 {
			t.Fatalf("the stuck CID was tried %d times in 3 passes, want once (held off %v)", node.adds[stuck], holdOffFor)
		}
		if st, _ := stateOf(p, stuck); st.State != StateFailed {
			t.Fatalf("the stuck CID's state is %q, want failed", st.State)
		}
		if !p.Status().Reachable || logs.count("pinning paused") != 0 {
			t.Fatal("a CID that times out made the node look unreachable")
		}
	})

	t.Run("what an IPNS name points to is pinned from local blocks only", func(t *testing.T) {
		c := testCID(t, "ipns content")
		node := &fakeNode{pins: map[string][2]string{}, resolveTo: "/ipfs/" + c}
		p, _ := newTestPinner(t, node, 4)
		p.Name("m0", Named{Path: "/ipns/k51example", Route: "/named", Local: true})
		if _, err := p.pass(ctx); err != nil {
			t.Fatal(err)
		}
		if local, ok := node.local[c]; !ok || !local {
			t.Fatalf("pinned with local=%v (added %v), want local only", local, ok)
		}
	})

	t.Run("a served CID is pinned from local blocks only; the config's may be fetched", func(t *testing.T) {
		node := &fakeNode{pins: map[string][2]string{}}
		p, _ := newTestPinner(t, node, 4)
		cfg, served := testCID(t, "config"), testCID(t, "served")
		p.Name("m0", Named{Path: "/ipfs/" + cfg, Route: "/a"})
		p.Served("/ipfs/"+served, time.Now())
		if _, err := p.pass(ctx); err != nil {
			t.Fatal(err)
		}
		if local, ok := node.local[served]; !ok || !local {
			t.Errorf("the served CID was pinned with local=%v (added %v), want local only", local, ok)
		}
		if local, ok := node.local[cfg]; !ok || local {
			t.Errorf("the config's CID was pinned with local=%v (added %v), want fetched if need be", local, ok)
		}
	})

	t.Run("Stop waits for the goroutine and a stopped pinner starts again", func(t *testing.T) {
		node := &fakeNode{pins: map[string][2]string{}}
		p, _ := newTestPinner(t, node, 4)
		c := testCID(t, "restart")
		p.Start()
		p.Stop()
		p.Served("/ipfs/"+c, time.Now())
		p.Start()
		defer p.Stop()
		deadline := time.Now().Add(30 * time.Second)
		for {
			node.mu.Lock()
			_, ok := node.pins[c]
			node.mu.Unlock()
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("a served CID was not pinned after a restart of the pinner")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// BenchmarkServed is what a request pays to record its CID: a map write
// under a mutex, no call to the node.
func BenchmarkServed(b *testing.B) {
	book := OpenBook(filepath.Join(b.TempDir(), "pins-served.json"), time.Now(), quiet())
	p := New(&fakeNode{pins: map[string][2]string{}}, book, Config{Window: time.Hour, Max: 64})
	path := "/ipfs/" + testCID(b, "bench")
	now := time.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p.Served(path, now.Add(time.Duration(i)))
	}
}
