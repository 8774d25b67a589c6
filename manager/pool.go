package manager

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
)

// pool keeps a fixed number of pre-started children. Each slot is a
// goroutine that starts a child, offers it as idle, waits for it to exit and
// starts the next one: so a child killed for a limit, recycled after
// max_requests, or crashed, is replaced at once by whoever owned it.
type pool struct {
	cfg         *procConfig
	size        int
	maxRequests int
	queue       int
	log         *slog.Logger

	sp   *spawner
	idle chan *proc
	// preload lists the modules a fresh child compiles before it takes a
	// request; nil means none.
	preload func() []ipc.Module
	// charge, when set, is told the CPU of starting a child that replaced
	// one that died during a request: the module that caused the death
	// pays for the replacement (its start and its preload).
	charge  func(to chargeTo, d time.Duration)
	waiting atomic.Int64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	procs map[int]*proc // current child of each slot

	closeOnce sync.Once

	stats poolStats

	// fast is the fast path its children join, and fastGen this
	// generation's side of it once its routes are known (setFastGen).
	fast    *FastPath
	fastGen *fastGen
	// fastRetiring: the generation is draining; its children take no
	// more requests from connections (retireFast).
	fastRetiring bool
}

type poolStats struct {
	spawned  atomic.Int64
	recycled atomic.Int64
	crashed  atomic.Int64
	killed   atomic.Int64
	maxQueue atomic.Int64
}

var (
	errQueueFull    = errors.New("queue full")
	errQueueTimeout = errors.New("queue timeout")
	errPoolClosed   = errors.New("pool closed")
)

func newPool(cfg *procConfig, size, maxRequests, queue int, log *slog.Logger) *pool {
	ctx, cancel := context.WithCancel(context.Background())
	return &pool{
		cfg:         cfg,
		size:        size,
		maxRequests: maxRequests,
		queue:       queue,
		log:         log,
		sp:          newSpawner(),
		idle:        make(chan *proc, 2*size), // room for a dead child not yet skipped beside its replacement
		ctx:         ctx,
		cancel:      cancel,
		procs:       map[int]*proc{},
	}
}

// start launches every slot and waits until each has a ready child (or
// failed to start one), so children run before the first request.
func (pl *pool) start(ctx context.Context) error {
	first := make(chan error, pl.size)
	for i := 0; i < pl.size; i++ {
		pl.wg.Add(1)
		go pl.slot(i, first)
	}
	var errs []error
	for i := 0; i < pl.size; i++ {
		select {
		case err := <-first:
			if err != nil {
				errs = append(errs, err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if len(errs) == pl.size {
		return errors.Join(errs...)
	}
	return nil
}

// slot keeps one child alive until the pool closes.
func (pl *pool) slot(id int, first chan<- error) {
	defer pl.wg.Done()
	failures := 0
	reported := false
	var owed chargeTo // who pays for the next child's start
	for pl.ctx.Err() == nil {
		p, err := startProc(pl.ctx, pl.sp, pl.cfg, id)
		if err != nil && !reported {
			first <- err
			reported = true
		}
		if err != nil {
			if pl.ctx.Err() != nil {
				return
			}
			failures++
			pl.stats.crashed.Add(1)
			delay := backoff(failures)
			pl.log.Error("child failed to start", "child", id, "err", err, "retry_in", delay)
			if !sleepCtx(pl.ctx, delay) {
				return
			}
			continue
		}
		pl.stats.spawned.Add(1)
		pl.warm(p)
		if !owed.empty() && pl.charge != nil {
			// Its CPU from here on (the runtime settling after its
			// start) is idle time, owed by the same module.
			c := p.cpu()
			pl.charge(owed, c+p.spawnCPU)
			p.owner, p.endCPU = owed, c
		}
		owed = chargeTo{}
		pl.mu.Lock()
		pl.procs[id] = p
		pl.mu.Unlock()
		pl.enterFast(p)
		pl.log.Info("child started", "child", id, "pid", p.pid)
		pl.offer(p)
		if !reported {
			// Start returns once every slot has a child ready to serve.
			first <- nil
			reported = true
		}

		select {
		case <-p.exited:
		case <-pl.ctx.Done():
			p.kill(killShutdown)
			<-p.exited
			return
		}
		pl.leaveFast(p)
		if p.fastSlot != nil {
			pl.purgeIdle()
		}
		reason := p.killReason()
		owed = p.runningFor()
		switch {
		case reason == killRecycle:
			pl.stats.recycled.Add(1)
			failures = 0
			pl.log.Info("child recycled", "child", id, "pid", p.pid, "requests", p.requests.Load())
		case reason != notKilled:
			pl.stats.killed.Add(1)
			failures = 0
			pl.log.Info("child killed", "child", id, "pid", p.pid, "reason", reason.String())
		default:
			pl.stats.crashed.Add(1)
			if p.requests.Load() > 0 {
				failures = 0
			}
			failures++
			pl.log.Error("child exited unexpectedly", "child", id, "pid", p.pid, "status", exitText(p.state))
			if !sleepCtx(pl.ctx, backoff(failures)) {
				return
			}
		}
	}
}

// warm has a fresh child compile the known modules (a file-cache read
// each), so the first request it takes is not slower than the others. A
// child that fails at it is still used: its requests will say what is
// wrong.
func (pl *pool) warm(p *proc) {
	if pl.preload == nil {
		return
	}
	mods := pl.preload()
	if len(mods) == 0 {
		return
	}
	if err := p.w.WriteFrame(ipc.TypePreload, ipc.AppendPreload(nil, mods)); err != nil {
		return
	}
	if err := p.w.Flush(); err != nil {
		return
	}
	stop := context.AfterFunc(pl.ctx, p.wake)
	defer stop()
	t, payload, err := p.recv(pl.ctx, time.Now().Add(pl.cfg.ready))
	switch {
	case err == nil:
		var d ipc.Done
		if t != ipc.TypeDone || ipc.DecodeDone(payload, &d) != nil {
			pl.log.Error("child answered preload with a bad frame", "pid", p.pid, "frame", t)
			p.kill(killIPC)
			return
		}
		if d.Outcome != ipc.OutcomeOK {
			pl.log.Warn("child could not preload every module", "pid", p.pid, "err", d.Message)
		}
	case timedOut(err) && pl.ctx.Err() == nil:
		pl.log.Warn("child preload timed out", "pid", p.pid)
		p.kill(killIPC)
	case !timedOut(err):
		// A frame too large, or the stream broken: out of step with
		// the protocol, it gets no request.
		pl.log.Error("child broke the protocol during preload", "pid", p.pid, "err", err)
		p.kill(killIPC)
	}
}

// backoff throttles a crash loop: the first few restarts are immediate, then
// the delay doubles up to five seconds.
func backoff(failures int) time.Duration {
	if failures <= 3 {
		return 0
	}
	d := 10 * time.Millisecond << min(failures-4, 9)
	return min(d, 5*time.Second)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// acquire takes an idle child, waiting in a bounded FIFO queue (Go's channel
// receivers are served in order) for at most timeout.
func (pl *pool) acquire(ctx context.Context, timeout time.Duration) (*proc, error) {
	for {
		select {
		case p := <-pl.idle:
			if p.alive() && pl.take(p) {
				return p, nil
			}
			continue
		default:
		}
		break
	}
	n := pl.waiting.Add(1)
	defer pl.waiting.Add(-1)
	if n > int64(pl.queue) {
		return nil, errQueueFull
	}
	for {
		if m := pl.stats.maxQueue.Load(); n > m {
			if pl.stats.maxQueue.CompareAndSwap(m, n) {
				break
			}
			continue
		}
		break
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case p := <-pl.idle:
			if p.alive() && pl.take(p) {
				return p, nil
			}
		case <-t.C:
			return nil, errQueueTimeout
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-pl.ctx.Done():
			return nil, errPoolClosed
		}
	}
}

// release gives a child back after a request that ended cleanly. A child
// that reached max_requests is retired: closing its socket makes it exit,
// and its slot starts a fresh one.
func (pl *pool) release(p *proc) {
	if p.fast != nil {
		pl.fast.unborrow(p)
		pl.mu.Lock()
		retiring := pl.fastRetiring
		pl.mu.Unlock()
		if retiring && pl.fast.borrow(p, time.Minute) != nil {
			p.kill(killIPC)
			return
		}
	}
	n := p.requests.Add(1)
	if p.killReason() != notKilled {
		return // killed as its run ended (the wall-clock backstop): its slot replaces it
	}
	if pl.maxRequests > 0 && n >= int64(pl.maxRequests) {
		p.mu.Lock()
		p.killedBy = killRecycle
		p.mu.Unlock()
		p.conn.Close()
		return
	}
	pl.idle <- p
}

// discard is for a child whose request went wrong: it was killed (its slot
// replaces it) or it must not be trusted with another request.
func (pl *pool) discard(p *proc, reason killReason) {
	p.kill(reason)
}

// counts returns total and idle children.
func (pl *pool) counts() (total, idle int) {
	pl.mu.Lock()
	var procs []*proc
	for _, p := range pl.procs {
		if p.alive() {
			total++
			procs = append(procs, p)
		}
	}
	pl.mu.Unlock()
	idle = len(pl.idle)
	if pl.fast != nil {
		// On the fast path an idle child may be running a request
		// from a connection: it is busy.
		idle -= pl.fast.busy(procs)
	}
	return total, max(idle, 0)
}

// live returns the live children by slot.
func (pl *pool) live() []*proc {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	var out []*proc
	for _, p := range pl.procs {
		if p.alive() {
			out = append(out, p)
		}
	}
	return out
}

// pids returns the live child pids, for tests and status.
func (pl *pool) pids() []int {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	var out []int
	for _, p := range pl.procs {
		if p.alive() {
			out = append(out, p.pid)
		}
	}
	return out
}

// close stops every slot, kills the children and waits for all of it.
func (pl *pool) close() {
	pl.closeOnce.Do(func() {
		pl.cancel()
		pl.wg.Wait()
		pl.sp.close()
	})
}

// setFastGen puts this generation's children on the fast path, now and
// as they are replaced.
func (pl *pool) setFastGen(g *fastGen) {
	pl.mu.Lock()
	pl.fastGen = g
	var procs []*proc
	for _, p := range pl.procs {
		procs = append(procs, p)
	}
	pl.mu.Unlock()
	for _, p := range procs {
		pl.enterFast(p)
	}
}

// enterFast puts a started child on the fast path, once.
func (pl *pool) enterFast(p *proc) {
	pl.mu.Lock()
	g, retiring := pl.fastGen, pl.fastRetiring
	pl.mu.Unlock()
	if g == nil || retiring || p.fastSlot == nil || !p.alive() {
		return
	}
	p.fastOnce.Do(func() { g.enter(p, p.fastCtl, p.fastSlot, p.fastIdx) })
}

// leaveFast is told a child exited.
func (pl *pool) leaveFast(p *proc) {
	if p.fastSlot == nil || pl.fast == nil {
		return
	}
	p.fastOnce.Do(func() {}) // it will not enter now
	if p.fast != nil {
		pl.fast.leave(p)
		return
	}
	fastStart{ctl: p.fastCtl, slot: p.fastSlot, idx: p.fastIdx}.abandon(pl.fast)
}

// take makes an idle child the caller's: on the fast path it must first
// finish the request it may be running from a connection. A child that
// does not answer is killed (its slot replaces it).
func (pl *pool) take(p *proc) bool {
	if p.fast == nil {
		return true
	}
	if p.fast.isHeld() {
		return true // retired: held since
	}
	if err := pl.fast.borrow(p, time.Minute); err != nil {
		p.kill(killIPC)
		return false
	}
	// What it used on the fast path is charged already (borrow).
	p.owner, p.endCPU = chargeTo{}, p.cpu()
	return true
}

// retireFast takes this generation's children off the fast path as the
// generation drains (a reload, a shutdown): each finishes the request it
// runs from a connection and takes no other; the connections are then
// the next generation's children's alone.
func (pl *pool) retireFast() {
	if pl.fast == nil {
		return
	}
	pl.mu.Lock()
	pl.fastRetiring = true
	pl.mu.Unlock()
	var idle []*proc
	for {
		select {
		case p := <-pl.idle:
			idle = append(idle, p)
			continue
		default:
		}
		break
	}
	var wg sync.WaitGroup
	for _, p := range idle {
		if p.fast == nil || !p.alive() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if pl.fast.borrow(p, time.Minute) != nil {
				p.kill(killIPC)
			}
		}()
	}
	wg.Wait()
	for _, p := range idle {
		pl.idle <- p
	}
}

// offer puts a fresh child among the idle ones. Children that died while
// idle (on the fast path a child is killed while the pool counts it idle)
// are dropped to make room.
func (pl *pool) offer(p *proc) {
	for {
		select {
		case pl.idle <- p:
			return
		case <-pl.ctx.Done():
			return
		default:
		}
		pl.purgeIdle()
		select {
		case pl.idle <- p:
			return
		case <-pl.ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// purgeIdle drops dead children from the idle ones, so that the idle
// count (the status page's) is right: on the fast path a child can die
// while the pool counts it idle.
func (pl *pool) purgeIdle() {
	for range len(pl.idle) {
		select {
		case q := <-pl.idle:
			if q.alive() {
				select {
				case pl.idle <- q:
				case <-pl.ctx.Done():
					return
				}
			}
		default:
			return
		}
	}
}
