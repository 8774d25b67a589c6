package manager

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/fcgi"
)

// Switch serves FastCGI requests with the current Manager and replaces it
// on a reload without failing a request: the new generation loads every
// module and starts its children first; only then do new requests go to it,
// while the old one finishes what it has and closes. A config that does not
// load is refused and the old generation keeps serving.
type Switch struct {
	cur atomic.Pointer[Manager]
}

// NewSwitch serves with m.
func NewSwitch(m *Manager) *Switch {
	s := &Switch{}
	s.cur.Store(m)
	return s
}

// Current is the manager serving new requests.
func (s *Switch) Current() *Manager { return s.cur.Load() }

// ServeFCGI implements fcgi.Handler.
func (s *Switch) ServeFCGI(w *fcgi.ResponseWriter, r *fcgi.Request) {
	for {
		m := s.cur.Load()
		if m.enter() {
			defer m.leave()
			m.serve(w, r)
			return
		}
		// m began draining after we loaded it: the next one is in place.
	}
}

// Reload starts a manager for cfg and swaps it in; the old one drains (for
// at most grace) and closes in the background. Settings that belong to the
// process (listen, state_dir, logs) keep their old values until a restart.
func (s *Switch) Reload(ctx context.Context, cfg *config.Config, opts Options, grace time.Duration) error {
	old := s.cur.Load()
	if cfg.StateDir != old.cfg.StateDir {
		return fmt.Errorf("reload: state_dir changed (%s → %s); that needs a restart", old.cfg.StateDir, cfg.StateDir)
	}
	if opts.Ledger == nil {
		opts.Ledger = old.ledger
	}
	opts.pinBook = old.pinBook
	nm, err := New(cfg, opts)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	// One pinner at a time: the old generation's stops before the new
	// one's starts (in Start), or it would pin again what the new config
	// dropped. What the old generation serves while it drains still goes
	// into the book they share.
	old.stopPins()
	if err := nm.Start(ctx); err != nil {
		nm.Close()
		old.startPins()
		return fmt.Errorf("reload: %w", err)
	}
	s.cur.Store(nm)
	go func() {
		dctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		if err := old.Drain(dctx); err != nil {
			old.log.Warn("old generation did not drain in time; closing it", "grace", grace)
		}
		old.Close()
	}()
	return nil
}

// Shutdown drains the current manager (at most until ctx ends) and closes
// it.
func (s *Switch) Shutdown(ctx context.Context) error {
	m := s.cur.Load()
	err := m.Drain(ctx)
	m.Close()
	return err
}
