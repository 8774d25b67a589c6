package manager

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/internal/modsource"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// source is where a configured module comes from, and what was loaded from
// it. Local files are loaded at Start. Remote modules (IPFS, IPNS, OCI,
// URL) are loaded from the local cache at Start when they are there, or
// else on their first request: concurrent first requests share one fetch.
// Where the bytes come from is from's business (see modsource); what is
// done with them is the manager's.
type source struct {
	ref    config.ModuleRef
	from   modsource.Source
	route  string // the configured route, for _routes
	pages  uint32
	limits config.Limits
	entry  string
	mounts []config.Volume
	// gateway: a gateway CID, which also pays from the gateway's budget.
	gateway bool

	mu       sync.Mutex
	mod      *module
	subs     []wagi.SubRoute
	resolved time.Time // when a mutable reference was last resolved
	cid      string    // an IPNS name's last resolution, "/ipfs/CID", for the pinner
	loading  *loadCall
}

type loadCall struct {
	done chan struct{}
	err  error
}

// loaded returns the current module (nil before the first load) and its
// sub-routes.
func (s *source) loaded() (*module, []wagi.SubRoute) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mod, s.subs
}

// identity names the module for per-module limits before and after it is
// loaded: its content hash once known, else its reference.
func (s *source) identity() string {
	if mod, _ := s.loaded(); mod != nil {
		return mod.key
	}
	return s.ref.Raw
}

// errInvalidModule wraps every way fetched bytes can fail to be a module
// wagi-fcgi can run: neither wasm nor convertible text, does not compile,
// imports what is not provided, bad _routes (a missing entrypoint is not:
// only its route fails, with 500).
var errInvalidModule = errors.New("invalid module")

func usesIPFS(cfg *config.Config) bool {
	if cfg.IPFS.Gateway != "" {
		return true
	}
	for _, mc := range cfg.Modules {
		if modsource.NeedsIPFS(mc.Ref) {
			return true
		}
		for _, v := range mc.Volumes {
			if v.Kind != config.VolumeLocal {
				return true
			}
		}
	}
	return false
}

// prepareSources compiles every module that needs no network: local files
// (an error fails Start) and IPFS modules found in the cache.
func (m *Manager) prepareSources(ctx context.Context) error {
	var errs []error
	for i, src := range m.sources {
		mc := &m.cfg.Modules[i]
		var mod *module
		var err error
		if !src.from.Remote() {
			var bin []byte
			if bin, err = src.from.Fetch(ctx, src.from.Name(), m.store.maxSize); err != nil {
				err = fmt.Errorf("load %s: %w", mc.Module, err)
			} else {
				mod, err = m.store.add(ctx, mc.Module, bin, src.pages, src.limits, m.compileCharge(src))
			}
		} else {
			mod, err = m.store.cachedRef(ctx, src.from.Name(), mc.Module, src.pages, src.limits, m.compileCharge(src))
			if err == nil && mod == nil {
				m.log.Info("module will be fetched on its first request", "module", mc.Module)
				continue
			}
			if bad := (*badModuleError)(nil); errors.As(err, &bad) {
				// As when it was first fetched: its route answers 502,
				// the others serve (`check` still reports it).
				m.log.Warn("module is remembered as bad; its route answers 502", "module", mc.Module, "err", err)
				continue
			}
		}
		if err == nil && checkModule(mod, src) != nil {
			// Only its route fails (500; see entrypoint.go).
			m.log.Warn("entrypoint not exported; its route answers 500", "module", mc.Module, "err", checkModule(mod, src))
		}
		if err == nil {
			err = m.checkVolumes(mc)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %w", m.cfg.Path, mc.Line, err))
			continue
		}
		src.mod, src.resolved = mod, time.Now()
		m.disk.useModule(mod, true)
	}
	return errors.Join(errs...)
}

// LoadAll loads every module that is not loaded yet, fetching remote modules
// (for `wagi-fcgi check`, which must prove that every module can be had).
func (m *Manager) LoadAll(ctx context.Context) error {
	var errs []error
	for i, src := range m.sources {
		if _, err := m.module(ctx, src); err != nil {
			mc := &m.cfg.Modules[i]
			errs = append(errs, fmt.Errorf("%s:%d: %w", m.cfg.Path, mc.Line, err))
		}
	}
	return errors.Join(errs...)
}

// resolveSubRoutes runs _routes of every module loaded so far.
func (m *Manager) resolveSubRoutes(ctx context.Context) error {
	var errs []error
	for i, src := range m.sources {
		mc := &m.cfg.Modules[i]
		if src.mod == nil || !src.mod.exports["_routes"] {
			continue
		}
		subs, err := m.moduleRoutes(ctx, src.mod, src)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: load %s: %w", m.cfg.Path, mc.Line, mc.Module, err))
			continue
		}
		src.subs = subs
	}
	return errors.Join(errs...)
}

func checkModule(mod *module, src *source) error {
	entry := src.entry
	if entry == "" {
		entry = "_start"
	}
	if !mod.exports[entry] {
		return fmt.Errorf("load %s: %w: entrypoint %q is not an exported function", mod.ref, errInvalidModule, entry)
	}
	return nil
}

// checkVolumes checks what can be checked of a module's volumes without the
// network.
func (m *Manager) checkVolumes(mc *config.Module) error {
	for _, v := range mc.Volumes {
		if v.Kind != config.VolumeLocal {
			continue
		}
		if err := checkDir(v.Path); err != nil {
			return fmt.Errorf("volume %s: %w", v.Guest, err)
		}
	}
	return nil
}

// module returns src's module, loading it if needed, and records its use
// in the bounded module store (which pins the modules the config names).
func (m *Manager) module(ctx context.Context, src *source) (*module, error) {
	mod, err := m.loadModule(ctx, src)
	if err == nil && src.from.Remote() {
		m.disk.useModule(mod, slices.Contains(m.sources, src))
	}
	return mod, err
}

// loadModule returns src's module, loading it if needed (again, when the
// module store evicted it). Concurrent callers share one load; a failed
// load is not remembered, so the next request tries again (the node may
// be back).
func (m *Manager) loadModule(ctx context.Context, src *source) (*module, error) {
	for {
		src.mu.Lock()
		ttl := src.from.TTL()
		stale := ttl > 0 && time.Since(src.resolved) > ttl
		evicted := src.mod != nil && src.from.Remote() && !m.disk.has(src.mod.key)
		if evicted && src.loading == nil {
			src.mod = nil // fetched again below; nothing stale to fall back on
		}
		if src.mod != nil && !stale && !evicted {
			mod := src.mod
			src.mu.Unlock()
			return mod, nil
		}
		if c := src.loading; c != nil {
			old := src.mod
			src.mu.Unlock()
			if old != nil && !evicted {
				// A refresh: wait for it only briefly (see staleWait).
				if !waitRefresh(ctx, c) {
					return old, nil
				}
				continue
			}
			select {
			case <-c.done:
				if c.err != nil {
					if mod, _ := src.loaded(); mod != nil {
						return mod, nil // a refresh failed: keep the old one
					}
					return nil, c.err
				}
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		c := &loadCall{done: make(chan struct{})}
		src.loading = c
		old := src.mod
		src.mu.Unlock()

		if old != nil {
			// A refresh of a module that serves: run on its own, so a
			// registry or node that stalls holds no request longer than
			// staleWait (then the old module answers).
			go m.runLoad(ctx, src, c, old)
			if !waitRefresh(ctx, c) {
				return old, nil
			}
			continue
		}
		mod, err := m.runLoad(ctx, src, c, nil)
		if err != nil {
			return nil, err
		}
		return mod, nil
	}
}

// staleWait is how long a request waits for the refresh of a module that
// already serves (a mutable reference past its TTL) before the module it
// has answers it. Long enough that a registry or node that answers moves
// the request to the new module at once; short enough that one that
// stalls until fetch_timeout does not stall the route with it, every TTL.
const staleWait = 2 * time.Second

// waitRefresh waits for the refresh c, at most staleWait: true when it
// finished (the caller looks at the source again), false when the old
// module should answer.
func waitRefresh(ctx context.Context, c *loadCall) bool {
	t := time.NewTimer(staleWait)
	defer t.Stop()
	select {
	case <-c.done:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// runLoad runs the load c of src (whose module so far is old, or nil) and
// publishes its outcome.
func (m *Manager) runLoad(ctx context.Context, src *source, c *loadCall, old *module) (*module, error) {
	// One client leaving must not fail the load the others wait for.
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.IPFS.FetchTimeout)
	mod, subs, err := m.loadSource(lctx, src)
	cancel()

	src.mu.Lock()
	src.loading = nil
	if err == nil {
		src.mod, src.subs, src.resolved = mod, subs, time.Now()
	} else if old != nil {
		m.log.Warn("refreshing a module failed; serving the one loaded before", "module", src.ref.Raw, "err", err)
		src.resolved = time.Now() // try again after another TTL
	}
	c.err = err
	src.mu.Unlock()
	close(c.done)
	if err != nil {
		if old != nil {
			return old, nil
		}
		return nil, err
	}
	if old == nil || old.key != mod.key {
		if old != nil && slices.Contains(m.sources, src) {
			m.disk.unpin(old.key) // the configured name (IPNS, OCI tag) moved on
		}
		m.rebuildRoutes()
	}
	return mod, nil
}

// loadSource fetches (or finds in the cache), validates and compiles a
// remote module, and runs its _routes. A mutable reference is resolved to
// its current content first; when it cannot be, the module cached under
// its name serves.
func (m *Manager) loadSource(ctx context.Context, src *source) (*module, []wagi.SubRoute, error) {
	name := src.from.Name()
	id, err := src.from.Resolve(ctx)
	if err != nil {
		// The node or registry is down or the name does not resolve:
		// a module loaded under this name before still serves.
		if mod, cerr := m.store.cachedRef(ctx, name, src.ref.Raw, src.pages, src.limits, m.compileCharge(src)); cerr == nil && mod != nil {
			m.log.Warn("module reference not resolved; using the module cached for it", "module", src.ref.Raw, "err", err)
			return m.finishLoad(ctx, src, mod)
		}
		return nil, nil, fmt.Errorf("load %s: resolve: %w", src.ref.Raw, err)
	}
	mod, err := m.store.cachedRef(ctx, id, src.ref.Raw, src.pages, src.limits, m.compileCharge(src))
	if err != nil {
		return nil, nil, err
	}
	if mod == nil {
		start := time.Now()
		bin, err := src.from.Fetch(ctx, id, m.cfg.IPFS.MaxModuleSize)
		if err != nil {
			if errors.Is(err, modsource.ErrDigestMismatch) {
				m.log.Error("module refused: its bytes do not match its digest; nothing was stored", "module", src.ref.Raw, "err", err)
			}
			return nil, nil, fmt.Errorf("load %s: %w", src.ref.Raw, err)
		}
		mod, err = m.store.add(ctx, src.ref.Raw, bin, src.pages, src.limits, m.compileCharge(src))
		var bad *badModuleError
		if errors.As(err, &bad) && bad.key != "" {
			// Remembered as bad by content: the next request learns it
			// from the index and the mark, without fetching again.
			if rerr := m.store.remember(id, bad.key); rerr != nil {
				m.log.Warn("module cache index", "module", src.ref.Raw, "err", rerr)
			}
		}
		if err != nil {
			m.disk.useRejected(bin) // its bytes may be on disk all the same
			return nil, nil, err
		}
		m.fetches.Add(1)
		m.log.Info("module fetched from "+src.from.Kind(), "module", src.ref.Raw, "path", id, "bytes", len(bin), "key", mod.key[:12],
			"took", time.Since(start).Round(time.Microsecond))
		if err := m.store.remember(id, mod.key); err != nil {
			m.log.Warn("module cache index", "module", src.ref.Raw, "err", err)
		}
	}
	if id != name {
		if err := m.store.remember(name, mod.key); err != nil {
			m.log.Warn("module cache index", "module", src.ref.Raw, "err", err)
		}
	}
	if src.ref.Kind == config.RefIPNS {
		// What the name's module now is: the CID its requests serve,
		// for the pinner.
		src.mu.Lock()
		src.cid = id
		src.mu.Unlock()
	}
	return m.finishLoad(ctx, src, mod)
}

// compileCharge charges the CPU of a compile of src's module to that
// module's daily budget (it is the module's doing, whether the compile
// succeeds or not), and lists the module on the status page even if it
// never runs.
func (m *Manager) compileCharge(src *source) chargeFunc {
	return func(key string, cpu time.Duration) {
		m.charge(m.log.With("module", src.ref.Raw), m.chargeTo(key, src.limits, src.gateway, m.opts.Now()), cpu)
		m.status.compiled(key, src.ref.Raw, src.route, src.limits.DailyCPU)
	}
}

func (m *Manager) finishLoad(ctx context.Context, src *source, mod *module) (*module, []wagi.SubRoute, error) {
	var subs []wagi.SubRoute
	if mod.exports["_routes"] {
		var err error
		subs, err = m.moduleRoutes(ctx, mod, src)
		var be *budgetError
		if errors.As(err, &be) {
			return nil, nil, err
		}
		if err != nil {
			return nil, nil, fmt.Errorf("load %s: %w: %v", src.ref.Raw, errInvalidModule, err)
		}
	}
	return mod, subs, nil
}

// loadFailure is the answer to a request whose module could not be loaded.
// classify, when not nil, classifies the errors of where the bytes come
// from: the module's source.Classify, or modsource.IPFSFailure for volumes.
func loadFailure(err error, classify func(error, bool) (modsource.Failure, string, bool), gateway bool) failure {
	var be *budgetError
	if errors.As(err, &be) {
		return budgetFailure(be.a, be.now)
	}
	if classify != nil {
		if f, msg, ok := classify(err, gateway); ok {
			if kind, ok := sourceFailures[f]; ok {
				return failWith(kind, msg)
			}
		}
	}
	switch {
	case errors.Is(err, errInvalidModule):
		return fail(unusableModule)
	case errors.Is(err, errCompileStopped):
		return fail(restarting)
	}
	return fail(loadFailed)
}

// mounts turns a module's volumes into what a child mounts: local
// directories as they are, IPFS directories fetched into the state
// directory (once, on first use), MFS directories by node and path.
func (m *Manager) mounts(ctx context.Context, vols []config.Volume) ([]ipc.Mount, error) {
	if len(vols) == 0 {
		return nil, nil
	}
	out := make([]ipc.Mount, 0, len(vols))
	for _, v := range vols {
		switch v.Kind {
		case config.VolumeLocal:
			out = append(out, ipc.Mount{Guest: v.Guest, Host: v.Path, ReadOnly: v.ReadOnly,
				QuotaBytes: uint64(v.QuotaBytes), QuotaFiles: uint64(v.QuotaFiles)})
		case config.VolumeIPFS:
			dir, err := m.ipfsDir(ctx, v.Path)
			if err != nil {
				return nil, fmt.Errorf("volume %s = %q: %w", v.Guest, v.Source, err)
			}
			out = append(out, ipc.Mount{Guest: v.Guest, Host: dir, ReadOnly: true})
		case config.VolumeIPNS:
			dir, err := m.ipnsDir(ctx, v.Path)
			if err != nil {
				return nil, fmt.Errorf("volume %s = %q: %w", v.Guest, v.Source, err)
			}
			out = append(out, ipc.Mount{Guest: v.Guest, Host: dir, ReadOnly: true})
		case config.VolumeMFS:
			if m.mfs == nil {
				return nil, fmt.Errorf("volume %s: %w", v.Guest, ipfs.ErrUnavailable)
			}
			// The proxy, never the node itself: see mfsproxy.
			out = append(out, ipc.Mount{Guest: v.Guest, Kind: ipc.MountMFS, Host: m.mfs.Addr(), MFSPath: v.Path,
				QuotaBytes: uint64(v.QuotaBytes), QuotaFiles: uint64(v.QuotaFiles)})
		}
	}
	return out, nil
}

// ipfsDirPath is where the local copy of the UnixFS directory at cidPath
// ("CID[/sub]") lives: it is immutable, so its name is its path.
func ipfsDirPath(stateDir, cidPath string) string {
	return filepath.Join(stateDir, "ipfs-dirs", strings.ReplaceAll(cidPath, "/", "_"))
}

// ipfsDir returns the local copy of an immutable UnixFS directory, fetching
// it on first use. Concurrent first uses share one fetch.
func (m *Manager) ipfsDir(ctx context.Context, cidPath string) (string, error) {
	dir := ipfsDirPath(m.cfg.StateDir, cidPath)
	if checkDir(dir) == nil {
		m.disk.useDir(dir)
		return dir, nil
	}
	if m.ipfs == nil {
		return "", ipfs.ErrUnavailable
	}
	m.dirMu.Lock()
	c, ok := m.dirFetch[dir]
	if !ok {
		c = &loadCall{done: make(chan struct{})}
		m.dirFetch[dir] = c
		go func() {
			lctx, cancel := context.WithTimeout(context.Background(), m.cfg.IPFS.FetchTimeout)
			defer cancel()
			lim := ipfs.DirLimits{MaxBytes: m.cfg.IPFS.MaxDirSize, MaxFiles: m.cfg.IPFS.MaxDirFiles}
			c.err = m.ipfs.GetDir(lctx, "/ipfs/"+cidPath, dir, lim)
			if errors.Is(c.err, ipfs.ErrDirTooLarge) {
				m.log.Warn("IPFS directory refused: over its cap; nothing of it was kept", "cid", cidPath,
					"max_dir_size", lim.MaxBytes, "max_dir_files", lim.MaxFiles, "err", c.err)
			}
			m.dirMu.Lock()
			delete(m.dirFetch, dir)
			m.dirMu.Unlock()
			close(c.done)
		}()
	}
	m.dirMu.Unlock()
	select {
	case <-c.done:
		if c.err != nil {
			return "", c.err
		}
		m.disk.useDir(dir)
		return dir, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}
