package manager

import (
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
	"github.com/wagi-fcgi/wagi-fcgi/manager/internal/runner"
)

const (
	// stderrCap bounds the guest stderr logged per request.
	stderrCap = 64 << 10
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
	ran    bool          // the module ran on a child
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
	if rec.mod != nil && rec.t != nil && rec.ran {
		m.servedFrom(rec.t.src) // a valid module ran: its CID is worth keeping
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
	rec.ran = true
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
	m.settle(log, claim, res.cpu)
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

// settle charges a finished request's CPU (and the totals) and ends its
// claim.
func (m *Manager) settle(log *slog.Logger, c *claim, d time.Duration) {
	if !c.to.empty() && d > 0 {
		m.charged.Add(int64(d))
	}
	c.settle(log, d)
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
	// aborted: the client left, but the request ended within the runner's
	// abort grace.
	aborted  bool
	exitCode uint32 // the guest's exit code, for wagi-fcgi run
	// budget is the account that ran out, when killed is killBudget.
	budget account
}

// output receives a module's stdout.
type output interface {
	write(p []byte) error
}

// execute runs one request on child p (see runner.Run) and settles the
// child's accounts: the CPU it used since its previous request is owed by
// the module that ran then (idle, idleOwner), and a child that ended the
// run cleanly is charged to nobody until its next one. A killed child is
// replaced by its pool slot; a reusable one is the caller's to give back.
//
// claim, when not nil, is the request's draw on its daily budgets: at every
// CPU poll the child's CPU so far is reported to it, and the child is killed
// once a budget is spent (by this request and the others running for the
// same module together).
func execute(ctx context.Context, log *slog.Logger, p *proc, run *ipc.Run, lim config.Limits, out output, owner chargeTo, claim *claim) execResult {
	idleOwner, idleSince := p.owner, p.endCPU
	p.setRunning(owner)
	var budget runner.Budget
	var cb *claimBudget
	if claim != nil {
		cb = &claimBudget{c: claim}
		budget = cb
	}
	r := runner.Run(ctx, log, procChild{p}, run, runner.Limits{Timeout: lim.Timeout, CPU: lim.CPU, MaxOutput: lim.MaxOutput}, runnerOutput{out}, budget)
	res := execResult{err: r.Err, fail: runFailure(r), killed: r.Killed, cpu: r.CPU, reusable: r.Reusable, aborted: r.Aborted, exitCode: r.ExitCode}
	if cb != nil {
		res.budget = cb.spent
	}
	switch r.Outcome {
	case runner.NotSent, runner.BadDone:
		return res
	case runner.Succeeded, runner.ModuleFailed:
		p.owner, p.endCPU = owner, r.StartCPU+r.CPU
		if r.Reusable {
			p.setRunning(chargeTo{})
		} // else retired: its replacement is this module's (running stays set)
	}
	res.idleOwner = idleOwner
	if !idleOwner.empty() {
		res.idle = r.StartCPU - idleSince
	}
	return res
}

// claimBudget is a claim as the runner reports to it; it keeps the account
// that ran out.
type claimBudget struct {
	c     *claim
	spent account
}

func (b *claimBudget) Spent(used time.Duration) bool {
	a, spent := b.c.report(used)
	if spent {
		b.spent = a
	}
	return spent
}

// runnerOutput is an output as the runner writes to it.
type runnerOutput struct{ output }

func (o runnerOutput) Write(p []byte) error { return o.write(p) }

// captureWriter collects output up to a limit (for _routes).
type captureWriter struct {
	buf   []byte
	limit int
}

func (c *captureWriter) write(p []byte) error {
	if len(c.buf)+len(p) > c.limit {
		return &invalidOutputError{Err: errors.New("_routes output over " + strconv.Itoa(c.limit) + " bytes")}
	}
	c.buf = append(c.buf, p...)
	return nil
}
