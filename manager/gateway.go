package manager

import (
	"strings"
	"sync"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/internal/modsource"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
)

// maxGatewayModules bounds the CIDs the open-edge gateway keeps targets
// for; beyond it, an arbitrary one is forgotten (its module stays in the
// cache on disk, so it comes back without a fetch).
const maxGatewayModules = 4096

// gateway serves any allowed CID at <prefix><cid>/... ("open edge" mode):
// the CID runs as a /... route with the default limits (every [limits] key,
// max_concurrency included), and its daily budget is its own, like any
// module's, inside the gateway's budget that all its CIDs share
// ([ipfs] gateway_daily_cpu).
type gateway struct {
	prefix   string
	allowAll bool
	allow    map[string]bool
	limits   config.Limits
	children int // pool size: max_concurrency at or above it is no limit
	env      *modsource.Env

	mu      sync.Mutex
	targets map[string]*target
}

func newGateway(cfg *config.Config, env *modsource.Env) *gateway {
	g := &gateway{prefix: cfg.IPFS.Gateway, allow: map[string]bool{}, limits: cfg.Limits, children: cfg.Pool.Children, env: env, targets: map[string]*target{}}
	for _, c := range cfg.IPFS.Allow {
		if c == "*" {
			g.allowAll = true
		}
		g.allow[c] = true
	}
	return g
}

// lookup returns the target for a gateway path, or why it is refused: a
// path that names no CID, or a CID that is not allowed.
func (g *gateway) lookup(rawPath string) (*target, failure) {
	rest := strings.TrimPrefix(rawPath, g.prefix)
	cid, _, _ := strings.Cut(rest, "/")
	ref, err := config.ParseModuleRef("ipfs://"+cid, "")
	if cid == "" || err != nil {
		return nil, fail(noCIDInPath)
	}
	if !g.allowAll && !g.allow[cid] {
		return nil, fail(cidNotAllowed)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if t, ok := g.targets[cid]; ok {
		return t, failure{}
	}
	route, err := wagi.ParseRoute(strings.TrimSuffix(g.prefix, "/") + "/" + cid + "/...")
	if err != nil {
		return nil, fail(noCIDInPath)
	}
	mc := &config.Module{Route: route.Pattern, Module: ref.Raw, Ref: ref, Entrypoint: "_start", Limits: g.limits}
	from, err := modsource.New(ref, "", g.env)
	if err != nil {
		return nil, fail(noCIDInPath)
	}
	src := &source{ref: ref, from: from, route: route.Pattern, pages: g.limits.MemoryPages(), limits: g.limits, entry: "_start", gateway: true}
	t := newTarget(route, src, mc, "_start")
	if n := g.limits.MaxConcurrency; n > 0 && n < g.children {
		// Every [limits] key holds for gateway CIDs as for configured
		// routes; max_concurrency is the one that needs state.
		t.slots = make(chan struct{}, n)
	}
	if len(g.targets) >= maxGatewayModules {
		for k := range g.targets {
			delete(g.targets, k)
			break
		}
	}
	g.targets[cid] = t
	return t, failure{}
}
