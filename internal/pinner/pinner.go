package pinner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// API is what the pinner asks of the node; *ipfs.Client has it.
type API interface {
	// PinsNamed lists recursive pins whose name contains sub, by CID.
	PinsNamed(ctx context.Context, sub string) (map[string]string, error)
	// PinOf says how a CID itself is pinned (recursive, direct or "").
	PinOf(ctx context.Context, cid string) (typ, name string, err error)
	// PinAdd pins cid recursively under name; local: only with blocks
	// the node has, fetching nothing.
	PinAdd(ctx context.Context, cid, name string, local bool) error
	PinRm(ctx context.Context, cid string) error
	// Resolve turns /ipfs/CID/sub into /ipfs/CID-of-sub.
	Resolve(ctx context.Context, path string) (string, error)
}

// Config is how a Pinner applies its rules.
type Config struct {
	// Window is how long a served CID stays pinned ([ipfs] pin_recent);
	// 0: served CIDs are not pinned.
	Window time.Duration
	// Max bounds the served CIDs pinned at once ([ipfs] pin_max).
	Max int
	// AddTimeout bounds one pin add, which fetches what the node lacks
	// ([ipfs] fetch_timeout). Other calls get callTimeout.
	AddTimeout time.Duration
	Logger     *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

const (
	// callTimeout bounds every call to the node but a pin add.
	callTimeout = 10 * time.Second
	// holdOffFor is how long a path that timed out is not resolved again
	// (its last CID, if any, stays named meanwhile), and a CID whose pin
	// add timed out is not tried again.
	holdOffFor = 30 * time.Second
	// minGap is the least time between two passes, however often CIDs
	// are served or the config changes: each pass lists the pinner's
	// pins, and a busy gateway must not turn that into a loop.
	minGap = time.Second
	// maxOps bounds the calls of one pass; the rest waits for the next
	// (minGap later), so no pass holds the node for long.
	maxOps = 32
	// maxResolved bounds the sub-path resolutions remembered.
	maxResolved = 1024
	// maxRetry is the longest wait before trying an unreachable node
	// again.
	maxRetry = time.Minute
	// otherRecheck is how long a CID found pinned by someone else is
	// taken to stay so: if they unpin it, the pinner pins it within
	// about this long.
	otherRecheck = time.Minute
)

// States of a pin on the status page.
const (
	StatePinned  = "yes"
	StatePending = "pending"
	StateFailed  = "failed"
)

// Pin is one CID the rules keep pinned, as the status page shows it.
type Pin struct {
	CID  string `json:"cid"`
	Path string `json:"path"`
	// Why: the config's routes ("config /hello", "config /static/...
	// volume /assets") or "served".
	Why        string    `json:"why"`
	LastServed time.Time `json:"last_served,omitzero"`
	State      string    `json:"pinned"` // StatePinned, StatePending or StateFailed
	// Owner is "other" when the CID is pinned by someone else (the
	// pinner then leaves that pin alone), else "wagi-fcgi".
	Owner string `json:"owner"`
	Error string `json:"error,omitempty"`
}

// Pinner keeps the CIDs the config names, and those served recently,
// pinned in kubo, and unpins its own pins that the rules no longer want.
// Requests only record what they served (Served, in memory); one
// goroutine (Start, Stop) talks to the node, in passes.
type Pinner struct {
	api  API
	book *Book
	cfg  Config
	log  *slog.Logger
	kick chan struct{}

	mu       sync.Mutex
	named    map[string]Named  // by the caller's key
	pins     []Pin             // the last pass's view, for Status
	resolved map[string]string // sub-path → CID
	failed   map[string]string // CID or path → the error last logged
	// holdOff holds off a path whose resolution, or a CID whose pin add,
	// timed out while the node answered: an IPNS name nobody published
	// (yet), or content no peer has, makes the node search until the
	// timeout, and must neither slow every pass nor stop the others.
	holdOff map[string]time.Time
	down    bool // the node was unreachable at the last pass

	// others are the wanted CIDs found pinned by someone else, and when:
	// looked at again only after otherRecheck, so that many of them do
	// not cost two calls each at every pass. Only the pass uses it.
	others map[string]time.Time

	runMu  sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// New makes a pinner that records served CIDs in book.
func New(api API, book *Book, cfg Config) *Pinner {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Max = min(cfg.Max, MaxServed)
	return &Pinner{api: api, book: book, cfg: cfg, log: cfg.Logger, kick: make(chan struct{}, 1),
		named: map[string]Named{}, resolved: map[string]string{}, failed: map[string]string{}, others: map[string]time.Time{}}
}

// Name sets what the config names under key (one per module and volume;
// an IPNS module's key keeps its key as its name moves to new CIDs), and
// Unname drops it.
func (p *Pinner) Name(key string, n Named) {
	if checkNamed(n.Path) != nil {
		p.log.Warn("pinning: not an IPFS path; not pinned", "path", n.Path)
		return
	}
	p.mu.Lock()
	old, had := p.named[key]
	p.named[key] = n
	p.mu.Unlock()
	if !had || old != n {
		p.wake()
	}
}

// Served records that the module at path was served (run from a valid
// module) at t. It never waits for the node.
func (p *Pinner) Served(path string, t time.Time) {
	if p.cfg.Window <= 0 || p.cfg.Max <= 0 || CheckPath(path) != nil {
		return
	}
	if p.book.note(path, t) {
		p.wake()
	}
}

func (p *Pinner) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Status is the pinner's view, for the status page.
type Status struct {
	Recent    time.Duration
	Max       int
	Reachable bool
	Pins      []Pin
}

// Status returns the last pass's view of the pins.
func (p *Pinner) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Status{Recent: p.cfg.Window, Max: p.cfg.Max, Reachable: !p.down, Pins: slices.Clone(p.pins)}
}

// Start starts the pinner's goroutine; Stop stops it and waits for it.
// A stopped pinner can start again (a reload whose new config fails
// hands the work back to the old generation).
func (p *Pinner) Start() {
	p.runMu.Lock()
	defer p.runMu.Unlock()
	if p.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan struct{})
	go p.run(ctx, p.done)
}

// Stop stops the goroutine (a call in flight is cancelled), waits for it,
// and saves the book.
func (p *Pinner) Stop() {
	p.runMu.Lock()
	cancel, done := p.cancel, p.done
	p.cancel, p.done = nil, nil
	p.runMu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	if err := p.book.Save(); err != nil {
		p.log.Warn("pinning", "err", err)
	}
}

func (p *Pinner) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	interval := time.Minute
	if p.cfg.Window > 0 {
		// A CID past its window is unpinned within a quarter of it.
		interval = min(max(p.cfg.Window/4, minGap), time.Minute)
	}
	retry := time.Duration(0)
	for {
		more, err := p.pass(ctx)
		if ctx.Err() != nil {
			return
		}
		if serr := p.book.Save(); serr != nil {
			p.log.Warn("pinning", "err", serr)
		}
		next, kick := interval, p.kick
		switch {
		case err != nil:
			// The node is down, or answered the list with an error:
			// try again soon, then less and less often.
			retry = min(max(2*retry, 2*time.Second), maxRetry)
			next = min(retry, interval)
			if unreachable(err) {
				kick = nil // nothing to gain from trying sooner
			}
		case more:
			retry, next = 0, minGap
		default:
			retry = 0
		}
		if !sleep(ctx, minGap) {
			return
		}
		t := time.NewTimer(max(next-minGap, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-kick:
			t.Stop()
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func unreachable(err error) bool {
	return errors.Is(err, ipfs.ErrUnavailable) || errors.Is(err, ipfs.ErrTimeout)
}

// call runs f with a timeout.
func call[T any](ctx context.Context, d time.Duration, f func(context.Context) (T, error)) (T, error) {
	cctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return f(cctx)
}

// pass applies the rules once: it resolves what needs resolving, lists the
// pinner's own pins, pins what is wanted and unpinned, unpins what is
// its own and no longer wanted. more says that maxOps cut it short. An
// unreachable node ends the pass (logged once until it answers again).
func (p *Pinner) pass(ctx context.Context) (more bool, err error) {
	now := p.cfg.Now()
	served := map[string]time.Time{}
	if p.cfg.Window > 0 {
		served = p.book.snapshot(now.Add(-p.cfg.Window))
	}
	p.mu.Lock()
	named := maps.Clone(p.named)
	p.mu.Unlock()

	v := &view{p: p, pins: map[string]*Pin{}}
	defer v.publish()
	namedBy := map[string][]Named{}
	for _, key := range slices.Sorted(maps.Keys(named)) {
		n := named[key]
		c, err := p.cidOf(ctx, n.Path)
		if err != nil {
			if unreachable(err) {
				return false, p.markDown(err)
			}
			v.failPath(n.Path, why([]Named{n}), err)
			continue
		}
		namedBy[c] = append(namedBy[c], n)
	}
	servedBy := map[string]servedCID{}
	for path, at := range served {
		c, err := p.cidOf(ctx, path)
		if err != nil {
			if unreachable(err) {
				return false, p.markDown(err)
			}
			continue // served from a valid module once; a later pass tries again
		}
		if s, ok := servedBy[c]; !ok || at.After(s.at) {
			servedBy[c] = servedCID{path: path, at: at}
		}
	}
	want := wanted(namedBy, servedBy, now, p.cfg.Window, p.cfg.Max)
	for _, w := range want {
		v.pins[w.cid] = &Pin{CID: w.cid, Path: w.path, Why: why(w.named), LastServed: w.served, State: StatePending, Owner: NamePrefix}
	}

	all, err := call(ctx, callTimeout, func(ctx context.Context) (map[string]string, error) { return p.api.PinsNamed(ctx, NamePrefix) })
	if err != nil {
		if unreachable(err) {
			return false, p.markDown(err)
		}
		p.logFailed("list", "", err)
		return false, err
	}
	ours := map[string]string{}
	for c, name := range all {
		if Owns(name) {
			ours[c] = name
		}
	}
	p.resumed()
	add, rm := diff(want, ours)
	for c := range ours {
		if pin := v.pins[c]; pin != nil {
			pin.State = StatePinned
		}
	}
	for c := range p.others {
		if _, ok := want[c]; !ok || now.Sub(p.others[c]) >= otherRecheck {
			delete(p.others, c)
		}
	}
	ops := 0
	for _, w := range add {
		if _, ok := p.others[w.cid]; ok {
			v.pins[w.cid].State, v.pins[w.cid].Owner = StatePinned, "other"
			continue
		}
		if p.heldOff(w.cid) {
			v.pins[w.cid].State = StateFailed
			continue
		}
		if ops >= maxOps {
			return true, nil
		}
		ops += 2
		err := p.add(ctx, v.pins[w.cid], w, now)
		switch {
		case errors.Is(err, ipfs.ErrUnavailable):
			return false, p.markDown(err)
		case errors.Is(err, ipfs.ErrTimeout):
			// Content no peer gives in time: this CID's failure; the
			// others, and the removals, go on.
			p.holdOffNow(w.cid)
		}
	}
	for _, c := range rm {
		if ops >= maxOps {
			return true, nil
		}
		ops += 2
		if err := p.remove(ctx, c); err != nil && unreachable(err) {
			return false, p.markDown(err)
		}
	}
	return false, nil
}

// add pins w's CID unless someone else already pins it: kubo would rename
// their recursive pin to ours (and drop a direct one), and the pinner
// would later remove it.
func (p *Pinner) add(ctx context.Context, pin *Pin, w want, now time.Time) error {
	typ, name, err := p.pinOf(ctx, w.cid)
	if err == nil && typ != "" {
		pin.State = StatePinned
		if typ != ipfs.PinRecursive || !Owns(name) {
			pin.Owner = "other"
			p.others[w.cid] = now
		}
		return nil
	}
	if err == nil {
		_, err = call(ctx, p.cfg.AddTimeout, func(ctx context.Context) (struct{}, error) {
			// A served CID was fetched whole to be served: pinning it
			// needs nothing from the network, and must fetch nothing (a
			// DAG that links to more than the module must not make the
			// node fetch it). So is what an IPNS name points to: its
			// publisher chose it, not the operator, so only what
			// serving fetched within its caps is pinned. CIDs the config
			// names itself may be fetched.
			return struct{}{}, p.api.PinAdd(ctx, w.cid, w.pinName(), w.localOnly())
		})
	}
	if err != nil {
		pin.State, pin.Error = StateFailed, err.Error()
		if !errors.Is(err, ipfs.ErrUnavailable) {
			p.logFailed("pin", w.cid, err)
		}
		return err
	}
	pin.State = StatePinned
	p.clearFailed(w.cid)
	p.log.Info("pinned", "cid", w.cid, "path", w.path, "why", pin.Why, "name", w.pinName())
	return nil
}

// remove unpins c if the pin is still the pinner's: it is looked at again
// just before, so a pin someone took over since the list is left alone.
func (p *Pinner) remove(ctx context.Context, c string) error {
	typ, name, err := p.pinOf(ctx, c)
	if err == nil && (typ != ipfs.PinRecursive || !Owns(name)) {
		return nil
	}
	if err == nil {
		_, err = call(ctx, callTimeout, func(ctx context.Context) (struct{}, error) { return struct{}{}, p.api.PinRm(ctx, c) })
	}
	if err != nil {
		if !unreachable(err) {
			p.logFailed("unpin", c, err)
		}
		return err
	}
	p.clearFailed(c)
	p.log.Info("unpinned: no longer named by the config nor served recently", "cid", c, "pin_recent", p.cfg.Window)
	return nil
}

func (p *Pinner) pinOf(ctx context.Context, c string) (string, string, error) {
	type pinned struct{ typ, name string }
	r, err := call(ctx, callTimeout, func(ctx context.Context) (pinned, error) {
		t, n, err := p.api.PinOf(ctx, c)
		return pinned{t, n}, err
	})
	return r.typ, r.name, err
}

// cidOf is the CID a path names: its own for /ipfs/CID, else resolved
// (an /ipfs/ path once, as it is immutable; an /ipns/ name at every pass,
// so that when it moves its old CID is no longer named, and when it does
// not resolve, the CID it last resolved to stays named).
func (p *Pinner) cidOf(ctx context.Context, path string) (string, error) {
	rest, immutable := strings.CutPrefix(path, "/ipfs/")
	if immutable && !strings.Contains(rest, "/") {
		return ipfs.NormalizeCID(rest)
	}
	p.mu.Lock()
	c, ok := p.resolved[path]
	p.mu.Unlock()
	if ok && immutable {
		return c, nil
	}
	if p.heldOff(path) {
		if ok {
			return c, nil
		}
		return "", fmt.Errorf("resolve %s: %w", path, errTimedOut)
	}
	r, err := call(ctx, callTimeout, func(ctx context.Context) (string, error) { return p.api.Resolve(ctx, path) })
	if err == nil {
		r, err = ipfs.NormalizeCID(strings.TrimPrefix(r, "/ipfs/"))
	}
	if err != nil && errors.Is(err, ipfs.ErrTimeout) {
		// The node answers (a dead node refuses the connection, which is
		// ErrUnavailable); this path does not resolve in time. That is
		// the path's failure, not the node's: the pass goes on.
		p.holdOffNow(path)
		err = fmt.Errorf("resolve %s: %w (%v)", path, errTimedOut, err)
	}
	if err != nil {
		if ok && !unreachable(err) {
			// An IPNS name that does not resolve this time keeps the CID
			// it last had: a hiccup must not unpin the module in use.
			p.logFailed("resolve", path, err)
			return c, nil
		}
		return "", err
	}
	c = r
	if ok {
		p.clearFailed(path)
	}
	p.mu.Lock()
	if len(p.resolved) >= maxResolved {
		clear(p.resolved)
	}
	p.resolved[path] = c
	p.mu.Unlock()
	return c, nil
}

// errTimedOut is a path that did not resolve, or a CID that could not
// be pinned, in time while the node answered.
var errTimedOut = errors.New("timed out; held off before the next try")

// heldOff says whether key (a path or a CID) timed out less than
// holdOffFor ago.
func (p *Pinner) heldOff(key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	until, ok := p.holdOff[key]
	return ok && p.cfg.Now().Before(until)
}

func (p *Pinner) holdOffNow(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.holdOff == nil || len(p.holdOff) >= maxResolved {
		p.holdOff = map[string]time.Time{}
	}
	p.holdOff[key] = p.cfg.Now().Add(holdOffFor)
}

// markDown marks the node unreachable (logged once); what the pass did
// not get to stays pending.
func (p *Pinner) markDown(err error) error {
	p.mu.Lock()
	was := p.down
	p.down = true
	p.mu.Unlock()
	if !was {
		p.log.Warn("pinning paused: the IPFS node is unreachable; trying again later (serving is not affected)", "err", err)
	}
	return err
}

func (p *Pinner) resumed() {
	p.mu.Lock()
	was := p.down
	p.down = false
	p.mu.Unlock()
	if was {
		p.log.Info("pinning resumed: the IPFS node answers again")
	}
}

// logFailed logs a failure once per CID (or path) until it changes.
func (p *Pinner) logFailed(what, c string, err error) {
	p.mu.Lock()
	if p.failed[c] == err.Error() {
		p.mu.Unlock()
		return
	}
	if len(p.failed) >= maxResolved {
		clear(p.failed)
	}
	p.failed[c] = err.Error()
	p.mu.Unlock()
	p.log.Warn("pinning: "+what+" failed; trying again at the next pass", "cid", c, "err", err)
}

func (p *Pinner) clearFailed(c string) {
	p.mu.Lock()
	delete(p.failed, c)
	p.mu.Unlock()
}

// why says why a CID is wanted, for the status page.
func why(ns []Named) string {
	if len(ns) == 0 {
		return "served"
	}
	parts := make([]string, 0, len(ns))
	for _, n := range ns {
		s := "config " + n.Route
		if n.What != "" && n.What != "module" {
			s += " " + n.What
		}
		parts = append(parts, s)
	}
	slices.Sort(parts)
	return strings.Join(slices.Compact(parts), ", ")
}

// view collects one pass's pins; publish makes it the status page's.
type view struct {
	p    *Pinner
	pins map[string]*Pin
}

// failPath lists a configured path that could not be resolved to a CID.
func (v *view) failPath(path, why string, err error) {
	v.pins[path] = &Pin{Path: path, Why: why, State: StateFailed, Owner: NamePrefix, Error: err.Error()}
	v.p.logFailed("resolve", path, err)
}

func (v *view) publish() {
	out := make([]Pin, 0, len(v.pins))
	for _, pin := range v.pins {
		out = append(out, *pin)
	}
	// The config's first (by why), then the most recently served.
	slices.SortFunc(out, func(a, b Pin) int {
		if (a.Why == "served") != (b.Why == "served") {
			if a.Why == "served" {
				return 1
			}
			return -1
		}
		if c := b.LastServed.Compare(a.LastServed); a.Why == "served" && c != 0 {
			return c
		}
		return cmp.Or(strings.Compare(a.Why, b.Why), strings.Compare(a.CID, b.CID), strings.Compare(a.Path, b.Path))
	})
	v.p.mu.Lock()
	v.p.pins = out
	v.p.mu.Unlock()
}

// String is for logs and tests.
func (pin Pin) String() string {
	return fmt.Sprintf("%s %s (%s) pinned=%s owner=%s", pin.CID, pin.Path, pin.Why, pin.State, pin.Owner)
}
