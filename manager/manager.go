// Package manager is the heart of wagi-fcgi: it routes FastCGI requests to
// modules, keeps the pool of pre-started children, hands each request to a
// child, watches the child's wall clock and CPU clock, kills it with SIGKILL
// on any limit and answers the client itself when the child cannot.
//
// The manager never runs guest code. It validates and compiles modules (the
// native code lands in a wazero file cache that children share), and asks a
// child to run anything a module exports, including its _routes.
//
// RATIONALE.md beside this file explains the choices: a child process per
// request slot, SIGKILL, buffering before commit.
package manager

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/procfs"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/cpuacct"
	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
)

const defaultReadyTimeout = 10 * time.Second

// Options are the parts of a Manager that do not come from the config file.
type Options struct {
	// Logger receives one line per request and per child event. nil means
	// slog.Default().
	Logger *slog.Logger
	// ChildCommand is the argv that starts a child; "--cache DIR" is
	// appended. nil means this executable with the argument "child".
	ChildCommand []string
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
}

// Manager serves FastCGI requests with modules run in child processes. It
// implements fcgi.Handler.
type Manager struct {
	cfg      *config.Config
	opts     Options
	log      *slog.Logger
	store    *store
	pool     *pool
	ledger   *cpuacct.Ledger // nil with Options.NoLedger
	procfs   procfs.FS
	routes   atomic.Pointer[wagi.Table[*target]]
	software string

	idPrefix string
	idSeq    atomic.Uint64

	charged  atomic.Int64 // CPU ns charged to requests, all modules
	requests atomic.Int64 // requests that reached a child
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
	mod    *module
	cfg    *config.Module
	entry  string
	mounts []ipc.Mount
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
	st, err := newStore(cfg.StateDir, cfg.IPFS.MaxModuleSize)
	if err != nil {
		return nil, err
	}
	var ledger *cpuacct.Ledger
	if !opts.NoLedger {
		ledger, err = cpuacct.OpenLedger(filepath.Join(cfg.StateDir, "cpu-ledger"), cpuacct.LedgerOptions{Logger: opts.Logger})
		if err != nil {
			st.close(context.Background())
			return nil, err
		}
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	m := &Manager{
		cfg:      cfg,
		opts:     opts,
		log:      opts.Logger,
		store:    st,
		ledger:   ledger,
		procfs:   pfs,
		software: "wagi-fcgi/" + opts.Version,
		idPrefix: hex.EncodeToString(rnd[:]),
	}
	return m, nil
}

// Start loads and compiles every module, starts the children and resolves
// the modules' _routes. When it returns nil, the children are running and
// every route answers.
func (m *Manager) Start(ctx context.Context) error {
	mods, err := m.loadModules(ctx)
	if err != nil {
		return err
	}
	cred, err := childCredential(m.cfg.Pool.User)
	if err != nil {
		return err
	}
	if cred != nil {
		if err := m.store.shareWith(int(cred.Uid), int(cred.Gid)); err != nil {
			return err
		}
	} else if m.cfg.Pool.User != "" {
		m.log.Warn("pool.user is ignored: the manager does not run as root", "user", m.cfg.Pool.User)
	}
	pc := &procConfig{
		command:  m.opts.ChildCommand,
		env:      m.opts.ChildEnv,
		cred:     cred,
		cacheDir: m.store.cacheDir,
		logger:   m.log,
		ready:    m.opts.ReadyTimeout,
	}
	if pc.env == nil {
		pc.env = []string{}
	}
	m.pool = newPool(pc, m.cfg.Pool.Children, m.cfg.Pool.MaxRequests, m.cfg.Pool.Queue, m.log)
	if err := m.pool.start(ctx); err != nil {
		m.pool.close()
		return fmt.Errorf("start children: %w", err)
	}
	table, err := m.buildRoutes(ctx, mods)
	if err != nil {
		m.pool.close()
		return err
	}
	m.assignSlots(table)
	m.routes.Store(table)
	total, _ := m.pool.counts()
	m.log.Info("manager started", "children", total, "routes", table.Len(), "state_dir", m.cfg.StateDir)
	return nil
}

// Close stops the children and releases the compiler.
func (m *Manager) Close() error {
	if m.pool != nil {
		m.pool.close()
	}
	m.store.close(context.Background())
	if m.ledger != nil {
		return m.ledger.Close()
	}
	return nil
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

// loadModules validates and compiles every configured module.
func (m *Manager) loadModules(ctx context.Context) ([]*module, error) {
	mods := make([]*module, len(m.cfg.Modules))
	var errs []error
	for i := range m.cfg.Modules {
		mc := &m.cfg.Modules[i]
		mod, err := m.loadModule(ctx, mc)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %w", m.cfg.Path, mc.Line, err))
			continue
		}
		mods[i] = mod
	}
	return mods, errors.Join(errs...)
}

func (m *Manager) loadModule(ctx context.Context, mc *config.Module) (*module, error) {
	ref, err := config.ParseModuleRef(mc.Module, "")
	if err != nil {
		return nil, err
	}
	if ref.Kind != config.RefFile {
		return nil, fmt.Errorf("load %s: IPFS module sources are not available in this build", mc.Module)
	}
	mod, err := m.store.loadFile(ctx, mc.Module, ref.Path, mc.Limits.MemoryPages())
	if err != nil {
		return nil, err
	}
	entry := mc.Entrypoint
	if entry == "" {
		entry = "_start"
	}
	if !mod.exports[entry] {
		return nil, fmt.Errorf("load %s: entrypoint %q is not an exported function", mc.Module, entry)
	}
	for _, v := range mc.Volumes {
		if v.Kind != config.VolumeLocal {
			return nil, fmt.Errorf("volume %s = %q: IPFS and MFS volumes are not available in this build", v.Guest, v.Source)
		}
		st, err := os.Stat(v.Path)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Guest, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("volume %s: %s is not a directory", v.Guest, v.Path)
		}
	}
	return mod, nil
}

// newTarget builds the route target for a configured module.
func newTarget(r wagi.Route, mod *module, mc *config.Module, entry string) *target {
	t := &target{route: r, mod: mod, cfg: mc, entry: entry, limits: mc.Limits, pages: mc.Limits.MemoryPages()}
	for _, v := range mc.Volumes {
		t.mounts = append(t.mounts, ipc.Mount{Guest: v.Guest, Host: v.Path, ReadOnly: v.ReadOnly})
	}
	return t
}

// buildRoutes makes the routing table. A module that exports _routes is run
// once (in a child) and its sub-routes come before its own route, the last
// printed line first.
func (m *Manager) buildRoutes(ctx context.Context, mods []*module) (*wagi.Table[*target], error) {
	table := &wagi.Table[*target]{}
	var errs []error
	for i := range m.cfg.Modules {
		mc := &m.cfg.Modules[i]
		mod := mods[i]
		parent, err := wagi.ParseRoute(mc.Route)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %w", m.cfg.Path, mc.Line, err))
			continue
		}
		if mod.exports["_routes"] {
			subs, err := m.moduleRoutes(ctx, mod, mc)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s:%d: load %s: _routes: %w", m.cfg.Path, mc.Line, mc.Module, err))
				continue
			}
			for j := len(subs) - 1; j >= 0; j-- {
				sr, err := parent.Join(subs[j].Pattern)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s:%d: load %s: _routes: %w", m.cfg.Path, mc.Line, mc.Module, err))
					continue
				}
				if !mod.exports[subs[j].Export] {
					errs = append(errs, fmt.Errorf("%s:%d: load %s: _routes names %q, which is not an exported function", m.cfg.Path, mc.Line, mc.Module, subs[j].Export))
					continue
				}
				table.Add(sr, newTarget(sr, mod, mc, subs[j].Export))
			}
		}
		entry := mc.Entrypoint
		if entry == "" {
			entry = "_start"
		}
		table.Add(parent, newTarget(parent, mod, mc, entry))
	}
	return table, errors.Join(errs...)
}

// assignSlots gives each module with a max_concurrency below the pool size
// one semaphore, shared by all its routes. The module's identity is its
// content, so the same code under two routes is one module; the smallest
// limit among its routes applies.
func (m *Manager) assignSlots(table *wagi.Table[*target]) {
	limit := map[string]int{}
	for _, t := range table.All() {
		n := t.limits.MaxConcurrency
		if n <= 0 || n >= m.cfg.Pool.Children {
			continue
		}
		if cur, ok := limit[t.mod.key]; !ok || n < cur {
			limit[t.mod.key] = n
		}
	}
	slots := map[string]chan struct{}{}
	for key, n := range limit {
		slots[key] = make(chan struct{}, n)
	}
	for _, t := range table.All() {
		t.slots = slots[t.mod.key]
	}
}

// moduleRoutes runs a module's _routes export in a child.
func (m *Manager) moduleRoutes(ctx context.Context, mod *module, mc *config.Module) ([]wagi.SubRoute, error) {
	p, err := m.pool.acquire(ctx, m.opts.ReadyTimeout)
	if err != nil {
		return nil, err
	}
	run := &ipc.Run{
		ID:          "routes",
		ModuleKey:   mod.key,
		ModulePath:  mod.path,
		MemoryPages: mc.Limits.MemoryPages(),
		Entrypoint:  "_routes",
		StderrCap:   stderrCap,
	}
	out := &captureWriter{limit: 1 << 20}
	res := execute(ctx, m.log.With("module", mc.Module), p, run, mc.Limits, out, chargeTo{})
	if res.reusable {
		m.pool.release(p)
	}
	if res.err != nil {
		return nil, res.err
	}
	return wagi.ParseRoutesOutput(out.buf)
}

// childCredential resolves pool.user. Children switch to it only when the
// manager runs as root; otherwise the setting cannot be honoured and is
// ignored with a notice, as php-fpm does.
func childCredential(user string) (*syscall.Credential, error) {
	if user == "" || os.Geteuid() != 0 {
		return nil, nil
	}
	uid, gid, err := lookupUser(user)
	if err != nil {
		return nil, fmt.Errorf("pool.user %q: %w", user, err)
	}
	return &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}, nil
}
