package manager

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/internal/modsource"
	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// ipnsVolumes follows the IPNS names of read-only volumes ("/shared" =
// "/ipns/NAME"): each name is resolved at most once per ipns_ttl, and the
// directory it points to is fetched like any IPFS volume (ipfsDir, so each
// version is an immutable local copy). A request that finds the resolution
// expired waits for the new one at most staleWait, then runs on the
// previous version: a slow or unreachable publisher delays nobody.
type ipnsVolumes struct {
	mu    sync.Mutex
	names map[string]*ipnsName // by "NAME[/sub]"
}

// ipnsName is what one name resolved to.
type ipnsName struct {
	path    string    // "CID[/sub]" of the last good resolution; "" before it
	at      time.Time // when path was resolved
	call    *loadCall // the resolution in flight, or nil
	failing bool      // the last resolution failed (logged once per streak)
	bad     string    // a version whose fetch failed: not fetched again
}

// ipnsDir returns the local copy of the directory the IPNS name (a
// VolumeIPNS path, "NAME[/sub]") currently points to.
func (m *Manager) ipnsDir(ctx context.Context, name string) (string, error) {
	if m.ipfs == nil {
		return "", ipfs.ErrUnavailable
	}
	ttl := m.cfg.IPFS.IPNSTTL
	if ttl <= 0 {
		ttl = modsource.RefreshTTL
	}
	v := &m.ipnsVols
	v.mu.Lock()
	if v.names == nil {
		v.names = map[string]*ipnsName{}
	}
	e := v.names[name]
	if e == nil {
		e = &ipnsName{}
		v.names[name] = e
	}
	if e.path != "" && time.Since(e.at) < ttl {
		p := e.path
		v.mu.Unlock()
		return m.ipfsDir(ctx, p)
	}
	c := e.call
	if c == nil {
		c = &loadCall{done: make(chan struct{})}
		e.call = c
		go m.resolveIPNS(name, e, c)
	}
	stale := e.path
	v.mu.Unlock()

	if stale != "" {
		if !waitRefresh(ctx, c) {
			return m.ipfsDir(ctx, stale)
		}
	} else {
		select {
		case <-c.done:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	v.mu.Lock()
	p := e.path
	v.mu.Unlock()
	if p == "" {
		return "", c.err
	}
	return m.ipfsDir(ctx, p) // a failed refresh leaves the previous version
}

// resolveIPNS resolves name once and fetches the version it points to,
// within fetch_timeout, and only then records it in e: requests move to a
// new version once it is on disk, never to one that cannot be had (a
// publisher that went away, a directory over max_dir_size), which is
// remembered and not fetched again. Failures keep the previous version
// for another ipns_ttl.
func (m *Manager) resolveIPNS(name string, e *ipnsName, c *loadCall) {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.IPFS.FetchTimeout)
	defer cancel()
	resolved, err := m.ipfs.Resolve(ctx, "/ipns/"+name)
	p := strings.TrimPrefix(resolved, "/ipfs/")
	v := &m.ipnsVols
	if err == nil {
		v.mu.Lock()
		known, bad := p == e.path, p == e.bad
		v.mu.Unlock()
		switch {
		case bad:
			err = fmt.Errorf("version %s could not be fetched before; the name still points to it", p)
		case !known:
			if _, ferr := m.ipfsDir(ctx, p); ferr != nil {
				err = fmt.Errorf("fetching version %s: %w", p, ferr)
				v.mu.Lock()
				e.bad = p
				v.mu.Unlock()
			}
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	e.call, c.err = nil, err
	defer close(c.done)
	if err != nil {
		if e.path != "" {
			e.at = time.Now() // the previous version serves another ipns_ttl
		}
		if !e.failing {
			e.failing = true
			if e.path != "" {
				m.log.Warn("IPNS volume: no new version; the previous one stays mounted", "name", name, "version", e.path, "err", err)
			} else {
				m.log.Error("IPNS volume: not available", "name", name, "err", err)
			}
		}
		return
	}
	if e.failing || p != e.path {
		m.log.Info("IPNS volume resolved", "name", name, "version", p, "previous", e.path)
	}
	e.failing = false
	e.path, e.at = p, time.Now()
}
