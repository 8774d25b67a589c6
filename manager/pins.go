package manager

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/internal/pinner"
	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// pinBookFile is where, in state_dir, the node keeps when it last served
// each CID (see pinner.Book).
const pinBookFile = "pins-served.json"

// startPins starts pinning ([ipfs] pin): every CID the config names, and
// every CID served within pin_recent, stays pinned in kubo (see
// internal/pinner). The book of served CIDs is the previous generation's
// on a reload, so nothing served is forgotten.
func (m *Manager) startPins() {
	if !m.cfg.IPFS.Pin || m.ipfs == nil || m.opts.Check {
		return
	}
	if m.pins == nil {
		book := m.opts.pinBook
		if book == nil {
			book = pinner.OpenBook(filepath.Join(m.cfg.StateDir, pinBookFile), time.Now(), m.log)
		}
		m.pinBook = book
		m.pins = pinner.New(m.ipfs, book, pinner.Config{
			Window: m.cfg.IPFS.PinRecent, Max: m.cfg.IPFS.PinMax, AddTimeout: m.cfg.IPFS.FetchTimeout, Logger: m.log,
		})
		for i, src := range m.sources {
			mc := &m.cfg.Modules[i]
			switch src.ref.Kind {
			case config.RefIPFS:
				m.pins.Name(fmt.Sprint("module ", i), pinner.Named{Path: "/ipfs/" + src.ref.Path, Route: mc.Route, What: "module"})
			case config.RefIPNS:
				// Resolved by the pinner at each pass: when the name
				// moves, its old CID follows the served-window rule.
				m.pins.Name(fmt.Sprint("module ", i), pinner.Named{Path: "/ipns/" + src.ref.Path, Route: mc.Route, What: "module", Local: true})
			}
			for _, v := range mc.Volumes {
				key, named := fmt.Sprint("volume ", i, " ", v.Guest), pinner.Named{Route: mc.Route, What: "volume " + v.Guest}
				switch v.Kind {
				case config.VolumeIPFS:
					named.Path = "/ipfs/" + v.Path
				case config.VolumeIPNS:
					named.Path, named.Local = "/ipns/"+v.Path, true // followed like an IPNS module
				default:
					continue // local, or MFS (kubo never collects what MFS holds)
				}
				m.pins.Name(key, named)
			}
		}
	}
	m.pins.Start()
}

// stopPins stops the pinner's goroutine and waits for it (a reload stops
// the old generation's before the new one starts, so two never disagree
// about the same pins).
func (m *Manager) stopPins() {
	if m.pins != nil {
		m.pins.Stop()
	}
}

// servedFrom records that src's module answered a request, for the
// pinner: in memory only, no call to the node.
func (m *Manager) servedFrom(src *source) {
	if m.pins == nil || src == nil {
		return
	}
	if p := src.pinPath(); p != "" {
		m.pins.Served(p, time.Now())
	}
}

// pinPath is the immutable IPFS path of what src serves: its CID for an
// IPFS reference, the CID its IPNS name last resolved to, else "".
func (s *source) pinPath() string {
	switch s.ref.Kind {
	case config.RefIPFS:
		return "/ipfs/" + s.ref.Path
	case config.RefIPNS:
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.cid
	}
	return ""
}

// peersTTL is how long the status page shows the same list of peers, and
// peersTimeout how long it waits for kubo: a status request never hangs on
// the node, and many of them make one call at most every peersTTL.
const (
	peersTTL     = 5 * time.Second
	peersTimeout = time.Second
)

// peerCache is the node's swarm peers, fetched for the status page.
type peerCache struct {
	mu       sync.Mutex
	at       time.Time
	peers    []ipfs.Peer
	err      string
	fetching bool
}

// get returns the peers, fetching them if the cached list is older than
// peersTTL and no other request is fetching them now (that one's answer
// is for the next request).
func (pc *peerCache) get(c *ipfs.Client) ([]ipfs.Peer, string) {
	pc.mu.Lock()
	if time.Since(pc.at) < peersTTL || pc.fetching {
		defer pc.mu.Unlock()
		return pc.peers, pc.err
	}
	pc.fetching = true
	pc.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), peersTimeout)
	peers, err := c.Peers(ctx)
	cancel()

	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.fetching, pc.at = false, time.Now()
	pc.peers, pc.err = peers, ""
	if err != nil {
		pc.peers, pc.err = nil, err.Error()
	}
	return pc.peers, pc.err
}

// pinningStatus is the status page's view of pinning.
func (m *Manager) pinningStatus() *PinningStatus {
	out := &PinningStatus{On: m.pins != nil, Pins: []PinStatus{}}
	if m.pins == nil {
		return out
	}
	st := m.pins.Status()
	out.Recent, out.Max, out.Reachable = st.Recent.Seconds(), st.Max, st.Reachable
	for _, p := range st.Pins {
		ps := PinStatus{CID: p.CID, Path: p.Path, Why: p.Why, Pinned: p.State, Owner: p.Owner, Error: p.Error}
		if !p.LastServed.IsZero() {
			ps.LastServed = p.LastServed.UTC().Format(time.RFC3339)
		}
		out.Pins = append(out.Pins, ps)
	}
	return out
}

// peersStatus is the status page's view of the node's peers.
func (m *Manager) peersStatus() *PeersStatus {
	peers, err := m.peers.get(m.ipfs)
	if peers == nil {
		peers = []ipfs.Peer{}
	}
	// A node on the public network may have hundreds of connections:
	// the page counts them all and lists the first maxStatusPeers.
	return &PeersStatus{Count: len(peers), Peers: peers[:min(len(peers), maxStatusPeers)], Error: err}
}

// maxStatusPeers bounds the peers the status page lists.
const maxStatusPeers = 256

// writePinsText writes the pinning and peers sections of the plain-text
// status page.
func writePinsText(w io.Writer, st Status) {
	if pn := st.Pinning; pn != nil {
		if pn.On {
			fmt.Fprintf(w, "pinning:              on (served CIDs kept %s, at most %d)\n", time.Duration(pn.Recent*float64(time.Second)), pn.Max)
		} else {
			fmt.Fprintf(w, "pinning:              off\n")
		}
		fmt.Fprintf(w, "pins:                 %d\n", len(pn.Pins))
	}
	if pe := st.Peers; pe != nil {
		fmt.Fprintf(w, "peers:                %d\n", pe.Count)
		if pe.Error != "" {
			fmt.Fprintf(w, "peers error:          %s\n", pe.Error)
		}
		for _, p := range pe.Peers {
			fmt.Fprintf(w, "peer:                 %s %s\n", p.ID, p.Addr)
		}
	}
	if pn := st.Pinning; pn != nil {
		for _, p := range pn.Pins {
			fmt.Fprintf(w, "\npin:                  %s\n", p.CID)
			fmt.Fprintf(w, "path:                 %s\n", p.Path)
			fmt.Fprintf(w, "why:                  %s\n", p.Why)
			if p.LastServed != "" {
				fmt.Fprintf(w, "last served:          %s\n", p.LastServed)
			}
			state := p.Pinned
			if p.Owner != pinner.NamePrefix {
				state += " (pinned by " + p.Owner + ")"
			}
			if p.Error != "" {
				state += ": " + p.Error
			}
			fmt.Fprintf(w, "pinned:               %s\n", state)
		}
	}
}
