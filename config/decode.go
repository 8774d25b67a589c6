package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/wagi-fcgi/wagi-fcgi/internal/egress"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
)

// decoder turns the generic TOML tree into a Config, collecting every
// problem with its line.
type decoder struct {
	file    string
	baseDir string
	lines   keyLines
	errs    []*Error
	// fileErrs are problems in other files (env files), not sorted
	// with the config file's lines.
	fileErrs []*Error
}

func (d *decoder) add(line int, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// bad reports a problem with the value of the key at p.
func (d *decoder) bad(p keyPath, format string, args ...any) {
	d.add(d.lines.line(p), "%s: %s", display(p), fmt.Sprintf(format, args...))
}

// display names a key for messages: "listen", "[limits] timeout",
// "[[module]] #2 volumes.\"/static\"", "[ipfs] allow[1]".
func display(p keyPath) string {
	prefix, rest := section(p)
	var b strings.Builder
	b.WriteString(prefix)
	for i, k := range rest {
		switch {
		case strings.HasPrefix(k, "#"):
			b.WriteString("[" + k[1:] + "]")
		case i == 0:
			if prefix != "" {
				b.WriteByte(' ')
			}
			b.WriteString(toml.Key{k}.String())
		default:
			b.WriteString("." + toml.Key{k}.String())
		}
	}
	return b.String()
}

// section splits p into the name of its table ("", "[pool]",
// "[[module]] #2") and the key path inside it.
func section(p keyPath) (string, keyPath) {
	if len(p) >= 2 && p[0] == "module" && strings.HasPrefix(p[1], "#") {
		n, _ := strconv.Atoi(p[1][1:])
		return fmt.Sprintf("[[module]] #%d", n+1), p[2:]
	}
	if len(p) >= 2 {
		return "[" + toml.Key{p[0]}.String() + "]", p[1:]
	}
	return "", p
}

// unknown reports an unknown key, suggesting the closest known one.
func (d *decoder) unknown(p keyPath, known []string, hint string) {
	prefix, rest := section(p)
	name := strings.Join(rest, ".")
	msg := fmt.Sprintf("unknown key %q", name)
	if prefix != "" {
		msg += " in " + prefix
	}
	switch {
	case hint != "":
		msg += " (" + hint + ")"
	default:
		if s := closest(name, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
	}
	d.add(d.lines.line(p), "%s", msg)
}

// closest returns the known key nearest to name, if it is near enough to
// be a typo.
func closest(name string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if dist := editDistance(name, k); dist < bestDist && dist <= max(1, len(k)/3) {
			best, bestDist = k, dist
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// keys returns the keys of m in the order they appear in the file (keys
// without a known line last, by name).
func (d *decoder) keys(p keyPath, m map[string]any) []string {
	ks := slices.Collect(maps.Keys(m))
	slices.SortFunc(ks, func(a, b string) int {
		if c := cmp.Compare(lineKey(d.lines.line(p.child(a))), lineKey(d.lines.line(p.child(b)))); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	return ks
}

// typeName names a decoded TOML value's type for messages.
func typeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case map[string]any:
		return "a table"
	case []map[string]any, []any:
		return "an array"
	}
	return "a date or time"
}

func (d *decoder) str(p keyPath, v any) (string, bool) {
	s, ok := v.(string)
	if !ok {
		d.bad(p, "want a string, got %s", typeName(v))
	}
	return s, ok
}

func (d *decoder) boolean(p keyPath, v any) (bool, bool) {
	b, ok := v.(bool)
	if !ok {
		d.bad(p, "want true or false, got %s", typeName(v))
	}
	return b, ok
}

// integer decodes a whole number >= lo.
func (d *decoder) integer(p keyPath, v any, lo int64) (int, bool) {
	n, ok := v.(int64)
	if !ok {
		d.bad(p, "want an integer, got %s", typeName(v))
		return 0, false
	}
	if n < lo {
		d.bad(p, "must be at least %d, got %d", lo, n)
		return 0, false
	}
	if n > 1<<31-1 {
		d.bad(p, "%d is too large", n)
		return 0, false
	}
	return int(n), true
}

// duration decodes a duration string like "30s", which must be > 0.
func (d *decoder) duration(p keyPath, v any) (time.Duration, bool) {
	s, ok := v.(string)
	if !ok {
		d.bad(p, "want a duration string like \"30s\", got %s", typeName(v))
		return 0, false
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		d.bad(p, "invalid duration %q (want a number with a unit: ms, s, m or h, like \"30s\" or \"1h30m\")", s)
		return 0, false
	}
	if dur <= 0 {
		d.bad(p, "must be greater than 0, got %q", s)
		return 0, false
	}
	return dur, true
}

// size decodes a byte size (integer bytes or a string like "128MiB") that
// is >= lo.
func (d *decoder) size(p keyPath, v any, lo int64) (int64, bool) {
	var n int64
	switch v := v.(type) {
	case int64:
		n = v
	case string:
		var err error
		if n, err = ParseSize(v); err != nil {
			d.bad(p, "%v", err)
			return 0, false
		}
	default:
		d.bad(p, "want a size like \"128MiB\" or a number of bytes, got %s", typeName(v))
		return 0, false
	}
	if n < lo {
		if lo == 0 {
			d.bad(p, "must not be negative")
		} else {
			d.bad(p, "must be at least %s, got %s", FormatSize(lo), FormatSize(n))
		}
		return 0, false
	}
	return n, true
}

func (d *decoder) table(p keyPath, v any) (map[string]any, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		d.bad(p, "want a table, got %s", typeName(v))
	}
	return m, ok
}

func (d *decoder) stringList(p keyPath, v any) ([]string, bool) {
	arr, ok := v.([]any)
	if !ok {
		d.bad(p, "want an array of strings, got %s", typeName(v))
		return nil, false
	}
	out := make([]string, 0, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			d.bad(p.child(index(i)), "want a string, got %s", typeName(e))
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

// errorLine is the line of a TOML syntax error. The parser counts a newline
// before reporting an error found at it (e.g. "got '\n'"), which would blame
// the next line; the byte offset says where the error really is.
func errorLine(data []byte, p toml.Position) int {
	if p.Start <= 0 || p.Start > len(data) {
		return p.Line
	}
	return 1 + bytes.Count(data[:p.Start], []byte("\n"))
}

// decode parses and validates the whole document.
func (d *decoder) decode(data []byte, o Overrides) *Config {
	cfg := Default()
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			d.add(errorLine(data, pe.Position), "invalid TOML: %s", pe.Message)
		} else {
			d.add(0, "invalid TOML: %v", err)
		}
		return nil
	}
	d.lines = locateKeys(string(data))

	known := []string{"listen", "listen_mode", "listen_owner", "listen_group", "state_dir",
		"status_path", "healthz", "log_format", "log_file", "pool", "limits", "ipfs", "oci", "budget", "module", "env", "env_file"}
	// [limits] is decoded first: modules start from its values wherever
	// it appears in the file.
	if v, ok := raw["limits"]; ok {
		if m, ok := d.table(keyPath{"limits"}, v); ok {
			d.limitsTable(keyPath{"limits"}, m, &cfg.Limits)
		}
	}
	var globalEnv map[string]string // the env table, applied in globalEnv
	for _, k := range d.keys(nil, raw) {
		p, v := keyPath{k}, raw[k]
		switch k {
		case "listen":
			if s, ok := d.str(p, v); ok {
				l, err := ParseListen(s, d.baseDir)
				if err != nil {
					d.bad(p, "%v", err)
				} else {
					cfg.Listen = l
				}
			}
		case "listen_mode":
			if mode, ok := d.fileMode(p, v); ok {
				cfg.ListenMode = mode
			}
		case "listen_owner":
			if s, ok := d.str(p, v); ok {
				cfg.ListenOwner = s
			}
		case "listen_group":
			if s, ok := d.str(p, v); ok {
				cfg.ListenGroup = s
			}
		case "state_dir":
			if s, ok := d.str(p, v); ok {
				if s == "" {
					d.bad(p, "must not be empty")
				} else {
					cfg.StateDir = resolve(s, d.baseDir)
				}
			}
		case "status_path":
			if s, ok := d.str(p, v); ok {
				if err := checkURLPath(s); s != "" && err != nil {
					d.bad(p, "%v (or \"\" to disable the status page)", err)
				} else {
					cfg.StatusPath = s
				}
			}
		case "healthz":
			if b, ok := d.boolean(p, v); ok {
				cfg.Healthz = b
			}
		case "log_format":
			if str, ok := d.str(p, v); ok {
				if str != "text" && str != "json" {
					d.bad(p, "want \"text\" or \"json\", got %q", str)
				} else {
					cfg.LogFormat = str
				}
			}
		case "log_file":
			if str, ok := d.str(p, v); ok {
				if str != "" {
					str = resolve(str, d.baseDir)
				}
				cfg.LogFile = str
			}
		case "pool":
			if m, ok := d.table(p, v); ok {
				d.pool(p, m, &cfg.Pool)
			}
		case "limits":
			// done above
		case "ipfs":
			if m, ok := d.table(p, v); ok {
				d.ipfs(p, m, &cfg.IPFS)
			}
		case "oci":
			if m, ok := d.table(p, v); ok {
				d.oci(p, m, &cfg.OCI)
			}
		case "budget":
			if m, ok := d.table(p, v); ok {
				d.budget(p, m, &cfg.Budget)
			}
		case "module":
			cfg.Modules = d.modules(p, v, cfg.Limits)
		case "env":
			globalEnv = d.environment(p, v)
		case "env_file":
			cfg.EnvFiles = d.envFiles(p, v)
		default:
			d.unknown(p, known, "")
		}
	}
	d.globalEnv(cfg, globalEnv, o)
	return cfg
}

// envFiles decodes env_file: a path or an array of paths, relative to
// the config file's directory.
func (d *decoder) envFiles(p keyPath, v any) []string {
	var list []string
	if s, ok := v.(string); ok {
		list = []string{s}
	} else if l, ok := d.stringList(p, v); ok {
		list = l
	}
	out := make([]string, 0, len(list))
	for _, f := range list {
		if f == "" {
			d.bad(p, "an env file path must not be empty")
			continue
		}
		out = append(out, resolve(f, d.baseDir))
	}
	return out
}

// fileMode decodes listen_mode: an octal string like "0660", or an integer
// (TOML's 0o660).
func (d *decoder) fileMode(p keyPath, v any) (os.FileMode, bool) {
	var n uint64
	switch v := v.(type) {
	case string:
		var err error
		n, err = strconv.ParseUint(strings.TrimPrefix(v, "0o"), 8, 32)
		if err != nil || v == "" {
			d.bad(p, "invalid mode %q: want an octal string like \"0660\"", v)
			return 0, false
		}
	case int64:
		if v < 0 {
			d.bad(p, "invalid mode %d: want an octal string like \"0660\"", v)
			return 0, false
		}
		n = uint64(v)
	default:
		d.bad(p, "want an octal string like \"0660\", got %s", typeName(v))
		return 0, false
	}
	if n > 0o777 {
		d.bad(p, "invalid mode %#o: only permission bits (at most 0777) are allowed", n)
		return 0, false
	}
	return os.FileMode(n), true
}

// checkURLPath checks a path that is matched against request paths.
func checkURLPath(s string) error {
	if !strings.HasPrefix(s, "/") {
		return fmt.Errorf("invalid path %q: must start with \"/\"", s)
	}
	if i := strings.IndexFunc(s, func(c rune) bool { return c <= ' ' || c == 0x7f || c == '?' || c == '#' }); i >= 0 {
		return fmt.Errorf("invalid path %q: character %q is not allowed", s, s[i])
	}
	return nil
}

func (d *decoder) pool(p keyPath, m map[string]any, pool *Pool) {
	known := []string{"children", "max_requests", "queue", "queue_timeout", "user", "child_memory",
		"max_connections", "request_read_timeout", "idle_timeout", "params_memory", "body_memory", "spool_size", "uid_range", "fast_path"}
	for _, k := range d.keys(p, m) {
		kp, v := p.child(k), m[k]
		switch k {
		case "children":
			if n, ok := d.integer(kp, v, 1); ok {
				pool.Children = n
			}
		case "max_requests":
			if n, ok := d.integer(kp, v, 0); ok {
				pool.MaxRequests = n
			}
		case "queue":
			if n, ok := d.integer(kp, v, 0); ok {
				pool.Queue = n
			}
		case "queue_timeout":
			if dur, ok := d.duration(kp, v); ok {
				pool.QueueTimeout = dur
			}
		case "user":
			if s, ok := d.str(kp, v); ok {
				pool.User = s
			}
		case "child_memory":
			if n, ok := d.size(kp, v, minChildMemory); ok {
				pool.ChildMemory = n
			}
		case "max_connections":
			if n, ok := d.integer(kp, v, 1); ok {
				pool.MaxConnections = n
			}
		case "request_read_timeout":
			if dur, ok := d.duration(kp, v); ok {
				pool.RequestReadTimeout = dur
			}
		case "idle_timeout":
			if dur, ok := d.duration(kp, v); ok {
				pool.IdleTimeout = dur
			}
		case "fast_path":
			if b, ok := d.boolean(kp, v); ok {
				pool.FastPath = b
			}
		case "params_memory":
			if n, ok := d.size(kp, v, 64<<10); ok {
				pool.ParamsMemory = n
			}
		case "body_memory":
			if n, ok := d.size(kp, v, 0); ok {
				pool.BodyMemory = n
			}
		case "spool_size":
			if n, ok := d.size(kp, v, 0); ok {
				pool.SpoolSize = n
			}
		case "uid_range":
			if s, ok := d.str(kp, v); ok {
				if r, err := parseUIDRange(s); err != nil {
					d.bad(kp, "%v", err)
				} else {
					pool.UIDRange = r
				}
			}
		default:
			d.unknown(kp, known, "")
		}
	}
}

// limitKeys are the keys of [limits], also allowed in a [[module]] table.
func limitKeys() []string {
	return []string{"timeout", "cpu", "daily_cpu", "day_start", "memory", "max_body", "max_output", "max_concurrency",
		"volume_bytes", "volume_files", "compile_cpu", "compile_timeout", "compile_memory",
		"http_max_response", "http_max_requests", "http_timeout"}
}

func (d *decoder) limitsTable(p keyPath, m map[string]any, l *Limits) {
	for _, k := range d.keys(p, m) {
		if !d.limit(p.child(k), k, m[k], l) {
			d.unknown(p.child(k), limitKeys(), "")
		}
	}
}

// limit decodes one limit key into l; it returns false if k is not a limit
// key.
func (d *decoder) limit(p keyPath, k string, v any, l *Limits) bool {
	switch k {
	case "timeout":
		if dur, ok := d.duration(p, v); ok {
			l.Timeout = dur
		}
	case "cpu":
		if dur, ok := d.duration(p, v); ok {
			l.CPU = dur
		}
	case "daily_cpu":
		if dur, ok := d.duration(p, v); ok {
			l.DailyCPU = dur
		}
	case "day_start":
		if s, ok := d.str(p, v); ok {
			ds, err := ParseDayStart(s)
			if err != nil {
				d.bad(p, "%v", err)
			} else {
				l.DayStart = ds
			}
		}
	case "memory":
		if n, ok := d.size(p, v, WasmPageSize); ok {
			if n > maxMemory {
				d.bad(p, "%s is more than a 32-bit WebAssembly module can address (4GiB)", FormatSize(n))
			} else {
				l.Memory = (n + WasmPageSize - 1) / WasmPageSize * WasmPageSize
			}
		}
	case "max_body":
		if n, ok := d.size(p, v, 0); ok {
			l.MaxBody = n
		}
	case "max_output":
		if n, ok := d.size(p, v, 1); ok {
			l.MaxOutput = n
		}
	case "max_concurrency":
		if n, ok := d.integer(p, v, 0); ok {
			l.MaxConcurrency = n
		}
	case "volume_bytes":
		if n, ok := d.size(p, v, 0); ok {
			l.VolumeBytes = n
		}
	case "volume_files":
		if n, ok := d.integer(p, v, 0); ok {
			l.VolumeFiles = int64(n)
		}
	case "compile_cpu":
		if dur, ok := d.duration(p, v); ok {
			l.CompileCPU = dur
		}
	case "compile_timeout":
		if dur, ok := d.duration(p, v); ok {
			l.CompileTimeout = dur
		}
	case "http_max_response": // outbound HTTP (internal/egress)
		if n, ok := d.size(p, v, 1); ok {
			l.HTTPMaxResponse = n
		}
	case "http_max_requests":
		if n, ok := d.integer(p, v, 0); ok {
			l.HTTPMaxRequests = n
		}
	case "http_timeout":
		if dur, ok := d.duration(p, v); ok {
			l.HTTPTimeout = dur
		}
	case "compile_memory":
		// Below this the Go runtime and wazero cannot compile even a
		// tiny module, and every module would be remembered as bad.
		if n, ok := d.size(p, v, minCompileMemory); ok {
			l.CompileMemory = n
		}
	default:
		return false
	}
	return true
}

func (d *decoder) ipfs(p keyPath, m map[string]any, c *IPFS) {
	known := []string{"api", "fetch_timeout", "gateway", "allow", "max_module_size", "max_dir_size", "max_dir_files", "store_size", "gateway_daily_cpu", "ipns_ttl", "pin", "pin_recent", "pin_max"}
	for _, k := range d.keys(p, m) {
		kp, v := p.child(k), m[k]
		switch k {
		case "api":
			if s, ok := d.str(kp, v); ok {
				if err := checkAPI(s); err != nil {
					d.bad(kp, "%v", err)
				} else {
					c.API = s
				}
			}
		case "fetch_timeout":
			if dur, ok := d.duration(kp, v); ok {
				c.FetchTimeout = dur
			}
		case "ipns_ttl":
			if dur, ok := d.duration(kp, v); ok {
				c.IPNSTTL = dur
			}
		case "gateway":
			if s, ok := d.str(kp, v); ok {
				if s != "" && (len(s) < 3 || !strings.HasPrefix(s, "/") || !strings.HasSuffix(s, "/") ||
					path.Clean(s)+"/" != s || checkURLPath(s) != nil) {
					d.bad(kp, "invalid gateway prefix %q: want \"\" (off) or a path like \"/ipfs/\"", s)
				} else {
					c.Gateway = s
				}
			}
		case "allow":
			if list, ok := d.stringList(kp, v); ok {
				good := true
				for i, s := range list {
					if s == "*" {
						continue
					}
					if s == "" || strings.IndexFunc(s, func(c rune) bool { return !isCIDChar(c) }) >= 0 {
						d.bad(kp.child(index(i)), "%q is not a CID or \"*\"", s)
						good = false
					}
				}
				if good {
					c.Allow = list
				}
			}
		case "max_module_size":
			if n, ok := d.size(kp, v, 1); ok {
				c.MaxModuleSize = n
			}
		case "gateway_daily_cpu":
			if dur, ok := d.duration(kp, v); ok {
				c.GatewayDailyCPU = dur
			}
		case "max_dir_size":
			if n, ok := d.size(kp, v, 1); ok {
				c.MaxDirSize = n
			}
		case "max_dir_files":
			if n, ok := d.integer(kp, v, 1); ok {
				c.MaxDirFiles = n
			}
		case "store_size":
			if n, ok := d.size(kp, v, 0); ok {
				c.StoreSize = n
			}
		case "pin":
			if b, ok := d.boolean(kp, v); ok {
				c.Pin = b
			}
		case "pin_recent":
			// 0 (or "0") turns pinning of served CIDs off.
			if s, isStr := v.(string); (isStr && s == "0") || v == int64(0) {
				c.PinRecent = 0
			} else if dur, ok := d.duration(kp, v); ok {
				c.PinRecent = dur
			}
		case "pin_max":
			if n, ok := d.integer(kp, v, 0); ok {
				if n > MaxPinMax {
					d.bad(kp, "must be at most %d, got %d", MaxPinMax, n)
				} else {
					c.PinMax = n
				}
			}
		default:
			d.unknown(kp, known, "")
		}
	}
	// The store must hold the largest item it lets in, or that item would
	// be evicted as soon as it is added.
	if c.StoreSize > 0 && c.StoreSize < max(c.MaxModuleSize, c.MaxDirSize) {
		d.bad(p.child("store_size"), "must be 0 (no bound) or at least max_module_size (%s) and max_dir_size (%s), got %s",
			FormatSize(c.MaxModuleSize), FormatSize(c.MaxDirSize), FormatSize(c.StoreSize))
	}
}

// checkAPI checks a kubo RPC API address: a multiaddr or an http(s) URL.
func checkAPI(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("must not be empty")
	case strings.HasPrefix(s, "/"):
		if strings.ContainsFunc(s, func(c rune) bool { return c <= ' ' }) {
			return fmt.Errorf("invalid multiaddr %q", s)
		}
		return nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("invalid API address %q: want a multiaddr like \"/ip4/127.0.0.1/tcp/5001\" or a URL like \"http://127.0.0.1:5001\"", s)
	}
	return nil
}

// modules decodes the [[module]] array.
func (d *decoder) modules(p keyPath, v any, defaults Limits) []Module {
	var tables []map[string]any
	switch v := v.(type) {
	case []map[string]any:
		tables = v
	case []any:
		for i, e := range v {
			m, ok := e.(map[string]any)
			if !ok {
				d.bad(p.child(index(i)), "want a table, got %s", typeName(e))
				return nil
			}
			tables = append(tables, m)
		}
	default:
		d.bad(p, "want [[module]] tables, got %s", typeName(v))
		return nil
	}
	mods := make([]Module, 0, len(tables))
	for i, m := range tables {
		mods = append(mods, d.module(p.child(index(i)), m, defaults))
	}
	d.checkPublished(p, mods)
	return mods
}

func (d *decoder) module(p keyPath, m map[string]any, defaults Limits) Module {
	mod := Module{Entrypoint: "_start", Limits: defaults, Line: d.lines.line(p)}
	known := append([]string{"route", "module", "entrypoint", "argv", "volumes", "environment",
		"allowed_hosts", "http_max_concurrency", "digest"}, limitKeys()...)
	for _, k := range d.keys(p, m) {
		kp, v := p.child(k), m[k]
		switch k {
		case "route":
			if s, ok := d.str(kp, v); ok {
				if _, err := wagi.ParseRoute(s); err != nil {
					d.bad(kp, "%v", err)
				}
				mod.Route = s
			}
		case "module":
			if s, ok := d.str(kp, v); ok {
				ref, err := ParseModuleRef(s, d.baseDir)
				if err != nil {
					d.bad(kp, "%v", err)
				}
				mod.Module, mod.Ref = s, ref
				if ref.Kind == RefFile {
					mod.Module = ref.Path
				}
			}
		case "entrypoint":
			if s, ok := d.str(kp, v); ok {
				if s == "" {
					d.bad(kp, "must not be empty (leave it out for \"_start\")")
				} else {
					mod.Entrypoint = s
				}
			}
		case "argv":
			if s, ok := d.str(kp, v); ok {
				if err := wagi.CheckArgvTemplate(s); err != nil {
					d.bad(kp, "%v", err)
				}
				mod.Argv = s
			}
		case "volumes":
			mod.Volumes = d.volumes(kp, v)
		case "environment":
			mod.Environment = d.environment(kp, v)
		case "allowed_hosts":
			if list, ok := d.stringList(kp, v); ok {
				mod.AllowedHosts = list
				for i, e := range list { // checked here, enforced by internal/egress
					if e != egress.AllowAll {
						if _, err := egress.ParseEntry(e); err != nil {
							d.bad(kp.child(index(i)), "%v", err)
						}
					}
				}
			}
		case "http_max_concurrency":
			if n, ok := d.integer(kp, v, 0); ok {
				mod.HTTPMaxConcurrency = n
			}
		case "digest":
			// Checked against the module reference below (sources.go).
		default:
			if d.limit(kp, k, v, &mod.Limits) {
				continue
			}
			hint := ""
			switch k {
			case "limits":
				hint = "write limit keys directly in the [[module]] table, like timeout = \"2s\""
			case "bindle_server":
				hint = "Bindle is dead (its project was archived) and not supported; use a file, IPFS, oci: or an https URL with a digest in module"
			}
			d.unknown(kp, known, hint)
		}
	}
	for _, req := range []string{"route", "module"} {
		if _, ok := m[req]; !ok {
			d.add(mod.Line, "%s: missing required key %q", display(p), req)
		}
	}
	d.moduleDigest(p, m, &mod)
	for i := range mod.Volumes {
		if v := &mod.Volumes[i]; !v.ReadOnly {
			v.QuotaBytes, v.QuotaFiles = mod.Limits.VolumeBytes, mod.Limits.VolumeFiles
		}
	}
	d.checkNestedReadOnly(p.child("volumes"), mod.Volumes)
	return mod
}

func (d *decoder) volumes(p keyPath, v any) []Volume {
	m, ok := d.table(p, v)
	if !ok {
		return nil
	}
	vols := make([]Volume, 0, len(m))
	for _, guest := range d.keys(p, m) {
		kp := p.child(guest)
		var src string
		var pub map[string]any // the table form's other keys
		if t, isTable := m[guest].(map[string]any); isTable {
			s, ok := t["source"]
			if !ok {
				d.bad(kp, "a volume table needs a source, like { source = \"mfs:/wagi/data\", publish_ipns = \"KEY\" }")
				continue
			}
			if src, ok = d.str(kp.child("source"), s); !ok {
				continue
			}
			pub = t
		} else if src, ok = d.str(kp, m[guest]); !ok {
			continue
		}
		vol, err := ParseVolume(guest, src, d.baseDir)
		if err != nil {
			// The message names the guest path already.
			d.add(d.lines.line(kp), "%s: %v", display(p), err)
			continue
		}
		if pub != nil && !d.volumePublish(kp, pub, &vol) {
			continue
		}
		vols = append(vols, vol)
	}
	slices.SortFunc(vols, func(a, b Volume) int { return cmp.Compare(a.Guest, b.Guest) })
	return vols
}

// DefaultPublishEvery is how often at most a published MFS volume is
// published again when it changed (publish_every).
const DefaultPublishEvery = 10 * time.Second

// volumePublish decodes the publish keys of a volume's table form.
func (d *decoder) volumePublish(p keyPath, t map[string]any, v *Volume) bool {
	ok := true
	for _, k := range d.keys(p, t) {
		kp, val := p.child(k), t[k]
		switch k {
		case "source":
		case "publish_ipns":
			key, isStr := d.str(kp, val)
			if !isStr {
				ok = false
				continue
			}
			if err := checkKeyName(key); err != nil {
				d.bad(kp, "%v", err)
				ok = false
				continue
			}
			v.PublishIPNS = key
		case "publish_every":
			dur, good := d.duration(kp, val)
			if good && dur < time.Second {
				d.bad(kp, "must be at least 1s, got %q: every publication is a signed record sent to every peer", val)
				good = false
			}
			ok = ok && good
			v.PublishEvery = dur
		default:
			d.bad(kp, "unknown key %q in a volume table (want source, publish_ipns, publish_every)", k)
			ok = false
		}
	}
	if !ok {
		return false
	}
	if v.PublishIPNS == "" {
		d.bad(p, "a volume table without publish_ipns: write the source as a plain string")
		return false
	}
	if v.Kind != VolumeMFS {
		d.bad(p, "publish_ipns needs a writable mfs: volume, got %s source %q", v.Kind, v.Source)
		return false
	}
	if v.PublishEvery == 0 {
		v.PublishEvery = DefaultPublishEvery
	}
	return true
}

// checkKeyName accepts a kubo keystore name: what `ipfs key gen NAME`
// takes, bounded and without path or control characters.
func checkKeyName(k string) error {
	if k == "" || len(k) > 64 || strings.Trim(k, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" || k[0] == '.' {
		return fmt.Errorf("invalid kubo key name %q: want 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'", k)
	}
	return nil
}

// checkPublished refuses two publications of one MFS directory under
// different keys, and one key for two directories: a key names one
// volume, or readers would see the two alternate.
func (d *decoder) checkPublished(p keyPath, mods []Module) {
	byPath, byKey := map[string]string{}, map[string]string{}
	for i := range mods {
		for _, v := range mods[i].Volumes {
			if v.PublishIPNS == "" {
				continue
			}
			kp := p.child(index(i)).child("volumes").child(v.Guest)
			if k, ok := byPath[v.Path]; ok && k != v.PublishIPNS {
				d.bad(kp, "mfs:%s is published under the key %q already, and here under %q: a directory has one key", v.Path, k, v.PublishIPNS)
			}
			if q, ok := byKey[v.PublishIPNS]; ok && q != v.Path {
				d.bad(kp, "the key %q publishes mfs:%s already, and here mfs:%s: a key names one directory", v.PublishIPNS, q, v.Path)
			}
			byPath[v.Path], byKey[v.PublishIPNS] = v.PublishIPNS, v.Path
		}
	}
}

func (d *decoder) environment(p keyPath, v any) map[string]string {
	m, ok := d.table(p, v)
	if !ok {
		return nil
	}
	env := make(map[string]string, len(m))
	for _, k := range d.keys(p, m) {
		kp := p.child(k)
		val, ok := d.str(kp, m[k])
		if !ok {
			continue
		}
		switch {
		case k == "":
			d.bad(kp, "an environment variable needs a name")
		case strings.ContainsAny(k, "=\x00"):
			d.bad(kp, "an environment variable name must not contain '=' or NUL")
		case strings.ContainsRune(val, 0):
			d.bad(kp, "an environment variable value must not contain NUL")
		default:
			env[k] = val
		}
	}
	return env
}

// parseUIDRange reads "FIRST-LAST": non-root uids below 2^31 (larger ones
// read as negative in too many tools), FIRST <= LAST.
func parseUIDRange(s string) (UIDRange, error) {
	a, b, ok := strings.Cut(s, "-")
	first, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 31)
	last, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 31)
	if !ok || err1 != nil || err2 != nil || first == 0 || first > last {
		return UIDRange{}, fmt.Errorf("want \"FIRST-LAST\", two uids from 1 to 2147483647, FIRST <= LAST; got %q", s)
	}
	return UIDRange{First: uint32(first), Last: uint32(last)}, nil
}
