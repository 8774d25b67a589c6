package pinner

import (
	"slices"
	"strings"
	"time"
)

// NamePrefix starts the name of every pin wagi-fcgi makes. A pin is the
// pinner's own when its name is NamePrefix or starts with NamePrefix+":"
// (see Owns); the pinner never removes any other pin, named or not.
const NamePrefix = "wagi-fcgi"

// servedName is the pin name of a CID pinned because it was served.
const servedName = NamePrefix + ":served"

// maxNameLen bounds a pin name (a route can be long; kubo keeps names with
// every pin).
const maxNameLen = 128

// Owns says whether a pin named name is the pinner's.
func Owns(name string) bool {
	return name == NamePrefix || strings.HasPrefix(name, NamePrefix+":")
}

// Named is a CID the config names: a module's, or one of its read-only
// IPFS volumes'.
type Named struct {
	Path  string // "/ipfs/CID[/sub]"; for an IPNS name, the CID it resolves to now
	Route string // the module's route
	What  string // "module", or "volume /GUEST"
	// Local pins from local blocks only, never fetching: for IPNS names,
	// whose content the name's publisher chooses (a hostile one could
	// point it at a terabyte); serving fetches it within its caps first.
	Local bool
}

// pinName is the name of the pin made for n: "wagi-fcgi:<route>".
func (n Named) pinName() string {
	name := NamePrefix + ":" + n.Route
	if len(name) > maxNameLen {
		name = name[:maxNameLen]
	}
	return name
}

// want is a CID the rules keep pinned, and why.
type want struct {
	cid    string
	path   string
	named  []Named   // empty: pinned because it was served
	served time.Time // last served; zero if never (or not within the window)
}

// localOnly says whether w is pinned from local blocks only: a served
// CID, or one only IPNS names want.
func (w want) localOnly() bool {
	for _, n := range w.named {
		if !n.Local {
			return false
		}
	}
	return true
}

func (w want) pinName() string {
	if len(w.named) > 0 {
		return w.named[0].pinName()
	}
	return servedName
}

// servedCID is a CID and when it was last served.
type servedCID struct {
	path string
	at   time.Time
}

// wanted applies the rules: every CID the config names is pinned; so are
// the CIDs served within window (0: none), at most max of those the config
// does not name, the most recently served first. Both maps are by CID.
func wanted(named map[string][]Named, served map[string]servedCID, now time.Time, window time.Duration, max int) map[string]want {
	out := make(map[string]want, len(named)+min(len(served), max))
	for c, ns := range named {
		w := want{cid: c, path: ns[0].Path, named: ns}
		if s, ok := served[c]; ok && window > 0 && now.Sub(s.at) <= window {
			w.served = s.at
		}
		out[c] = w
	}
	if window <= 0 || max <= 0 {
		return out
	}
	recent := make([]want, 0, len(served))
	for c, s := range served {
		if _, ok := named[c]; ok || now.Sub(s.at) > window {
			continue
		}
		recent = append(recent, want{cid: c, path: s.path, served: s.at})
	}
	slices.SortFunc(recent, func(a, b want) int {
		if c := b.served.Compare(a.served); c != 0 {
			return c
		}
		return strings.Compare(a.cid, b.cid)
	})
	for _, w := range recent[:min(len(recent), max)] {
		out[w.cid] = w
	}
	return out
}

// diff compares what the rules want with the pinner's own pins (by CID,
// their names): the CIDs to pin (wanted, not ours yet) and the CIDs to
// unpin (ours, no longer wanted), both sorted. Pins that are not the
// pinner's never appear in ours, so they are never unpinned.
func diff(wants map[string]want, ours map[string]string) (add []want, rm []string) {
	for c, w := range wants {
		if _, ok := ours[c]; !ok {
			add = append(add, w)
		}
	}
	for c, name := range ours {
		if _, ok := wants[c]; !ok && Owns(name) {
			rm = append(rm, c)
		}
	}
	// The config's first, then the most recently served: when a pass
	// cannot do everything, what matters most is done.
	slices.SortFunc(add, func(a, b want) int {
		if (len(a.named) > 0) != (len(b.named) > 0) {
			if len(a.named) > 0 {
				return -1
			}
			return 1
		}
		if c := b.served.Compare(a.served); c != 0 {
			return c
		}
		return strings.Compare(a.cid, b.cid)
	})
	slices.Sort(rm)
	return add, rm
}
