package manager

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wagi-fcgi/wagi-fcgi/internal/scoreboard"
	"github.com/wagi-fcgi/wagi-fcgi/manager/internal/runner"
)

// tick watches the children while any request runs on the fast path, and
// sleeps when none does (a child that begins one wakes it, see
// scoreboard.Page.Sleep); once a second it also closes connections idle
// past idle_timeout.
func (f *FastPath) tick() {
	defer f.wg.Done()
	t := time.NewTicker(fastTick)
	defer t.Stop()
	for f.ctx.Err() == nil {
		if f.scan() {
			select {
			case <-t.C:
			case <-f.ctx.Done():
			}
			continue
		}
		f.page.Sleep() // odd: asleep
		if !f.scan() {
			select {
			case <-f.wake:
			case <-time.After(time.Second):
			case <-f.ctx.Done():
			}
		}
		f.page.Sleep()
	}
}

// scan is one tick: it charges what the children used, logs the requests
// they finished, enforces the limits of those running, takes back
// connections that waited too long, and reports whether any request runs.
func (f *FastPath) scan() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	busy, allBusy := false, len(f.kids) > 0
	for _, k := range f.kids {
		if k.held {
			continue // its holder watches it
		}
		f.chargeLocked(k, now)
		s := k.slot.Read()
		k.lastSnap = s
		switch s.State {
		case scoreboard.Running:
			busy = true
			f.watchLocked(k, s, now)
		case scoreboard.Holding:
			busy = true
		default:
			allBusy = false
			if max := k.gen.m.pool.maxRequests; max > 0 && k.p.requests.Load() >= int64(max) && s.State == scoreboard.Idle {
				// Recycled between requests, as the pool does (a request
				// that begins meanwhile is answered for it).
				k.p.kill(killRecycle)
			}
			if k.demoted {
				k.demoted = false
				if k.p.setNice(0) != nil {
					k.p.kill(killRecycle) // see execute: niceness cannot be lowered without privilege
				}
			}
		}
	}
	if f.cur != nil {
		f.cur.refreshSpent(now)
	}
	if allBusy {
		f.takeoverLocked(now)
	} else {
		for c := range f.conns {
			f.conns[c].readySince = time.Time{}
		}
	}
	if f.idleTimeout > 0 {
		held := f.heldLocked()
		for c := range f.conns {
			if fc := &f.conns[c]; fc.used && !held[c] && now.Sub(fc.lastActive) > f.idleTimeout {
				f.dropLocked(c)
			}
		}
	}
	return busy
}

// chargeLocked charges a child's CPU since the last look: to the requests
// it reports as finished (each at most what it says it used, all together
// at most what its clock says), the rest to the request it runs or ran
// last. The clock is the kernel's; only the split is the child's word.
func (f *FastPath) chargeLocked(k *fastKid, now time.Time) {
	cpu := k.p.cpu() // the final figure once it has exited
	delta := cpu - k.lastCPU
	k.lastCPU = cpu
	var used time.Duration
	lost := k.slot.Drain(func(r *scoreboard.Record) bool {
		if k.gen.target(r.Route) == nil {
			// A route it was never given: the child lies.
			k.gen.m.log.Error("fast path: a child reported a route it was never given; killing it", "pid", k.p.pid, "route", r.Route)
			k.p.kill(killIPC)
			return false
		}
		share := min(max(r.CPU, 0), max(delta-used, 0))
		used += share
		if r.Conn >= 0 && r.Conn < len(f.conns) && f.conns[r.Conn].used {
			f.conns[r.Conn].lastActive = now
		}
		k.lastRoute = r.Route
		k.p.requests.Add(1) // for max_requests, and a crash loop's backoff
		k.endStderr(r.ID)
		k.gen.finished(r, share)
		return true
	})
	if lost > 0 {
		k.gen.m.log.Warn("fast path: request lines lost (the child wrote faster than the manager read)", "pid", k.p.pid, "lost", lost)
	}
	if rest := delta - used; rest > 0 {
		r := k.lastRoute
		if s := k.slot.Read(); s.State == scoreboard.Running {
			r = s.Route
		}
		k.gen.chargeRoute(r, rest)
	}
}

// watchLocked enforces a running request's limits, as execute does on the
// manager's path.
func (f *FastPath) watchLocked(k *fastKid, s scoreboard.Snapshot, now time.Time) {
	if s.Seq != k.seq {
		k.seq, k.since, k.cpuBase, k.abortAt = s.Seq, now, k.lastCPU, time.Time{}
	}
	t := k.gen.target(s.Route)
	if t == nil {
		k.p.kill(killIPC) // a route it was never given
		return
	}
	switch s.Ask {
	case scoreboard.AskMaxOutput:
		k.p.kill(killOutput)
		return
	case scoreboard.AskInvalid:
		k.p.kill(killInvalid)
		return
	}
	used := k.lastCPU - k.cpuBase
	// A kill from here on replaces the child at this module's cost, as
	// on the manager's path.
	k.p.setRunning(k.gen.m.chargeTo(t.modKey(), t.limits, false, now))
	switch {
	case now.Sub(k.since) > t.limits.Timeout:
		k.p.kill(killTimeout)
		return
	case used > t.limits.CPU:
		k.p.kill(killCPU)
		return
	}
	if !k.demoted && used > runner.DemoteAfter && k.p.setNice(runner.DemoteNice) == nil {
		k.demoted = true
	}
	if a, spent := k.gen.m.budgets.exhausted(k.gen.m.chargeTo(t.modKey(), t.limits, false, now)); spent {
		_ = a
		k.p.kill(killBudget)
		return
	}
	if s.Conn >= 0 && s.Conn < len(f.conns) {
		pfd := []unix.PollFd{{Fd: int32(f.base + s.Conn), Events: unix.POLLRDHUP}}
		if n, _ := unix.Poll(pfd, 0); n == 1 && pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0 {
			if k.abortAt.IsZero() {
				k.abortAt = now
			} else if now.Sub(k.abortAt) >= runner.AbortGrace {
				k.p.kill(killAbort)
			}
		}
	}
}

// takeoverAfter is how long a request may wait on a connection while
// every child is busy before the manager takes the connection back; its
// queue (queue, queue_timeout, the status page) then answers it. Under
// ordinary load a request waits far less (16 connections over 2 children
// wait about half a millisecond).
const takeoverAfter = 100 * time.Millisecond

// takeoverLocked runs while every child is busy: a connection with a
// request that no child holds, seen so for takeoverAfter, is taken back by
// the manager.
func (f *FastPath) takeoverLocked(now time.Time) {
	held := f.heldLocked()
	var pfds []unix.PollFd
	for c := range f.conns {
		if f.conns[c].used && !held[c] {
			pfds = append(pfds, unix.PollFd{Fd: int32(f.base + c), Events: unix.POLLIN})
		}
	}
	if len(pfds) == 0 {
		return
	}
	if n, _ := unix.Poll(pfds, 0); n <= 0 {
		return
	}
	for _, p := range pfds {
		c := int(p.Fd) - f.base
		fc := &f.conns[c]
		if p.Revents&unix.POLLIN == 0 {
			fc.readySince = time.Time{}
			continue
		}
		if fc.readySince.IsZero() {
			fc.readySince = now
		}
		if now.Sub(fc.readySince) < takeoverAfter {
			continue
		}
		// Dekker's handshake with the children (scoreboard.Slot.Hold).
		f.page.SetTaking(c, true)
		if f.heldLocked()[c] {
			f.page.SetTaking(c, false)
			continue
		}
		f.handbackLocked(c, nil)
		f.page.SetTaking(c, false)
	}
}

func (g *fastGen) target(r int) *target {
	if r < 0 || r >= len(g.targets) {
		return nil
	}
	return g.targets[r]
}

// modKey is the loaded module's key ("" if not loaded).
func (t *target) modKey() string {
	if mod, _ := t.src.loaded(); mod != nil {
		return mod.key
	}
	return ""
}

// chargeRoute charges d of a fast-path child's CPU to route r's module.
func (g *fastGen) chargeRoute(r int, d time.Duration) {
	t := g.target(r)
	if t == nil || d <= 0 {
		return
	}
	m := g.m
	owner := m.chargeTo(t.modKey(), t.limits, false, time.Now())
	m.charge(m.log, owner, d)
	if _, spent := m.budgets.exhausted(owner); spent && g.f.cur == g {
		g.f.page.SetSpent(r, true)
	}
}

// finished logs and counts one request a child answered by itself.
func (g *fastGen) finished(r *scoreboard.Record, cpu time.Duration) {
	m := g.m
	id := r.ID
	if id == "" {
		id = m.newID()
	}
	log := m.log.With("id", id)
	t := g.target(r.Route)
	if t == nil {
		return // chargeLocked checked
	}
	mod, _ := t.src.loaded()
	modKey, modRef := "", ""
	if mod != nil {
		modKey, modRef = mod.key, mod.ref
	}
	if r.Outcome&0x80 != 0 {
		log.Warn("module output: headers the web server would act on were dropped")
	}
	g.chargeRoute(r.Route, cpu)
	m.requests.Add(1)
	m.status.observe(modKey, modRef, t.route.Pattern, t.limits.DailyCPU, r.Status, r.Wall, notKilled)
	if mod != nil {
		m.servedFrom(t.src)
	}
	attrs := []any{"method", r.Method, "path", r.Path, "status", r.Status,
		"wall", r.Wall.Round(time.Microsecond), "bytes", r.BytesOut, "route", t.route.Pattern}
	if len(modKey) >= 12 {
		attrs = append(attrs, "module", modKey[:12], "cpu", cpu.Round(time.Microsecond))
	}
	log.Info("request", attrs...)
}

// fastStderr logs a piece of a fast request's guest stderr. The
// request's log state lives until its record (or its child's death) ends
// it; a child keeps at most a few of them (a lying one is bounded by
// maxFastStderr).
func (g *fastGen) fastStderr(k *fastKid, id string, route int, text []byte) {
	l, ok := k.stderr[id]
	if !ok {
		if len(k.stderr) >= maxFastStderr {
			return
		}
		log := g.m.log.With("id", id)
		if t := g.target(route); t != nil {
			log = log.With("route", t.route.Pattern)
		}
		l = runner.NewStderrLog(log)
		k.stderr[id] = l
	}
	l.Write(text)
}

// maxFastStderr bounds the requests whose stderr a child has open.
const maxFastStderr = 4

// endStderr ends a request's stderr log.
func (k *fastKid) endStderr(id string) {
	if l, ok := k.stderr[id]; ok {
		l.End()
		delete(k.stderr, id)
	}
}

// failed logs why a fast request's module failed (the child's message).
func (g *fastGen) failed(id string, route int, msg string) {
	t := g.target(route)
	if t == nil {
		return
	}
	mod, _ := t.src.loaded()
	ref := ""
	if mod != nil {
		ref = mod.ref
	}
	g.m.log.Error("module failed", "id", id, "route", t.route.Pattern, "module", ref, "status", 500, "err", msg)
}

// died logs and counts a fast request whose child died: killed by the
// tick for a limit, or dead of its own accord.
func (g *fastGen) died(k *fastKid, s scoreboard.Snapshot, id string, status int, reason killReason) {
	m := g.m
	if id == "" {
		id = m.newID()
	}
	log := m.log.With("id", id)
	t := g.target(s.Route)
	cpu := k.lastCPU - k.cpuBase
	if s.Seq != k.seq {
		cpu = 0 // begun after the last tick: its CPU was charged to its route all the same
	}
	wall := time.Since(k.since)
	if status >= 500 {
		why := fmt.Sprintf("child %d died: %s", k.p.pid, exitText(k.p.state))
		if reason != notKilled {
			why = fmt.Sprintf("child %d killed: %s", k.p.pid, reason)
		}
		log.Error("module failed", "status", status, "err", why)
	}
	attrs := []any{"method", s.Method, "path", s.Path, "status", status, "wall", wall.Round(time.Microsecond), "bytes", 0}
	if t != nil {
		attrs = append(attrs, "route", t.route.Pattern)
		if key := t.modKey(); len(key) >= 12 {
			attrs = append(attrs, "module", key[:12], "cpu", cpu.Round(time.Microsecond))
			mod, _ := t.src.loaded()
			m.status.observe(key, mod.ref, t.route.Pattern, t.limits.DailyCPU, status, wall, reason)
		}
	}
	if reason != notKilled {
		attrs = append(attrs, "killed", reason.String())
	}
	log.Info("request", attrs...)
}

// refreshSpent tells the children which of this generation's routes have
// spent their daily budget (they hand those requests to the manager,
// which answers 503 with Retry-After). The page has one table: while a
// reload overlaps two generations, the old one's children read the new
// one's flags, and either hand a request to the manager (which answers it
// right) or run it for the few milliseconds until they retire.
func (g *fastGen) refreshSpent(now time.Time) {
	m := g.m
	for i, t := range g.targets {
		_, spent := m.budgets.exhausted(m.chargeTo(t.modKey(), t.limits, false, now))
		g.f.page.SetSpent(i, spent)
	}
}
