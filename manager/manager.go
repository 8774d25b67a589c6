// Package manager is the heart of wagi-fcgi: it routes FastCGI requests to
// modules, keeps the pool of pre-started children, hands each request to a
// child, watches the child's wall clock and CPU clock, kills it with SIGKILL
// on any limit and answers the client itself when the child cannot.
//
// The manager never runs guest code and never compiles it: a `wagi-fcgi
// compile` process per module does, under the module's compile limits (the
// native code lands in a wazero file cache that children share). It asks a
// child to run anything a module exports, including its _routes.
//
// RATIONALE.md beside this file explains the choices: a child process per
// request slot, SIGKILL, buffering before commit.
package manager

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/procfs"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/cpuacct"
	"github.com/wagi-fcgi/wagi-fcgi/internal/egress"
	"github.com/wagi-fcgi/wagi-fcgi/internal/fleetbudget"
	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/internal/mfsproxy"
	"github.com/wagi-fcgi/wagi-fcgi/internal/mfspublish"
	"github.com/wagi-fcgi/wagi-fcgi/internal/modsource"
	"github.com/wagi-fcgi/wagi-fcgi/internal/pinner"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

const defaultReadyTimeout = 10 * time.Second

// LedgerRetain is how long the CPU ledger keeps a module's entry after the
// start of its budget day: a day is over well before, and without a bound
// the ledger would grow with every gateway CID ever served.
const LedgerRetain = 48 * time.Hour

// Options are the parts of a Manager that do not come from the config file.
type Options struct {
	// Logger receives one line per request and per child event. nil means
	// slog.Default().
	Logger *slog.Logger
	// ChildCommand is the argv that starts a child; "--cache DIR" is
	// appended. nil means this executable with the argument "child".
	ChildCommand []string
	// CompileCommand is the argv that starts a compile process (flags
	// and the module's path are appended). nil means ChildCommand's
	// program with the argument "compile".
	CompileCommand []string
	// ChildEnv is the children's entire environment. Nothing of the
	// manager's environment is passed on unless it is listed here.
	ChildEnv []string
	// Version is reported to modules as SERVER_SOFTWARE wagi-fcgi/<Version>.
	Version string
	// ReadyTimeout bounds a child's start. 0 means 10 s.
	ReadyTimeout time.Duration
	// Now is the clock for daily CPU budgets. nil means time.Now; tests
	// inject one to move past a day boundary.
	Now func() time.Time
	// NoLedger leaves the CPU ledger closed and budgets unenforced: for
	// `wagi-fcgi check`, which must work beside a running manager (that
	// holds the ledger's lock).
	NoLedger bool
	// Check makes a manager that only checks a config (`wagi-fcgi
	// check`, `publish`'s check), beside a server that may run on the
	// same state_dir and kubo node: it implies NoLedger, and it neither
	// pins nor unpins anything nor publishes MFS volumes, which would
	// change what the running server keeps and publishes.
	Check bool
	// Ledger, when set, is used instead of opening state_dir/cpu-ledger,
	// and is not closed by Close: the generations of a reloading server
	// share one.
	Ledger *cpuacct.Ledger
	// Fast, when set, puts this generation's children on the fast path
	// (the server's connections are then accepted by Fast.Listener).
	Fast *FastPath

	// pinBook is the previous generation's book of served CIDs, handed
	// on by Switch.Reload.
	pinBook *pinner.Book
}

// Manager serves FastCGI requests with modules run in child processes. It
// implements fcgi.Handler.
type Manager struct {
	cfg       *config.Config
	opts      Options
	log       *slog.Logger
	store     *store
	pool      *pool
	ledger    *cpuacct.Ledger // nil with Options.NoLedger
	budgets   *budgets        // daily budgets, over the ledger
	ownLedger bool            // opened here, so closed here
	// fleetStarted: Start ran budgets.fleet's sync goroutine (Start may
	// be called again after a failure).
	fleetStarted bool
	procfs       procfs.FS
	routes       atomic.Pointer[wagi.Table[*target]]
	sources      []*source // one per configured module, in config order
	ipfs         *ipfs.Client
	srcEnv       *modsource.Env  // what module sources share (IPFS client, HTTP client, OCI settings)
	mfs          *mfsproxy.Proxy // how children reach MFS; started with the children if ipfs is set
	egress       *egress.Server  // the only way guest code reaches the network (outbound HTTP)
	gateway      *gateway        // nil unless [ipfs] gateway is set

	drainMu  sync.Mutex
	draining bool
	inflight sync.WaitGroup

	routesMu sync.Mutex               // serialises rebuildRoutes
	slots    map[string]chan struct{} // max_concurrency semaphores by module; under routesMu
	software string

	idPrefix string
	idSeq    atomic.Uint64

	status   *statusBook
	fetches  atomic.Int64 // modules fetched from IPFS
	dirMu    sync.Mutex
	dirFetch map[string]*loadCall // IPFS directories being fetched
	ipnsVols ipnsVolumes          // IPNS names of read-only volumes
	// publisher publishes the MFS volumes that have publish_ipns; nil
	// when none has.
	publisher *mfspublish.Publisher
	disk      *diskStore // bounds fetched content in state_dir; nil: no bound

	charged  atomic.Int64 // CPU ns charged to requests, all modules
	requests atomic.Int64 // requests that reached a child

	bodies *bodyStore // request bodies waiting for a child

	pins    *pinner.Pinner // nil unless pinning ([ipfs] pin) with a node; made by Start
	pinBook *pinner.Book   // when each CID was last served; shared with the next generation
	peers   peerCache      // the node's swarm peers, for the status page
}

// Stats are the manager's running totals.
type Stats struct {
	Requests   int64         // requests run on a child
	ChargedCPU time.Duration // CPU charged to them
	Children   int           // live children
	Idle       int           // idle children
	Spawned    int64         // children started
	Killed     int64         // children killed for a limit or an abort
	Recycled   int64         // children retired after max_requests
	Crashed    int64         // children that died on their own
}

// ChildInfo describes one live child.
type ChildInfo struct {
	Slot     int
	PID      int
	Requests int64         // requests it has served
	CPU      time.Duration // CPU it has used, all requests and idle time
	cpuacct.ProcInfo
}

// Children describes the live children, by slot. A child that exits while
// it is being read is left out.
func (m *Manager) Children() []ChildInfo {
	var out []ChildInfo
	for _, p := range m.pool.live() {
		cpu, err := cpuacct.ProcessCPU(p.pid)
		if err != nil {
			continue
		}
		info, err := cpuacct.Inspect(m.procfs, p.pid)
		if err != nil {
			continue
		}
		out = append(out, ChildInfo{Slot: p.id, PID: p.pid, Requests: p.requests.Load(), CPU: cpu, ProcInfo: info})
	}
	slices.SortFunc(out, func(a, b ChildInfo) int { return a.Slot - b.Slot })
	return out
}

// Stats returns the running totals.
func (m *Manager) Stats() Stats {
	total, idle := m.pool.counts()
	return Stats{
		Requests:   m.requests.Load(),
		ChargedCPU: time.Duration(m.charged.Load()),
		Children:   total,
		Idle:       idle,
		Spawned:    m.pool.stats.spawned.Load(),
		Killed:     m.pool.stats.killed.Load(),
		Recycled:   m.pool.stats.recycled.Load(),
		Crashed:    m.pool.stats.crashed.Load(),
	}
}

// target is what a route leads to.
type target struct {
	route  wagi.Route
	src    *source
	cfg    *config.Module
	entry  string
	limits config.Limits
	pages  uint32
	// slots bounds the children this module may hold at once
	// (max_concurrency); nil when it may use the whole pool. Shared by
	// every route of the same module.
	slots chan struct{}
}

// New checks cfg and prepares the state directory. Start does the rest.
func New(cfg *config.Config, opts Options) (*Manager, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = defaultReadyTimeout
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ChildCommand == nil {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find own executable for children: %w", err)
		}
		opts.ChildCommand = []string{exe, "child"}
	}
	pfs, err := cpuacct.ProcFS()
	if err != nil {
		return nil, err
	}
	if err := closeOnExecInherited(); err != nil {
		return nil, fmt.Errorf("mark inherited descriptors close-on-exec: %w", err)
	}
	if opts.CompileCommand == nil {
		opts.CompileCommand = []string{opts.ChildCommand[0], "compile"}
	}
	st, err := newStore(cfg.StateDir, cfg.IPFS.MaxModuleSize, opts.CompileCommand, opts.Logger)
	if err != nil {
		return nil, err
	}
	ledger, ownLedger := opts.Ledger, false
	if ledger == nil && !opts.NoLedger && !opts.Check {
		ownLedger = true
		ledger, err = cpuacct.OpenLedger(filepath.Join(cfg.StateDir, "cpu-ledger"), cpuacct.LedgerOptions{Logger: opts.Logger, Retain: LedgerRetain, Now: opts.Now})
		if err != nil {
			st.close(context.Background())
			return nil, err
		}
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	m := &Manager{
		cfg:       cfg,
		opts:      opts,
		log:       opts.Logger,
		store:     st,
		ledger:    ledger,
		budgets:   newBudgets(ledger),
		ownLedger: ownLedger,
		procfs:    pfs,
		software:  "wagi-fcgi/" + opts.Version,
		idPrefix:  hex.EncodeToString(rnd[:]),
		slots:     map[string]chan struct{}{},
		dirFetch:  map[string]*loadCall{},
		disk:      openDiskStore(cfg, opts.Logger),
		status:    newStatusBook(),
		bodies:    newBodyStore(filepath.Join(cfg.StateDir, "spool"), cfg.Pool.BodyMemory, cfg.Pool.SpoolSize),
	}
	if usesIPFS(cfg) {
		c, err := ipfs.New(cfg.IPFS.API)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.ipfs = c
	}
	if m.srcEnv, err = modsource.NewEnv(m.ipfs, cfg.OCI); err != nil {
		m.Close()
		return nil, err
	}
	m.srcEnv.IPNSTTL = cfg.IPFS.IPNSTTL
	for i := range cfg.Modules {
		mc := &cfg.Modules[i]
		from, err := modsource.New(mc.Ref, mc.Digest, m.srcEnv)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("%s:%d: %w", cfg.Path, mc.Line, err)
		}
		m.sources = append(m.sources, &source{ref: mc.Ref, from: from, route: mc.Route, pages: mc.Limits.MemoryPages(), limits: mc.Limits, entry: mc.Entrypoint, mounts: mc.Volumes})
	}
	if cfg.IPFS.Gateway != "" {
		m.gateway = newGateway(cfg, m.srcEnv)
	}
	if cfg.Budget.Shared != "" && ledger != nil {
		if err := m.openFleet(); err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

// openFleet prepares the shared budgets of [budget] shared; Start runs
// their sync goroutine and Close stops it.
func (m *Manager) openFleet() error {
	node, err := fleetbudget.NodeID(m.cfg.Budget.NodeID, m.cfg.StateDir)
	if err != nil {
		return fmt.Errorf("[budget]: %w", err)
	}
	f, err := fleetbudget.New(fleetbudget.Options{
		URL: m.cfg.Budget.Shared, Node: node, Sync: m.cfg.Budget.Sync, LocalShare: m.cfg.Budget.LocalShare,
		Totals: m.budgets.totals, Logger: m.log, Now: m.opts.Now,
	})
	if err != nil {
		return fmt.Errorf("[budget]: %w", err)
	}
	m.budgets.fleet = f
	return nil
}

// Start loads and compiles every module, starts the children and resolves
// the modules' _routes. When it returns nil, the children are running and
// every route answers.
func (m *Manager) Start(ctx context.Context) error {
	// A SIGTERM (the end of ctx) kills compiles in flight at once.
	m.store.stopOn(ctx)
	// Who children and compiles run as is settled before anything
	// compiles: compiles run as the last uid of uid_range, which owns the
	// cache; children only read it.
	cred, err := childCredential(m.cfg.Pool)
	if err != nil {
		return err
	}
	if cred != nil {
		if err := m.store.compileAs(int(m.cfg.Pool.UIDRange.Last), int(cred.Gid)); err != nil {
			return err
		}
	} else if m.cfg.Pool.User != "" {
		m.log.Warn("pool.user is ignored: the manager does not run as root", "user", m.cfg.Pool.User)
	}
	if f := m.budgets.fleet; f != nil && !m.fleetStarted {
		// First, so that the first requests decide on the fleet's totals.
		m.fleetStarted = true
		f.Start()
	}
	// Compile every module that is at hand first (local files, and IPFS
	// modules already in the cache), so children start with a warm cache.
	if err := m.prepareSources(ctx); err != nil {
		return err
	}
	pc := &procConfig{
		command:  m.opts.ChildCommand,
		env:      m.opts.ChildEnv,
		cred:     cred,
		uidBase:  m.cfg.Pool.UIDRange.First,
		cacheDir: m.store.cacheDir,
		logger:   m.log,
		ready:    m.opts.ReadyTimeout,
		fast:     m.opts.Fast,
	}
	pc.addressSpace = m.cfg.ChildMemory()
	if pc.env == nil {
		pc.env = []string{}
	}
	if m.ipfs != nil && m.mfs == nil {
		// Children never get the node's address: MFS volumes go through
		// the proxy, call by call, within the roots granted per request.
		if m.mfs, err = mfsproxy.Start(m.ipfs.BaseURL(), m.log); err != nil {
			return err
		}
	}
	if m.ipfs != nil && m.publisher == nil && !m.opts.Check {
		if vols := publishedVolumes(m.cfg); len(vols) > 0 {
			m.publisher = mfspublish.Start(m.ipfs, vols, m.log)
		}
	}
	if m.egress == nil {
		// Children open no network connection: outbound HTTP goes
		// through this proxy, call by call, within each request's grant.
		if m.egress, err = egress.Start(m.log); err != nil {
			return err
		}
	}
	m.pool = newPool(pc, m.cfg.Pool.Children, m.cfg.Pool.MaxRequests, m.cfg.Pool.Queue, m.log)
	m.pool.preload = m.preloadList
	m.pool.fast = m.opts.Fast
	m.pool.charge = func(to chargeTo, d time.Duration) { m.charge(m.log, to, d) }
	if err := m.pool.start(ctx); err != nil {
		m.pool.close()
		return fmt.Errorf("start children: %w", err)
	}
	if err := m.resolveSubRoutes(ctx); err != nil {
		m.pool.close()
		return err
	}
	m.rebuildRoutes()
	if m.opts.Fast != nil {
		m.pool.setFastGen(m.newFastGen(m.opts.Fast))
	}
	m.startPins()
	total, _ := m.pool.counts()
	m.log.Info("manager started", "children", total, "routes", m.routes.Load().Len(), "state_dir", m.cfg.StateDir)
	return nil
}

// Close stops the children and releases the compiler.
func (m *Manager) Close() error {
	m.stopPins()
	if m.pool != nil {
		m.pool.close()
	}
	if m.publisher != nil {
		m.publisher.Close() // after the children: their last writes are published
	}
	if m.mfs != nil {
		_ = m.mfs.Close() // after the children: no grant is in use
	}
	if m.egress != nil {
		_ = m.egress.Close()
	}
	if m.budgets.fleet != nil {
		_ = m.budgets.fleet.Close() // stops and waits for its sync goroutine
	}
	m.store.close(context.Background())
	if m.ledger != nil && m.ownLedger {
		return m.ledger.Close()
	}
	return nil
}

// publishedVolumes lists the MFS volumes of cfg that have publish_ipns,
// each once (config has checked that a directory has one key).
func publishedVolumes(cfg *config.Config) []mfspublish.Volume {
	var out []mfspublish.Volume
	seen := map[string]bool{}
	for _, mc := range cfg.Modules {
		for _, v := range mc.Volumes {
			if v.PublishIPNS != "" && !seen[v.Path] {
				seen[v.Path] = true
				out = append(out, mfspublish.Volume{Path: v.Path, Key: v.PublishIPNS, Every: v.PublishEvery})
			}
		}
	}
	return out
}

// mfsGrant lets the child p make the MFS calls of run's MFS mounts until
// mfsRevoke, and puts the grant's token in run. Runs without MFS mounts get
// none.
func (m *Manager) mfsGrant(p *proc, run *ipc.Run) {
	if roots := mfsproxy.RootsOf(run.Mounts); len(roots) > 0 && m.mfs != nil {
		run.MFSGrant = m.mfs.Grant(run.ID, p.pid, roots)
	}
}

// mfsRevoke ends the grant of run, if it has one.
func (m *Manager) mfsRevoke(run *ipc.Run) {
	if run.MFSGrant != "" && m.mfs != nil {
		m.mfs.Revoke(run.MFSGrant)
	}
}

// egressGrant lets the child p make the outbound HTTP calls module's
// allowed_hosts and limits allow, until egressRevoke or the request's
// wall-clock limit, and puts the proxy and the token in run.
func (m *Manager) egressGrant(p *proc, run *ipc.Run, module string, mc *config.Module, lim config.Limits) {
	if m.egress == nil {
		return
	}
	conc := mc.HTTPMaxConcurrency
	if conc <= 0 {
		conc = egress.DefaultMaxConcurrency
	}
	g := egress.Grant{ID: run.ID, Module: module, PID: p.pid, AllowedHosts: mc.AllowedHosts,
		Limits: egress.Limits{MaxRequests: lim.HTTPMaxRequests, MaxConcurrency: conc, MaxResponse: lim.HTTPMaxResponse, Timeout: lim.HTTPTimeout}}
	if lim.Timeout > 0 {
		// A backstop only: the request's own timeout kills the child
		// (504) and revokes the grant. Cancelling the call at the same
		// instant raced that kill on a loaded machine: the guest saw its
		// call fail first and answered 200.
		g.Deadline = time.Now().Add(lim.Timeout + time.Second)
	}
	run.HTTPProxy, run.HTTPGrant = m.egress.Addr(), m.egress.Grant(g)
}

// egressRevoke ends the outbound HTTP grant of run, cancelling its calls
// in flight.
func (m *Manager) egressRevoke(run *ipc.Run) {
	if run.HTTPGrant != "" && m.egress != nil {
		m.egress.Revoke(run.HTTPGrant)
	}
}

// enter admits a request unless the manager is draining; leave ends it.
func (m *Manager) enter() bool {
	m.drainMu.Lock()
	defer m.drainMu.Unlock()
	if m.draining {
		return false
	}
	m.inflight.Add(1)
	return true
}

func (m *Manager) leave() { m.inflight.Done() }

// Drain stops taking requests and waits until those in flight are done, or
// ctx ends.
func (m *Manager) Drain(ctx context.Context) error {
	m.drainMu.Lock()
	m.draining = true
	m.drainMu.Unlock()
	if m.pool != nil {
		m.pool.retireFast()
	}
	done := make(chan struct{})
	go func() { m.inflight.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Routes lists the route patterns in match order, sub-routes included.
func (m *Manager) Routes() []string {
	t := m.routes.Load()
	if t == nil {
		return nil
	}
	var out []string
	for r := range t.All() {
		out = append(out, r.Pattern)
	}
	return out
}

// ChildPIDs returns the pids of the live children.
func (m *Manager) ChildPIDs() []int { return m.pool.pids() }

// newID returns a request id: a per-manager random prefix and a counter,
// unique across restarts in practice and cheap to make.
func (m *Manager) newID() string {
	n := m.idSeq.Add(1)
	return m.idPrefix + "-" + strconv.FormatUint(n, 36)
}

// maxPreload bounds the modules a fresh child compiles before its first
// request; the rest compile on first use.
const maxPreload = 16

// preloadList is the modules loaded so far, in config order.
func (m *Manager) preloadList() []ipc.Module {
	var out []ipc.Module
	seen := map[string]bool{}
	for _, src := range m.sources {
		mod, _ := src.loaded()
		key := ""
		if mod != nil {
			key = fmt.Sprint(mod.key, "/", src.pages)
		}
		if mod == nil || seen[key] {
			continue
		}
		seen[key] = true
		out = append(out, ipc.Module{Key: mod.key, Path: mod.binary(), MemoryPages: src.pages})
		if len(out) == maxPreload {
			break
		}
	}
	return out
}

// newTarget builds the route target for a configured module.
func newTarget(r wagi.Route, src *source, mc *config.Module, entry string) *target {
	return &target{route: r, src: src, cfg: mc, entry: entry, limits: mc.Limits, pages: mc.Limits.MemoryPages()}
}

// rebuildRoutes makes the routing table from the configured modules in
// order: a module's _routes sub-routes come before its own route, the last
// printed line first. It runs at Start and again whenever a module loaded
// on demand (from IPFS) brings sub-routes.
func (m *Manager) rebuildRoutes() {
	m.routesMu.Lock()
	defer m.routesMu.Unlock()
	table := &wagi.Table[*target]{}
	for i := range m.cfg.Modules {
		mc := &m.cfg.Modules[i]
		src := m.sources[i]
		parent, err := wagi.ParseRoute(mc.Route)
		if err != nil {
			continue // config validation rejects these
		}
		mod, subs := src.loaded()
		for j := len(subs) - 1; j >= 0; j-- {
			sr, err := parent.Join(subs[j].Pattern)
			if err != nil {
				continue // checked when the module was loaded
			}
			table.Add(sr, newTarget(sr, src, mc, subs[j].Export))
		}
		entry := mc.Entrypoint
		if entry == "" {
			entry = "_start"
		}
		table.Add(parent, newTarget(parent, src, mc, entry))
		_ = mod
	}
	m.assignSlotsLocked(table)
	m.routes.Store(table)
}

// assignSlotsLocked gives each module with a max_concurrency below the pool
// size one semaphore, shared by all its routes. The module's identity is its
// source (one config entry, or its content once loaded), so the same code
// under two routes is one module; the smallest limit among its routes
// applies. Semaphores outlive table rebuilds. Callers hold routesMu.
func (m *Manager) assignSlotsLocked(table *wagi.Table[*target]) {
	limit := map[string]int{}
	for _, t := range table.All() {
		n := t.limits.MaxConcurrency
		if n <= 0 || n >= m.cfg.Pool.Children {
			continue
		}
		key := t.src.identity()
		if cur, ok := limit[key]; !ok || n < cur {
			limit[key] = n
		}
	}
	for key, n := range limit {
		if _, ok := m.slots[key]; !ok {
			m.slots[key] = make(chan struct{}, n)
		}
	}
	for _, t := range table.All() {
		t.slots = m.slots[t.src.identity()]
	}
}

// moduleRoutes runs a module's _routes export in a child and checks what it
// printed. Its CPU is the module's, like a request's: charged to its daily
// budgets (and refused once they are spent), or a module could spin in
// _routes on every load attempt for free.
func (m *Manager) moduleRoutes(ctx context.Context, mod *module, src *source) ([]wagi.SubRoute, error) {
	pages, lim, route := src.pages, src.limits, src.route
	now := m.opts.Now()
	owner := m.chargeTo(mod.key, lim, src.gateway, now)
	if a, spent := m.budgets.exhausted(owner); spent {
		return nil, &budgetError{a: a, now: now}
	}
	p, err := m.pool.acquire(ctx, m.opts.ReadyTimeout)
	if err != nil {
		return nil, err
	}
	run := &ipc.Run{
		ID:          "routes",
		ModuleKey:   mod.key,
		ModulePath:  mod.binary(),
		MemoryPages: pages,
		Entrypoint:  "_routes",
		StderrCap:   stderrCap,
	}
	out := &captureWriter{limit: 1 << 20}
	log := m.log.With("module", mod.ref)
	claim := m.budgets.open(owner)
	res := execute(ctx, log, p, run, lim, out, owner, claim)
	if res.reusable {
		m.pool.release(p)
	}
	m.settle(log, claim, res.cpu)
	m.charge(log, res.idleOwner, res.idle)
	if res.killed == killBudget {
		return nil, &budgetError{a: res.budget, now: now}
	}
	if res.err != nil {
		return nil, fmt.Errorf("_routes: %w", res.err)
	}
	subs, err := wagi.ParseRoutesOutput(out.buf)
	if err != nil {
		return nil, fmt.Errorf("_routes: %w", err)
	}
	parent, err := wagi.ParseRoute(route)
	if err != nil {
		return nil, err
	}
	for _, sr := range subs {
		if _, err := parent.Join(sr.Pattern); err != nil {
			return nil, fmt.Errorf("_routes: %w", err)
		}
		if !mod.exports[sr.Export] {
			return nil, fmt.Errorf("_routes names %q, which is not an exported function", sr.Export)
		}
	}
	return subs, nil
}

// childCredential resolves who children run as. Children switch users only
// when the manager runs as root; otherwise pool.user cannot be honoured and
// is ignored with a notice, as php-fpm does. As root, children never run as
// root: pool.user defaults to config.DefaultUser, which must exist, and
// every slot gets its own real uid from pool.uid_range (see
// sandbox.IDs). The credential is the shared user and its group.
func childCredential(pool config.Pool) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	name := pool.User
	if name == "" {
		name = config.DefaultUser
	}
	uid, gid, err := lookupUser(name)
	if err != nil && pool.User == "" {
		return nil, fmt.Errorf("the manager runs as root, so its children run as the %q system user, which does not exist (%v): "+
			"create it with conf/systemd/wagi-fcgi.sysusers (install as /etc/sysusers.d/wagi-fcgi.conf, run systemd-sysusers) "+
			"or `useradd --system --no-create-home --shell /usr/sbin/nologin %s`, or set [pool] user", name, err, name)
	}
	if err != nil {
		return nil, fmt.Errorf("pool.user %q: %w", name, err)
	}
	if uid == 0 || gid == 0 {
		return nil, fmt.Errorf("pool.user %q has uid %d, gid %d: children never run as root or in group root", name, uid, gid)
	}
	if err := checkUIDRange(pool.UIDRange, pool.Children, uid); err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}, nil
}
