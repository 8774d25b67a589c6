// Package mfspublish publishes writable MFS volumes under IPNS names, so
// that other nodes of a fleet can mount them read-only ("/shared" =
// "/ipns/NAME") and follow them.
//
// One node writes a volume (its modules write through the MFS proxy);
// the Publisher notices when the directory's CID changed and points the
// volume's IPNS key at it, at most once per the volume's interval. Readers
// see the last published state eventually: one writer per volume, no
// merging, no read-your-writes across nodes.
package mfspublish

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// Node is the kubo node a Publisher works on (*ipfs.Client).
type Node interface {
	// MFSDirCID returns the CID of an MFS directory, wrapping
	// ipfs.ErrNotFound while it does not exist.
	MFSDirCID(ctx context.Context, mfsPath string) (string, error)
	// PublishName points key's IPNS name at /ipfs/cid and returns the name.
	PublishName(ctx context.Context, key, cid string, ttl time.Duration) (string, error)
}

// Volume is one MFS directory to publish.
type Volume struct {
	Path  string        // absolute MFS path
	Key   string        // kubo key name
	Every time.Duration // at most one publication per Every (>= 1 s)
}

// State is what the status page shows of a published volume.
type State struct {
	Volume
	Name      string    // the IPNS name, once published
	CID       string    // the CID last published
	Published time.Time // when; zero before the first publication
	Err       string    // the last error, "" when the last step succeeded
}

// Timing of the loop. The directory is looked at once a second (one
// files/stat call per volume), so a change is published within a second
// when its volume's interval has passed; callTimeout bounds every call to
// the node, so a stalled node delays the next look, nothing else.
const (
	checkEvery  = time.Second
	callTimeout = 30 * time.Second
	finalWait   = 5 * time.Second // Close's last publication
)

// Publisher publishes volumes until Close.
type Publisher struct {
	node   Node
	log    *slog.Logger
	tick   time.Duration // checkEvery; shorter in tests
	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	vols []*State
}

// Start starts publishing vols (a volume with an empty Key is skipped) on
// node. The first publication happens at once, so that the name points at
// the directory as it is when the node starts.
func Start(node Node, vols []Volume, log *slog.Logger) *Publisher {
	return start(node, vols, log, checkEvery)
}

func start(node Node, vols []Volume, log *slog.Logger, tick time.Duration) *Publisher {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Publisher{node: node, log: log, tick: tick, cancel: cancel, done: make(chan struct{})}
	for _, v := range vols {
		if v.Key != "" {
			p.vols = append(p.vols, &State{Volume: v})
		}
	}
	go p.run(ctx)
	return p
}

// States returns the state of every volume.
func (p *Publisher) States() []State {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]State, len(p.vols))
	for i, s := range p.vols {
		out[i] = *s
	}
	return out
}

// Close stops publishing and waits for the loop to end. What changed since
// the last publication is published once more (within a few seconds,
// whatever the interval), so a clean stop leaves nothing unpublished.
func (p *Publisher) Close() {
	p.cancel()
	<-p.done
	ctx, cancel := context.WithTimeout(context.Background(), finalWait)
	defer cancel()
	for _, s := range p.vols {
		p.check(ctx, s, true)
	}
}

func (p *Publisher) run(ctx context.Context) {
	defer close(p.done)
	t := time.NewTicker(p.tick)
	defer t.Stop()
	for {
		for _, s := range p.vols {
			if ctx.Err() != nil {
				return
			}
			p.check(ctx, s, false)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check publishes s when its directory changed and its interval has
// passed (or final is set).
func (p *Publisher) check(ctx context.Context, s *State, final bool) {
	p.mu.Lock()
	last, at := s.CID, s.Published
	p.mu.Unlock()
	if !final && !at.IsZero() && time.Since(at) < s.Every {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	cid, err := p.node.MFSDirCID(cctx, s.Path)
	if errors.Is(err, ipfs.ErrNotFound) {
		err = nil // nothing written yet: nothing to publish
	}
	if err != nil || cid == "" || cid == last {
		p.failed(s, "reading the directory", err)
		return
	}
	start := time.Now()
	name, err := p.node.PublishName(cctx, s.Key, cid, s.Every)
	if err != nil {
		p.failed(s, "publishing", err)
		return
	}
	p.mu.Lock()
	s.Name, s.CID, s.Published, s.Err = name, cid, time.Now(), ""
	p.mu.Unlock()
	p.log.Info("MFS volume published", "mfs", s.Path, "key", s.Key, "name", name, "cid", cid, "took", time.Since(start).Round(time.Millisecond))
}

// failed records the outcome of a step; a new error is logged once, and
// its end too.
func (p *Publisher) failed(s *State, step string, err error) {
	msg := ""
	if err != nil {
		msg = step + ": " + err.Error()
	}
	p.mu.Lock()
	prev := s.Err
	s.Err = msg
	p.mu.Unlock()
	switch {
	case msg != "" && msg != prev:
		p.log.Error("MFS volume not published; retrying every second", "mfs", s.Path, "key", s.Key, "err", msg)
	case msg == "" && prev != "":
		p.log.Info("MFS volume: the node answers again", "mfs", s.Path, "key", s.Key)
	}
}
