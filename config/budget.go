package config

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Budget is the [budget] table: daily CPU budgets shared by a fleet of
// nodes through a Redis-protocol store. With Shared empty (the default)
// each node enforces its budgets alone.
type Budget struct {
	// Shared is the store's URL: redis://[[USER]:PASSWORD@]HOST:PORT[/DB]
	// or rediss:// (TLS). "" keeps budgets per node.
	Shared string
	// LocalShare is the fraction of a daily budget a node may spend on its
	// own while the store is unreachable (or its view is stale); in
	// (0, 1], default 0.25.
	LocalShare float64
	// Sync is how often the node pushes its totals and reads the fleet's;
	// default 100ms, at least 10ms, at most 10s.
	Sync time.Duration
	// NodeID names this node in the store; "" means the id kept in
	// state_dir/node-id (made at first start). 1..64 bytes of
	// [A-Za-z0-9._-].
	NodeID string
}

// Budget defaults and bounds.
const (
	DefaultLocalShare = 0.25
	DefaultBudgetSync = 100 * time.Millisecond
	minBudgetSync     = 10 * time.Millisecond
	maxBudgetSync     = 10 * time.Second
	maxNodeIDLen      = 64
)

func (d *decoder) budget(p keyPath, m map[string]any, b *Budget) {
	known := []string{"shared", "local_share", "sync", "node_id"}
	for _, k := range d.keys(p, m) {
		kp, v := p.child(k), m[k]
		switch k {
		case "shared":
			if s, ok := d.str(kp, v); ok {
				if err := CheckSharedURL(s); s != "" && err != nil {
					d.bad(kp, "%v", err)
				} else {
					b.Shared = s
				}
			}
		case "local_share":
			if f, ok := d.fraction(kp, v); ok {
				b.LocalShare = f
			}
		case "sync":
			if dur, ok := d.duration(kp, v); ok {
				if dur < minBudgetSync || dur > maxBudgetSync {
					d.bad(kp, "must be between %v and %v, got %v", minBudgetSync, maxBudgetSync, dur)
				} else {
					b.Sync = dur
				}
			}
		case "node_id":
			if s, ok := d.str(kp, v); ok {
				if err := CheckNodeID(s); s != "" && err != nil {
					d.bad(kp, "%v", err)
				} else {
					b.NodeID = s
				}
			}
		default:
			d.unknown(kp, known, "")
		}
	}
}

// fraction decodes a number in (0, 1]; TOML's 1 (an integer) is accepted.
func (d *decoder) fraction(p keyPath, v any) (float64, bool) {
	var f float64
	switch v := v.(type) {
	case float64:
		f = v
	case int64:
		f = float64(v)
	default:
		d.bad(p, "want a number in (0, 1] like 0.25, got %s", typeName(v))
		return 0, false
	}
	if !(f > 0 && f <= 1) { // also rejects NaN
		d.bad(p, "must be greater than 0 and at most 1, got %v", f)
		return 0, false
	}
	return f, true
}

// CheckSharedURL checks a [budget] shared URL: redis:// or rediss://, a
// host and port, an optional database number; a password may be given.
// Error messages never repeat the URL (it may hold the password).
func CheckSharedURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("invalid URL (want redis://HOST:PORT/DB)")
	}
	switch {
	case u.Scheme != "redis" && u.Scheme != "rediss":
		return fmt.Errorf("want a redis:// or rediss:// URL, got scheme %q", u.Scheme)
	case u.Host == "" || u.Opaque != "":
		return fmt.Errorf("want redis://HOST:PORT/DB: no host")
	case u.Port() == "":
		return fmt.Errorf("want redis://HOST:PORT/DB: name the port (Redis listens on 6379)")
	case u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("want redis://HOST:PORT/DB: options in the query are not supported")
	}
	if n, err := strconv.ParseUint(u.Port(), 10, 16); err != nil || n == 0 {
		return fmt.Errorf("invalid port %q", u.Port())
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		if n, err := strconv.ParseUint(db, 10, 31); err != nil || n > 1<<20 {
			return fmt.Errorf("invalid database %q: want a number, like redis://HOST:PORT/0", db)
		}
	}
	return nil
}

// RedactURL is u without its password, for logs and the status page.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(invalid URL)"
	}
	return u.Redacted()
}

// CheckNodeID accepts 1..64 bytes of letters, digits, '.', '_' and '-'.
func CheckNodeID(s string) error {
	if s == "" || len(s) > maxNodeIDLen {
		return fmt.Errorf("a node id has 1 to %d characters, got %d", maxNodeIDLen, len(s))
	}
	if i := strings.IndexFunc(s, func(c rune) bool {
		return !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-')
	}); i >= 0 {
		return fmt.Errorf("invalid node id %q: only letters, digits, '.', '_' and '-' are allowed", s)
	}
	return nil
}
