package manager

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/fcgi"
	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/internal/modsource"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
)

const (
	// stderrCap bounds the guest stderr logged per request.
	stderrCap = 64 << 10
	// stderrSlack is what a child may send past StderrCap: its note that
	// the rest was dropped.
	stderrSlack = 256
	// maxStderrLine bounds one logged line of guest stderr: a longer one
	// is logged in pieces, so an endless line costs the manager no more.
	maxStderrLine = 4 << 10
	// maxStderrLines bounds the guest stderr lines logged per request;
	// the rest are counted in one line.
	maxStderrLines = 200
	// cpuPoll is how often a running child's CPU clock is read. The
	// per-request CPU limit is overshot by at most about this much.
	cpuPoll = 5 * time.Millisecond
	// demoteAfter is the CPU time after which a request's child is
	// reniced to demoteNice: a long CPU-bound request then yields to the
	// many short ones (hello-world pages take well under a millisecond),
	// and a module burning CPU cannot double its neighbours' latency.
	demoteAfter = 20 * time.Millisecond
	demoteNice  = 19
	// abortGrace is how long a request whose client went away may still
	// run before its child is killed.
	abortGrace = 20 * time.Millisecond
)

// ServeFCGI answers one FastCGI request.
func (m *Manager) ServeFCGI(w *fcgi.ResponseWriter, r *fcgi.Request) {
	if !m.enter() {
		fail(restarting).write(w, m.newID())
		return
	}
	defer m.leave()
	m.serve(w, r)
}

// served is what the request's log line and the status page say about a
// request; each step of serve fills in what it learns.
type served struct {
	start  time.Time
	status int
	bytes  int64         // body bytes sent
	cpu    time.Duration // CPU charged
	t      *target       // nil until routed
	mod    *module       // nil until loaded
	killed killReason
}

// serve answers a request the manager has admitted.
func (m *Manager) serve(w *fcgi.ResponseWriter, r *fcgi.Request) {
	id := m.newID()
	rawPath := wagi.RawPath(r.Params)
	log := m.log.With("id", id)
	rec := &served{start: time.Now()}
	defer m.record(log, r, rawPath, rec)
	if m.serveOwnPage(w, r, rawPath, log, rec) {
		return
	}
	if f := m.serveModule(w, r, id, rawPath, log, rec); f.failed() {
		rec.status = f.status()
		f.write(w, id)
	}
}

// record logs the request's line and counts it on the status page.
func (m *Manager) record(log *slog.Logger, r *fcgi.Request, rawPath string, rec *served) {
	var modKey, modRef string
	var budget time.Duration
	if rec.mod != nil {
		modKey, modRef, budget = rec.mod.key, rec.mod.ref, rec.t.limits.DailyCPU
	}
	if rec.t != nil {
		m.status.observe(modKey, modRef, rec.t.route.Pattern, budget, rec.status, time.Since(rec.start), rec.killed)
	}
	attrs := []any{"method", r.Params["REQUEST_METHOD"], "path", rawPath, "status", rec.status,
		"wall", time.Since(rec.start).Round(time.Microsecond), "bytes", rec.bytes}
	if rec.t != nil {
		attrs = append(attrs, "route", rec.t.route.Pattern)
	}
	if modKey != "" {
		attrs = append(attrs, "module", modKey[:12], "cpu", rec.cpu.Round(time.Microsecond))
	}
	log.Info("request", attrs...)
}

// serveOwnPage answers the status page and /healthz, if the request is for
// one of them.
func (m *Manager) serveOwnPage(w io.Writer, r *fcgi.Request, rawPath string, log *slog.Logger, rec *served) bool {
	switch {
	case m.cfg.StatusPath != "" && rawPath == m.cfg.StatusPath:
		// Answered here, not by a child: it works when every child is busy.
		rec.status = 200
		if err := m.writeStatus(w, wagi.QueryString(r.Params)); err != nil {
			log.Error("status page", "err", err)
		}
		return true
	case m.cfg.Healthz && rawPath == "/healthz":
		rec.status = 200
		_, _ = io.WriteString(w, "Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nOK")
		return true
	}
	return false
}

// routed is where a request goes.
type routed struct {
	t           *target
	scriptName  string
	rawPathInfo string
	matched     wagi.Route
	gateway     bool // a CID of the open-edge gateway
}

// route finds the target of a path: a gateway CID, or a route.
func (m *Manager) route(rawPath string) (routed, failure) {
	if m.gateway != nil && strings.HasPrefix(rawPath, m.gateway.prefix) {
		t, f := m.gateway.lookup(rawPath)
		if f.failed() {
			return routed{}, f
		}
		scriptName, rawPathInfo, _ := t.route.Match(rawPath)
		return routed{t: t, scriptName: scriptName, rawPathInfo: rawPathInfo, matched: t.route, gateway: true}, failure{}
	}
	t, scriptName, rawPathInfo, matched, ok := m.routes.Load().Lookup(rawPath)
	if !ok {
		return routed{}, fail(noRoute)
	}
	return routed{t: t, scriptName: scriptName, rawPathInfo: rawPathInfo, matched: matched}, failure{}
}

// gatewayBudget turns a gateway CID away while the gateway's budget is
// spent, before it is fetched or compiled: both are CPU that the gateway
// would pay for.
func (m *Manager) gatewayBudget(t *target) failure {
	now := m.opts.Now()
	gwOnly := m.chargeTo("", t.limits, true, now)
	gwOnly.accts = gwOnly.accts[1:]
	if a, spent := m.budgets.exhausted(gwOnly); spent {
		return budgetFailure(a, now)
	}
	return failure{}
}

// serveModule answers a request with its module, run on a child, or says
// why wagi-fcgi answers it itself.
func (m *Manager) serveModule(w *fcgi.ResponseWriter, r *fcgi.Request, id, rawPath string, log *slog.Logger, rec *served) failure {
	rt, f := m.route(rawPath)
	rec.t = rt.t
	if f.failed() {
		return f
	}
	t := rt.t
	if rt.gateway {
		if f := m.gatewayBudget(t); f.failed() {
			return f
		}
	}
	mod, mounts, f := m.prepare(r.Context(), t, rt.gateway, log)
	rec.mod = mod // nil if it could not be loaded
	if f.failed() {
		return f
	}

	// The daily budgets: spent means 503 until the reset. What running
	// requests of the module use counts too (see budgets).
	lim := t.limits
	now := m.opts.Now()
	owner := m.chargeTo(mod.key, lim, rt.gateway, now)
	if a, spent := m.budgets.exhausted(owner); spent {
		return budgetFailure(a, now)
	}
	body, f := m.readBody(r, lim, log)
	if f.failed() {
		return f
	}
	defer body.Release()
	run := m.newRun(id, r, rt, mod, mounts, body)

	ctx := r.Context()
	p, done, f := m.takeChild(ctx, t)
	defer done()
	if f.failed() {
		return f
	}
	// Budgets again: others may have spent them while this one queued.
	if a, spent := m.budgets.exhausted(owner); spent {
		m.pool.release(p)
		return budgetFailure(a, now)
	}
	resp := &cgiResponse{w: w, log: log}
	res := m.runOnChild(ctx, log, p, run, t, mod, resp, owner)
	rec.cpu, rec.killed = res.cpu, res.killed
	if res.killed == killBudget {
		res.fail = budgetFailure(res.budget, now)
	}
	rec.bytes = resp.sent
	return m.answer(w, log, mod, res, resp, rec)
}

// prepare gets what a request's child needs ready: the module, loaded (and
// able to run on this route), and its volumes.
func (m *Manager) prepare(ctx context.Context, t *target, gw bool, log *slog.Logger) (*module, []ipc.Mount, failure) {
	mod, err := m.module(ctx, t.src)
	if err != nil {
		f := loadFailure(err, t.src.from.Classify, gw)
		log.Error("module not available", "module", t.src.ref.Raw, "status", f.status(), "err", err)
		return nil, nil, f
	}
	if why := missingEntrypoint(t, mod); why != "" {
		f := fail(moduleFailed)
		log.Error("module cannot run on this route", "module", mod.ref, "status", f.status(), "err", why)
		return mod, nil, f
	}
	mounts, err := m.mounts(ctx, t.cfg.Volumes)
	if err != nil {
		f := loadFailure(err, modsource.IPFSFailure, false)
		f.text = "a volume of this module is not available: " + f.public()
		log.Error("volume not available", "module", mod.ref, "status", f.status(), "err", err)
		return mod, nil, f
	}
	return mod, mounts, failure{}
}

// readBody reads the whole request body, within max_body.
func (m *Manager) readBody(r *fcgi.Request, lim config.Limits, log *slog.Logger) (*reqBody, failure) {
	body, err := m.bodies.read(r.Body, lim.MaxBody, contentLength(r.Params))
	if err == nil {
		return body, failure{}
	}
	var serr *spoolError
	switch {
	case errors.Is(err, errBodyTooLarge):
		return nil, failWith(bodyTooLarge, fmt.Sprintf("the request body is larger than %d bytes", lim.MaxBody))
	case errors.Is(err, errSpoolFull):
		log.Warn("request body refused: the spool is full", "spool_size", m.cfg.Pool.SpoolSize)
		return nil, fail(spoolFull)
	case errors.As(err, &serr):
		log.Error("request body", "err", err)
		return nil, fail(spoolFailed)
	default:
		// The front end went away while sending the body.
		log.Warn("reading request body", "err", err)
		return nil, fail(clientGone)
	}
}

// newRun is the Run frame of a request.
func (m *Manager) newRun(id string, r *fcgi.Request, rt routed, mod *module, mounts []ipc.Mount, body *reqBody) *ipc.Run {
	t := rt.t
	ri := &wagi.RequestInfo{
		Params:         r.Params,
		ScriptName:     rt.scriptName,
		RawPathInfo:    rt.rawPathInfo,
		MatchedRoute:   rt.matched.Pattern,
		ContentLength:  body.Len(),
		ServerSoftware: m.software,
		ModuleEnv:      t.cfg.Environment,
		ArgvTemplate:   t.cfg.Argv,
	}
	return &ipc.Run{
		ID:          id,
		ModuleKey:   mod.key,
		ModulePath:  mod.binary(),
		MemoryPages: t.pages,
		Entrypoint:  t.entry,
		Args:        wagi.Argv(ri),
		Env:         wagi.Env(ri),
		Mounts:      mounts,
		Stdin:       body.mem,
		BodySize:    body.Len() - int64(len(body.mem)),
		Body:        body.Reader(),
		StderrCap:   stderrCap,
	}
}

// takeChild waits, within queue_timeout, for one of the module's
// max_concurrency slots (if it has a limit) and for an idle child. done
// gives the slot back; the caller calls it whatever the outcome.
func (m *Manager) takeChild(ctx context.Context, t *target) (p *proc, done func(), f failure) {
	done = func() {}
	if t.slots != nil {
		release, err := acquireSlot(ctx, t.slots, m.cfg.Pool.QueueTimeout)
		if err != nil {
			if errors.Is(err, errQueueTimeout) {
				return nil, done, fail(concurrencyFull)
			}
			return nil, done, fail(clientGone)
		}
		done = release
	}
	p, err := m.pool.acquire(ctx, m.cfg.Pool.QueueTimeout)
	if err != nil {
		switch {
		case errors.Is(err, errQueueFull), errors.Is(err, errQueueTimeout), errors.Is(err, errPoolClosed):
			return nil, done, failWith(queueFull, "all workers are busy ("+err.Error()+"); try again shortly")
		default:
			return nil, done, fail(clientGone) // the client left while queued
		}
	}
	return p, done, failure{}
}

// runOnChild runs a request on child p with its grants, gives the child
// back if it may serve again, and charges the CPU.
func (m *Manager) runOnChild(ctx context.Context, log *slog.Logger, p *proc, run *ipc.Run, t *target, mod *module, resp *cgiResponse, owner chargeTo) execResult {
	lim := t.limits
	claim := m.budgets.open(owner)
	m.mfsGrant(p, run) // MFS calls of this child, for this request only
	m.egressGrant(p, run, mod.ref, t.cfg, lim)
	res := execute(ctx, log.With("route", t.route.Pattern), p, run, lim, resp, owner, claim)
	m.egressRevoke(run)
	m.mfsRevoke(run)
	if res.reusable {
		m.pool.release(p)
	}
	m.charge(log, owner, res.cpu)
	claim.close() // after the charge: the spend is never seen short
	m.charge(log, res.idleOwner, res.idle)
	m.requests.Add(1)
	return res
}

// answer finishes a request that ran on a child: the module's response, or
// what wagi-fcgi answers instead.
func (m *Manager) answer(w *fcgi.ResponseWriter, log *slog.Logger, mod *module, res execResult, resp *cgiResponse, rec *served) failure {
	switch {
	case res.killed == killAbort || res.aborted:
		return fail(clientGone)
	case res.err == nil:
		if err := resp.finish(); err != nil {
			log.Error("module output", "module", mod.ref, "err", err)
			return fail(invalidOutput)
		}
		rec.status, rec.bytes = resp.status, resp.sent
		return failure{}
	case resp.committed:
		// Headers are gone; all that is left is to end the stream early,
		// in a way the web server cannot mistake for a complete response.
		w.Abort()
		rec.status = resp.status
		log.Error("module failed after its response was committed; stream cut", "module", mod.ref, "err", res.err)
		return failure{}
	default:
		log.Error("module failed", "module", mod.ref, "status", res.fail.status(), "err", res.err)
		return res.fail
	}
}

// charge records CPU used for a module in the ledger (and the totals).
func (m *Manager) charge(log *slog.Logger, to chargeTo, d time.Duration) {
	if to.empty() || d <= 0 {
		return
	}
	m.charged.Add(int64(d))
	m.budgets.charge(log, to, d)
}

// chargeTo names the budgets a request of module key pays from: the
// module's own, and for a gateway CID also the gateway's.
func (m *Manager) chargeTo(key string, lim config.Limits, gateway bool, now time.Time) chargeTo {
	to := chargeTo{accts: make([]account, 1, 2)}
	to.accts[0] = account{key: key, day: lim.DayStart.Start(now), limit: lim.DailyCPU, next: lim.DayStart.Next(now)}
	if gateway {
		ds := m.cfg.Limits.DayStart
		to.accts = append(to.accts, account{key: gatewayAccount, day: ds.Start(now), limit: m.cfg.IPFS.GatewayDailyCPU, next: ds.Next(now)})
	}
	return to
}

// budgetMessage is the public text of a 503 for a spent budget.
func budgetMessage(a account) string {
	if a.key == gatewayAccount {
		return "the modules of this gateway have used their CPU time for today"
	}
	return "this module has used its CPU time for today"
}

// retryAfter is the number of seconds from now until next, rounded up.
func retryAfter(now, next time.Time) string {
	return strconv.FormatInt(int64(math.Ceil(next.Sub(now).Seconds())), 10)
}

// acquireSlot takes one of a module's max_concurrency slots, waiting at
// most timeout.
func acquireSlot(ctx context.Context, slots chan struct{}, timeout time.Duration) (func(), error) {
	release := func() { <-slots }
	select {
	case slots <- struct{}{}:
		return release, nil
	default:
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case slots <- struct{}{}:
		return release, nil
	case <-t.C:
		return nil, errQueueTimeout
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// The manager reads the whole request body (m.bodies.read) before it
// takes a child, so a slow upload never holds one, and so CONTENT_LENGTH
// is right even when the front end streamed the body without one. Small
// bodies travel in the Run frame; spooled ones are streamed to the child
// from their file.

// contentLength is the CONTENT_LENGTH the front end announced, or -1.
func contentLength(params map[string]string) int64 {
	n, err := strconv.ParseInt(params["CONTENT_LENGTH"], 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// execResult is how a run on a child ended.
type execResult struct {
	err    error         // nil: the module ended successfully
	fail   failure       // what to answer when err != nil
	killed killReason    // why the manager killed the child, if it did
	cpu    time.Duration // CPU charged to the request
	// reusable means the child finished cleanly and may take another
	// request; the caller gives it back.
	reusable bool
	// idle is CPU the child used between its previous request and this
	// one, owed by idleOwner (the module it ran for then).
	idle      time.Duration
	idleOwner chargeTo
	// aborted: the client left, but the request ended within abortGrace.
	aborted  bool
	exitCode uint32 // the guest's exit code, for wagi-fcgi run
	// budget is the account that ran out, when killed is killBudget.
	budget account
}

// output receives a module's stdout.
type output interface {
	write(p []byte) error
}

// execute runs one request on child p. It enforces the wall-clock, CPU and
// output limits from outside: the child cannot pre-empt a spinning guest, so
// the manager kills it. A killed child is replaced by its pool slot; a
// reusable one is the caller's to give back.
//
// claim, when not nil, is the request's draw on its daily budgets: at every
// CPU poll the child's CPU so far is reported to it, and the child is killed
// once a budget is spent (by this request and the others running for the
// same module together).
func execute(ctx context.Context, log *slog.Logger, p *proc, run *ipc.Run, lim config.Limits, out output, owner chargeTo, claim *claim) execResult {
	startCPU := p.cpu()
	idle, idleOwner := time.Duration(0), p.owner
	if !idleOwner.empty() {
		idle = startCPU - p.endCPU
	}
	p.setRunning(owner)
	if err := p.send(run); err != nil {
		p.kill(killIPC)
		<-p.exited
		return execResult{err: fmt.Errorf("send request to child %d: %w", p.pid, err), fail: fail(workerFailed), killed: killIPC}
	}

	// The holder waits for the child's frames itself, with a read deadline
	// at the next thing to check: the wall-clock limit, the next CPU
	// poll, or the end of the abort grace. The end of ctx (the client
	// went away) wakes the read.
	h := newHolding(log, p, run, lim, out, claim, startCPU)
	h.idle, h.idleOwner = idle, idleOwner
	stopWake := context.AfterFunc(ctx, p.wake)
	defer stopWake()
	// The loop below checks the limits between frames; while it is
	// blocked handing output to a client that reads slowly (Apache
	// streams), it checks nothing. This timer still ends the run at its
	// wall-clock limit then, so a slow reader cannot hold a child past
	// `timeout`. It acts only while this run is the child's.
	runSeq := p.beginRun()
	if lim.Timeout > 0 {
		backstop := time.AfterFunc(lim.Timeout, func() { p.killRun(runSeq, killTimeout) })
		defer backstop.Stop()
	}
	defer p.endRun(runSeq)
	waitCtx := ctx // replaced once the abort is seen, so recv waits again

	for {
		t, payload, err := p.recv(waitCtx, h.deadline())
		switch {
		case err != nil && timedOut(err):
			now := time.Now()
			if waitCtx.Err() != nil && !h.aborted {
				h.clientLeft(now)
				waitCtx = context.Background()
			}
			h.check(now)
		case err != nil:
			return h.childGone(err)
		case t == ipc.TypeDone:
			return h.done(payload, owner)
		default:
			h.frame(t, payload)
		}
	}
}

// holding is the state of one run on a child while execute holds it.
type holding struct {
	log      *slog.Logger
	p        *proc
	run      *ipc.Run
	lim      config.Limits
	out      output
	claim    *claim
	startCPU time.Duration // the child's CPU clock at dispatch
	// idle is the child's CPU since its previous request, owed by
	// idleOwner.
	idle      time.Duration
	idleOwner chargeTo

	wallAt, pollAt, graceAt time.Time
	watching                bool // limits are enforced until the child is killed
	aborted                 bool // the client went away
	demoted, demoteFailed   bool
	stdoutBytes             int64
	stderrBytes             int64
	stderrLine              stderrLog
	outErr                  error   // why the output or the child failed
	budgetOut               account // the budget that ran out, if one did
}

func newHolding(log *slog.Logger, p *proc, run *ipc.Run, lim config.Limits, out output, claim *claim, startCPU time.Duration) *holding {
	start := time.Now()
	return &holding{log: log, p: p, run: run, lim: lim, out: out, claim: claim, startCPU: startCPU,
		wallAt: start.Add(lim.Timeout), pollAt: start.Add(cpuPoll), watching: true}
}

// kill kills the child; its limits are no longer watched.
func (h *holding) kill(reason killReason) {
	h.p.kill(reason)
	h.watching = false
}

// deadline is when the next limit is to be checked: the wall-clock limit,
// the next CPU poll, or the end of the abort grace. The zero time once the
// child is killed: only its end is awaited.
func (h *holding) deadline() time.Time {
	if !h.watching {
		return time.Time{}
	}
	deadline := h.pollAt
	if h.wallAt.Before(deadline) {
		deadline = h.wallAt
	}
	if h.aborted && h.graceAt.Before(deadline) {
		deadline = h.graceAt
	}
	return deadline
}

// clientLeft notes that the client is gone. A request about to end anyway
// finishes (its child is kept: a new one costs far more than a few
// milliseconds of CPU); one still running after abortGrace is killed.
func (h *holding) clientLeft(now time.Time) {
	h.aborted, h.graceAt = true, now.Add(abortGrace)
}

// check enforces the limits at a deadline: the wall clock, the abort
// grace, the CPU limit and the daily budgets; and demotes a CPU-bound
// child.
func (h *holding) check(now time.Time) {
	if !h.watching {
		return
	}
	switch {
	case !now.Before(h.wallAt):
		h.kill(killTimeout)
	case h.aborted && !now.Before(h.graceAt):
		h.kill(killAbort)
	case !now.Before(h.pollAt):
		h.pollAt = now.Add(cpuPoll)
		used := h.p.cpu() - h.startCPU
		if h.lim.CPU > 0 && used > h.lim.CPU {
			h.kill(killCPU)
		} else if a, spent := claimReport(h.claim, used); spent {
			h.budgetOut = a
			h.kill(killBudget)
		} else if !h.demoted && !h.demoteFailed && used > demoteAfter {
			h.demote()
		}
	}
}

// demote renices a CPU-bound child, so it yields to short requests. It
// counts as demoted only if it took: a child that was never reniced needs
// no privilege to give back (without CAP_SYS_NICE every such child was
// retired, and its replacement charged to nobody).
func (h *holding) demote() {
	if err := h.p.setNice(demoteNice); err != nil {
		h.demoteFailed = true
		h.log.Debug("demoting a CPU-bound child", "pid", h.p.pid, "err", err)
	} else {
		h.demoted = true
	}
}

// frame takes a frame of the running request: output or stderr.
func (h *holding) frame(t ipc.Type, payload []byte) {
	switch t {
	case ipc.TypeStdout:
		h.stdout(payload)
	case ipc.TypeStderr:
		// The child was told to forward at most StderrCap bytes
		// (and a note that it dropped the rest); more is a child
		// that no longer follows the protocol, flooding the log.
		if h.stderrBytes += int64(len(payload)); h.stderrBytes > int64(h.run.StderrCap)+stderrSlack {
			h.outErr = fmt.Errorf("child %d sent %d bytes of stderr, over the cap of %d", h.p.pid, h.stderrBytes, h.run.StderrCap)
			h.kill(killIPC)
			return
		}
		logStderr(h.log, &h.stderrLine, payload, false)
	default:
		h.kill(killIPC)
		h.outErr = fmt.Errorf("unexpected %s frame from child", t)
	}
}

// stdout passes output on within max_output, unless the output has
// failed or nobody is left to send it to.
func (h *holding) stdout(payload []byte) {
	if h.outErr != nil {
		return
	}
	h.stdoutBytes += int64(len(payload))
	if h.lim.MaxOutput > 0 && h.stdoutBytes > h.lim.MaxOutput {
		h.outErr = fmt.Errorf("output passed max_output (%d bytes)", h.lim.MaxOutput)
		h.kill(killOutput)
		return
	}
	if h.aborted {
		return // nobody to send it to
	}
	if err := h.out.write(payload); err != nil {
		h.outErr = err
		var inv *invalidOutputError
		if errors.As(err, &inv) {
			h.kill(killInvalid)
		} else {
			// Writing to the front end failed: it is gone.
			h.kill(killAbort)
		}
	}
}

// childGone ends a run whose stream ended (err) before Done: the child was
// killed by us, crashed, or broke the protocol.
func (h *holding) childGone(err error) execResult {
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && h.watching {
		// A frame the protocol does not allow (too large): the
		// child is not to be trusted with anything more.
		h.kill(killIPC)
		h.outErr = fmt.Errorf("child %d broke the protocol: %w", h.p.pid, err)
	}
	<-h.p.exited
	cpu := h.p.cpu() - h.startCPU
	logStderr(h.log, &h.stderrLine, nil, true)
	res := deadChildResult(h.p, cpu, h.outErr)
	res.idle, res.idleOwner, res.budget = h.idle, h.idleOwner, h.budgetOut
	return res
}

// done ends a run with the child's Done frame.
func (h *holding) done(payload []byte, owner chargeTo) execResult {
	p := h.p
	var d ipc.Done
	cpu := p.cpu() - h.startCPU
	logStderr(h.log, &h.stderrLine, nil, true)
	if err := ipc.DecodeDone(payload, &d); err != nil {
		p.kill(killIPC) // its slot drains and replaces it
		return execResult{err: err, fail: fail(workerFailed), killed: killIPC, cpu: cpu}
	}
	if p.killReason() != notKilled {
		// Done crossed our kill on the way: the kill decides.
		<-p.exited
		res := deadChildResult(p, p.cpu()-h.startCPU, h.outErr)
		res.idle, res.idleOwner, res.budget = h.idle, h.idleOwner, h.budgetOut
		return res
	}
	p.owner, p.endCPU = owner, h.startCPU+cpu
	res := execResult{cpu: cpu, reusable: true, exitCode: d.ExitCode, idle: h.idle, idleOwner: h.idleOwner}
	if h.aborted {
		res.aborted, res.err, res.fail = true, errors.New("client went away"), fail(clientGone)
	}
	if h.demoted && p.setNice(0) != nil {
		// Lowering niceness again needs privilege; a child that
		// cannot get it back is retired instead, and its
		// replacement is this module's (running stays set).
		p.kill(killRecycle)
		res.reusable = false
	} else {
		p.setRunning(chargeTo{})
	}
	switch d.Outcome {
	case ipc.OutcomeOK:
	case ipc.OutcomeExit:
		res.err, res.fail = fmt.Errorf("module exited with code %d", d.ExitCode), fail(moduleFailed)
	default:
		res.err, res.fail = fmt.Errorf("%s: %s", d.Outcome, d.Message), fail(moduleFailed)
	}
	return res
}

// claimReport reports CPU to a claim, if there is one.
func claimReport(c *claim, used time.Duration) (account, bool) {
	if c == nil {
		return account{}, false
	}
	return c.report(used)
}

// deadChildResult describes a request whose child died before Done.
func deadChildResult(p *proc, cpu time.Duration, outErr error) execResult {
	why := p.killReason()
	res := execResult{killed: why, cpu: cpu, err: outErr}
	switch why {
	case killTimeout:
		res.fail = fail(wallLimit)
		res.err = fmt.Errorf("wall-clock limit reached; child %d killed", p.pid)
	case killCPU:
		res.fail = fail(cpuLimit)
		res.err = fmt.Errorf("CPU limit reached (%s used); child %d killed", cpu.Round(time.Millisecond), p.pid)
	case killOutput:
		res.fail = fail(outputTooLarge)
	case killInvalid:
		res.fail = fail(invalidOutput)
	case killBudget:
		res.fail = fail(budgetSpent) // the caller knows which budget, and when it resets
		res.err = fmt.Errorf("daily CPU budget spent (%s used by this request); child %d killed", cpu.Round(time.Millisecond), p.pid)
	case killAbort:
		res.fail = fail(clientGone)
		if res.err == nil {
			res.err = errors.New("client went away")
		}
	default:
		res.fail = fail(workerFailed)
		res.err = fmt.Errorf("child %d died: %s", p.pid, exitText(p.state))
	}
	return res
}

// logStderr logs guest stderr line by line. A partial line is kept until
// its newline arrives or the request ends.
func logStderr(log *slog.Logger, st *stderrLog, p []byte, end bool) {
	carry := &st.carry
	*carry = append(*carry, p...)
	for {
		i := bytes.IndexByte(*carry, '\n')
		if i < 0 {
			break
		}
		st.line(log, string(bytes.TrimRight((*carry)[:i], "\r")))
		*carry = (*carry)[i+1:]
	}
	for len(*carry) >= maxStderrLine {
		st.line(log, string((*carry)[:maxStderrLine]))
		*carry = (*carry)[maxStderrLine:]
	}
	if end && len(*carry) > 0 {
		st.line(log, string(*carry))
		*carry = nil
	}
	if end && st.dropped > 0 {
		log.Warn("module stderr", "dropped_lines", st.dropped, "last", st.last,
			"note", fmt.Sprintf("only the first %d lines of a request are logged, and its last", maxStderrLines))
		st.dropped, st.last = 0, ""
	}
}

// stderrLog is a request's guest stderr on its way to the log.
type stderrLog struct {
	carry   []byte // a line not ended yet
	lines   int    // lines logged
	dropped int    // lines past maxStderrLines
	last    string // the last of them: how a flood ended
}

// line logs one line, unless the request has logged maxStderrLines: 64 KiB
// of empty lines would otherwise be 65,536 log records, costing the manager
// CPU that nobody pays for and crowding out its own lines.
func (st *stderrLog) line(log *slog.Logger, s string) {
	if st.lines >= maxStderrLines {
		st.dropped++
		st.last = s
		return
	}
	st.lines++
	log.Warn("module stderr", "line", s)
}

// captureWriter collects output up to a limit (for _routes).
type captureWriter struct {
	buf   []byte
	limit int
}

func (c *captureWriter) write(p []byte) error {
	if len(c.buf)+len(p) > c.limit {
		return &invalidOutputError{errors.New("_routes output over " + strconv.Itoa(c.limit) + " bytes")}
	}
	c.buf = append(c.buf, p...)
	return nil
}
