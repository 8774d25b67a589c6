// Package spinimport converts a Spin application manifest (spin.toml,
// manifest versions 1 and 2) into a wagi-fcgi config: `wagi-fcgi import`.
//
// Only HTTP triggers that use Spin's WAGI executor become [[module]]
// entries; those modules are WASI preview1 command modules speaking CGI,
// which is exactly what wagi-fcgi runs. Everything else is reported, never
// dropped silently: components for Spin's default HTTP executor (the Spin
// SDK / wasi-http component interfaces) are left out with the reason, and
// every Spin feature wagi-fcgi has no equivalent for (variables, key-value
// stores, SQLite, AI models, Redis triggers, service chaining, ...) gets a
// note. The schema followed is spinframework/spin's
// crates/manifest/src/schema/{v1,v2}.rs and the WAGI executor of
// crates/http/src/config.rs and crates/trigger-http/src/wagi.rs.
package spinimport

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/BurntSushi/toml"

	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
)

// Level says how bad a Note is.
type Level int

const (
	// Ignored: a manifest setting with no equivalent here; the module is
	// written without it.
	Ignored Level = iota
	// Warning: the module is written, but differs from what Spin would
	// run in a way the user must know (for example a volume exposing more
	// files than the manifest listed).
	Warning
	// Skipped: the component or trigger is left out of the config.
	Skipped
)

func (l Level) String() string {
	switch l {
	case Ignored:
		return "ignored"
	case Warning:
		return "warning"
	}
	return "not converted"
}

// Note is one thing the user must know about the conversion.
type Note struct {
	Level Level
	// Where names the part of the manifest: `component "hello"`,
	// `trigger.http #2 (route "/x")`, `variables`.
	Where string
	Msg   string
}

func (n Note) String() string { return fmt.Sprintf("%s: %s: %s", n.Where, n.Level, n.Msg) }

// Result is a converted manifest.
type Result struct {
	// Config is the wagi-fcgi config (TOML).
	Config []byte
	// Modules is how many [[module]] entries Config holds.
	Modules int
	// Notes are the problems found, in manifest order.
	Notes []Note
}

// Options control how paths are written.
type Options struct {
	// OutDir is the directory of the config file being written: local
	// paths are written relative to it, so the app directory and its
	// config move together. "" writes absolute paths (for stdout).
	OutDir string
}

// Convert converts the manifest at manifestPath. It fails only when the
// manifest cannot be read or is not a Spin manifest at all; everything
// that cannot be converted is in Result.Notes.
func Convert(manifestPath string, o Options) (*Result, error) {
	data, err := os.ReadFile(manifestPath)
	if err != nil {
		return nil, fmt.Errorf("reading the Spin manifest: %w", err)
	}
	abs, err := filepath.Abs(manifestPath)
	if err != nil {
		return nil, err
	}
	return ConvertBytes(data, abs, o)
}

// ConvertBytes converts manifest data; manifestPath (absolute) names it
// in the output and its directory is the application root that relative
// paths in the manifest are relative to.
func ConvertBytes(data []byte, manifestPath string, o Options) (*Result, error) {
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		return nil, fmt.Errorf("%s: not valid TOML: %w", manifestPath, err)
	}
	c := &converter{root: filepath.Dir(manifestPath), outDir: o.OutDir, manifest: manifestPath}
	version := raw["spin_manifest_version"]
	if version == nil {
		version = raw["spin_version"] // v1's older name
	}
	switch version {
	case "1", int64(1):
		c.version = 1
		c.v1(raw)
	case int64(2), "2":
		c.version = 2
		c.v2(raw)
	case nil:
		return nil, fmt.Errorf("%s: no spin_manifest_version: not a Spin manifest", manifestPath)
	default:
		return nil, fmt.Errorf("%s: spin_manifest_version = %v: only versions 1 and 2 are known", manifestPath, version)
	}
	c.order()
	return &Result{Config: c.render(), Modules: len(c.modules), Notes: c.notes}, nil
}

// order puts the modules in Spin's routing precedence, since wagi-fcgi
// (like WAGI) takes the first route that matches in config order while
// Spin takes the most specific: exact routes first, then wildcards with
// the longest prefix first. Of two triggers with the same route Spin keeps
// the last; so does this, reporting the other.
func (c *converter) order() {
	last := map[string]int{}
	for i, m := range c.modules {
		last[m.route] = i
	}
	kept := c.modules[:0:0]
	for i, m := range c.modules {
		if last[m.route] != i {
			c.note(Skipped, m.comment, "route %q is also the route of %s, which Spin uses instead", m.route, c.modules[last[m.route]].comment)
			continue
		}
		kept = append(kept, m)
	}
	rank := func(m module) (int, int) {
		if p, ok := strings.CutSuffix(m.route, "/..."); ok {
			return 1, -strings.Count(p, "/") - len(p)
		}
		return 0, 0
	}
	sort.SliceStable(kept, func(i, j int) bool {
		wi, li := rank(kept[i])
		wj, lj := rank(kept[j])
		if wi != wj {
			return wi < wj
		}
		return li < lj
	})
	c.modules = kept
}

// module is one [[module]] entry to write.
type module struct {
	comment      string
	route        string
	source       string // module = ...
	digest       string // for a URL source
	entrypoint   string // "" = _start
	argv         string
	volumes      [][2]string // guest, source (with ":ro")
	environment  map[string]string
	allowedHosts []string
}

type converter struct {
	version  int
	root     string // the application directory
	outDir   string
	manifest string
	app      string // name and version, for the header
	modules  []module
	notes    []Note
}

func (c *converter) note(l Level, where, format string, args ...any) {
	c.notes = append(c.notes, Note{Level: l, Where: where, Msg: fmt.Sprintf(format, args...)})
}

// unsupported reports each key of m that is set and is not in handled.
func (c *converter) unsupported(where string, m map[string]any, handled []string, reasons map[string]string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if slices.Contains(handled, k) || isEmpty(m[k]) {
			continue
		}
		reason, ok := reasons[k]
		if !ok {
			reason = "not a field wagi-fcgi knows"
		}
		c.note(Ignored, where, "%s: %s", k, reason)
	}
}

func isEmpty(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case string:
		return v == ""
	case []any:
		return len(v) == 0
	case []map[string]any:
		return len(v) == 0
	case map[string]any:
		return len(v) == 0
	}
	return false
}

// Reasons shared by both manifest versions.
var componentReasons = map[string]string{
	"variables":                          "component variables need Spin's variables interface (spin:variables / fermyon:spin/config), which WAGI modules do not use; put the values in environment",
	"config":                             "component config needs Spin's config interface, which WAGI modules do not use; put the values in environment",
	"key_value_stores":                   "no key-value store here (Spin's key-value interface); use a writable volume",
	"sqlite_databases":                   "no SQLite databases here (Spin's sqlite interface); use a writable volume",
	"ai_models":                          "no AI inferencing here (Spin's llm interface)",
	"build":                              "the build command is not run: build with `spin build` first; the config points at the built module",
	"targets":                            "Spin deployment targets have no meaning here",
	"tool":                               "settings for Spin plugins",
	"dependencies":                       "component dependencies are composed into Wasm components; wagi-fcgi runs core modules",
	"dependencies_inherit_configuration": "component dependencies are composed into Wasm components; wagi-fcgi runs core modules",
	"profile":                            "build profiles are not used: the config points at one built module",
}

// app-level reasons.
var appReasons = map[string]string{
	"variables": "application variables feed component variables (Spin's variables interface), which WAGI modules do not use; put the values in each module's environment",
	"targets":   "Spin deployment targets have no meaning here",
	"tool":      "settings for Spin plugins",
}

// v1 converts a version 1 manifest: one app-wide trigger, [[component]]
// entries carrying their own trigger.
func (c *converter) v1(raw map[string]any) {
	c.app = appName(raw)
	c.unsupported("manifest", raw, []string{"spin_manifest_version", "spin_version", "name", "version", "description", "authors", "trigger", "component"}, appReasons)
	trig, _ := raw["trigger"].(map[string]any)
	typ, _ := trig["type"].(string)
	base, _ := trig["base"].(string)
	if base == "" {
		base = "/"
	}
	c.unsupported("trigger", trig, []string{"type", "base"}, nil)
	comps, _ := raw["component"].([]map[string]any)
	if len(comps) == 0 {
		c.note(Skipped, "manifest", "no [[component]] entries")
	}
	for i, comp := range comps {
		id, _ := comp["id"].(string)
		where := fmt.Sprintf("component %q", id)
		if id == "" {
			where = fmt.Sprintf("[[component]] #%d", i+1)
		}
		if typ != "http" {
			c.note(Skipped, where, "the application's trigger is %q, not \"http\": only HTTP requests reach modules here", typ)
			continue
		}
		ct, _ := comp["trigger"].(map[string]any)
		c.unsupported(where+" trigger", ct, []string{"route", "executor"}, nil)
		hosts := hostsV1(comp)
		c.component(where, comp, ct, base, hosts, []string{"id", "source", "trigger", "description", "environment", "files", "exclude_files", "allowed_http_hosts", "allowed_outbound_hosts"})
	}
}

// hostsV1 gathers a v1 component's outbound hosts: allowed_outbound_hosts
// and the older allowed_http_hosts (Spin merges them the same way).
func hostsV1(comp map[string]any) []string {
	return append(stringList(comp["allowed_outbound_hosts"]), httpHosts(stringList(comp["allowed_http_hosts"]))...)
}

// httpHosts turns allowed_http_hosts entries ("example.com",
// "example.com:8080", "insecure:allow-all") into allowed_outbound_hosts
// form, as Spin's own compatibility conversion does: both http and https.
func httpHosts(list []string) []string {
	var out []string
	for _, h := range list {
		switch {
		case h == "insecure:allow-all":
			out = append(out, h)
		case h == "self":
			out = append(out, "http://self")
		case strings.Contains(h, "://"):
			out = append(out, h)
		default:
			out = append(out, "http://"+h, "https://"+h)
		}
	}
	return out
}

// v2 converts a version 2 manifest: [[trigger.http]] entries naming
// [component.<id>] tables (or holding one inline).
func (c *converter) v2(raw map[string]any) {
	c.app = appName(raw["application"])
	c.unsupported("manifest", raw, []string{"spin_manifest_version", "application", "trigger", "component"}, appReasons)
	appT, _ := raw["application"].(map[string]any)
	c.unsupported("application", appT, []string{"name", "version", "description", "authors", "trigger"}, appReasons)
	base := "/"
	if gt, ok := appT["trigger"].(map[string]any); ok {
		for typ, v := range gt {
			m, _ := v.(map[string]any)
			if typ == "http" {
				if b, ok := m["base"].(string); ok && b != "" {
					base = b
				}
				c.unsupported("application.trigger.http", m, []string{"base"}, nil)
				continue
			}
			c.note(Ignored, "application.trigger."+typ, "settings for %s triggers, which wagi-fcgi does not have", typ)
		}
	}
	comps, _ := raw["component"].(map[string]any)
	used := map[string]bool{}
	triggers, _ := raw["trigger"].(map[string]any)
	types := make([]string, 0, len(triggers))
	for typ := range triggers {
		types = append(types, typ)
	}
	sort.Strings(types)
	for _, typ := range types {
		list := tables(triggers[typ])
		if typ != "http" {
			for i, t := range list {
				if id, ok := t["component"].(string); ok {
					used[id] = true
				}
				c.note(Skipped, fmt.Sprintf("trigger.%s #%d", typ, i+1), "%s triggers are not HTTP requests: wagi-fcgi runs modules only for HTTP requests behind the web server", typ)
			}
			continue
		}
		for i, t := range list {
			where := fmt.Sprintf("trigger.http #%d", i+1)
			if r, ok := t["route"].(string); ok {
				where += fmt.Sprintf(" (route %q)", r)
			}
			c.unsupported(where, t, []string{"route", "component", "executor", "id", "static_response", "components"}, map[string]string{
				"dependencies": "trigger dependencies are composed into Wasm components; wagi-fcgi runs core modules",
			})
			if _, ok := t["static_response"]; ok {
				c.note(Skipped, where, "static_response: answer it from the web server instead (for example nginx's `return`)")
				continue
			}
			if !isEmpty(t["components"]) {
				c.note(Ignored, where, "components: extra components (such as middleware) are Spin component composition; only the main component is converted")
			}
			var comp map[string]any
			switch ref := t["component"].(type) {
			case string:
				used[ref] = true
				comp, _ = comps[ref].(map[string]any)
				if comp == nil {
					c.note(Skipped, where, "component %q is not defined in [component]", ref)
					continue
				}
				where += fmt.Sprintf(" component %q", ref)
			case map[string]any:
				comp = ref
				where += " (inline component)"
			default:
				c.note(Skipped, where, "no component")
				continue
			}
			hosts := append(stringList(comp["allowed_outbound_hosts"]), httpHosts(stringList(comp["allowed_http_hosts"]))...)
			c.component(where, comp, t, base, hosts, []string{"source", "description", "environment", "files", "exclude_files", "allowed_http_hosts", "allowed_outbound_hosts"})
		}
	}
	ids := make([]string, 0, len(comps))
	for id := range comps {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if !used[id] {
			c.note(Skipped, fmt.Sprintf("component %q", id), "no trigger uses it")
		}
	}
}

// component converts one component with the HTTP trigger settings trig
// (route, executor) into a module.
func (c *converter) component(where string, comp, trig map[string]any, base string, hosts []string, handled []string) {
	// The executor first: a component that is not WAGI is not runnable
	// here whatever else it says.
	exec, _ := trig["executor"].(map[string]any)
	typ, _ := exec["type"].(string)
	switch typ {
	case "wagi":
	case "", "spin", "http":
		c.note(Skipped, where, "uses Spin's HTTP executor (a Wasm component exporting wasi:http/incoming-handler or the Spin SDK's inbound-http), which wagi-fcgi does not run: it runs WASI preview1 command modules speaking CGI, Spin's `executor = { type = \"wagi\" }`")
		return
	default:
		c.note(Skipped, where, "executor type %q is unknown", typ)
		return
	}
	c.unsupported(where+" executor", exec, []string{"type", "argv", "entrypoint"}, nil)
	m := module{comment: where}

	route, ok := c.route(where, trig["route"], base)
	if !ok {
		return
	}
	m.route = route

	// Spin's default argv is "${SCRIPT_NAME} ${ARGS}", not WAGI's, so it
	// is always written out.
	m.argv = "${SCRIPT_NAME} ${ARGS}"
	if a, ok := exec["argv"].(string); ok {
		m.argv = a
	}
	if err := wagi.CheckArgvTemplate(m.argv); err != nil {
		c.note(Skipped, where, "argv: %v (Spin passes other ${...} through literally; wagi-fcgi cannot)", err)
		return
	}
	if e, ok := exec["entrypoint"].(string); ok && e != "" && e != "_start" {
		// Spin 2 and later refuse it; Spin 1 and WAGI honoured it, and
		// so does wagi-fcgi.
		m.entrypoint = e
	}

	if !c.source(where, comp["source"], &m) {
		return
	}
	if ex := stringList(comp["exclude_files"]); len(ex) > 0 {
		c.note(Skipped, where, "exclude_files %q cannot be honoured: volumes expose whole directories, so the excluded files would be readable; move them out of the mounted directories and drop exclude_files", ex)
		return
	}
	if !c.files(where, comp["files"], &m) {
		return
	}
	if env, ok := comp["environment"].(map[string]any); ok && len(env) > 0 {
		m.environment = map[string]string{}
		for k, v := range env {
			s, ok := v.(string)
			if !ok {
				c.note(Skipped, where, "environment.%s is not a string", k)
				return
			}
			m.environment[k] = s
		}
	}
	m.allowedHosts = c.hosts(where, hosts)
	c.unsupported(where, comp, handled, componentReasons)
	c.modules = append(c.modules, m)
}

// route turns a Spin route into a wagi-fcgi route: the base prepended as
// Spin does (its trailing slash dropped), "/..." kept, a trailing "/*"
// (Spin's other spelling of it) turned into "/...". Named segments
// (":name") and inner wildcards have no equivalent.
func (c *converter) route(where string, v any, base string) (string, bool) {
	var r string
	switch v := v.(type) {
	case string:
		r = v
	case map[string]any:
		if p, _ := v["private"].(bool); p {
			c.note(Skipped, where, "a private endpoint is reached only by Spin's service chaining (http://<component>.spin.internal), which wagi-fcgi does not have")
			return "", false
		}
		c.note(Skipped, where, "route is a table but not { private = true }")
		return "", false
	default:
		c.note(Skipped, where, "no route")
		return "", false
	}
	// Spin's sanitize_with_base: the route made absolute, and one
	// trailing slash taken off the base and off the route.
	if !strings.HasPrefix(r, "/") {
		r = "/" + r
	}
	full := strings.TrimSuffix(base, "/") + strings.TrimSuffix(r, "/")
	if !strings.HasPrefix(full, "/") {
		full = "/" + full
	}
	if strings.HasSuffix(full, "/*") {
		full = strings.TrimSuffix(full, "*") + "..."
	}
	prefix := strings.TrimSuffix(full, "/...")
	for _, seg := range strings.Split(prefix, "/") {
		if strings.HasPrefix(seg, ":") || strings.Contains(seg, "*") {
			c.note(Skipped, where, "route %q: named segments (:name) and inner wildcards have no equivalent; routes here are exact or end in \"/...\"", full)
			return "", false
		}
	}
	if _, err := wagi.ParseRoute(full); err != nil {
		c.note(Skipped, where, "%v", err)
		return "", false
	}
	return full, true
}

// source converts the component's source: a local path (relative to the
// manifest) or { url, digest }.
func (c *converter) source(where string, v any, m *module) bool {
	switch s := v.(type) {
	case string:
		p := c.abs(s)
		switch kind, err := wasmKind(p); {
		case err != nil && os.IsNotExist(err):
			c.note(Warning, where, "source %s does not exist (yet?): build it before `wagi-fcgi check`", p)
		case err != nil:
			c.note(Warning, where, "source %s: %v", p, err)
		case kind == "component":
			c.note(Skipped, where, "source %s is a WebAssembly component; wagi-fcgi runs core modules (WASI preview1), like WAGI", p)
			return false
		}
		m.source = c.local(p)
		return true
	case map[string]any:
		if url, ok := s["url"].(string); ok {
			digest, _ := s["digest"].(string)
			if digest == "" {
				c.note(Skipped, where, "source { url = %q } has no digest", url)
				return false
			}
			m.source, m.digest = url, digest
			return true
		}
		if pkg, ok := s["package"].(string); ok {
			c.note(Skipped, where, "source is the registry package %q: registry (wasm-pkg) sources are not supported; download the module and point the config at the file", pkg)
			return false
		}
	}
	c.note(Skipped, where, "no usable source")
	return false
}

// wasmKind reads a wasm file's preamble: "module", "component" or "" (not
// wasm, or .wat text).
func wasmKind(p string) (string, error) {
	// Without blocking: a FIFO is reported, not waited on.
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return "", err
	} else if !st.Mode().IsRegular() {
		return "", fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	var b [8]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return "", nil
	}
	if !bytes.Equal(b[:4], []byte("\x00asm")) {
		return "", nil
	}
	// Core modules are version 1, layer 0; components have layer 1.
	if b[6] == 1 && b[7] == 0 {
		return "component", nil
	}
	return "module", nil
}

// files converts the component's `files` into read-only volumes.
//
// Spin copies the listed files into a fresh directory; wagi-fcgi mounts
// directories read-only (never following symlinks). So:
//   - a directory path, or { source = dir, destination } → that directory;
//   - a glob pattern, or a single file → the pattern's base directory (its
//     leading segments without glob characters) at the same place, with a
//     warning when that exposes more than the pattern matched;
//   - a pattern whose base is the application directory itself ("*.html",
//     "**/*") or a single file at its top is refused (it would expose the
//     manifest, the sources, everything), and so is a { source = file }
//     placement (a volume cannot rename one file);
//   - a directory outside the application directory (a placement's
//     "../x" or absolute source), or reached through a symbolic link, is
//     refused (see outside).
//
// Refusals skip the whole component: running it without its files would
// only fail later, at request time.
func (c *converter) files(where string, v any, m *module) bool {
	add := func(guest, host string) bool {
		src := c.local(host) + ":ro"
		for _, vol := range m.volumes {
			if vol[0] == guest {
				if vol[1] == src {
					return true
				}
				c.note(Skipped, where, "files: %q would be mounted from both %s and %s", guest, vol[1], src)
				return false
			}
		}
		m.volumes = append(m.volumes, [2]string{guest, src})
		return true
	}
	for _, f := range list(v) {
		switch f := f.(type) {
		case string:
			pattern := strings.TrimPrefix(path.Clean(filepath.ToSlash(f)), "./")
			if pattern == "." || pattern == ".." || strings.HasPrefix(pattern, "../") || strings.HasPrefix(pattern, "/") {
				c.note(Skipped, where, "files: %q is not a path inside the application directory", f)
				return false
			}
			host := c.abs(pattern)
			base := pattern
			glob := hasGlob(pattern)
			if glob {
				base = globBase(pattern)
			} else if st, err := os.Stat(host); err != nil {
				c.note(Skipped, where, "files: %q: %v", f, err)
				return false
			} else if !st.IsDir() {
				base = path.Dir(pattern)
			}
			if base == "." || base == "" {
				c.note(Skipped, where, "files: %q would need the whole application directory mounted at /, exposing the manifest and everything beside it; move the files into a directory and list that", f)
				return false
			}
			if base != pattern && !(glob && pattern == base+"/**/*") {
				c.note(Warning, where, "files: %q is served as the whole directory %q (read-only): the module can read every file in it, not only those the pattern names", f, base)
			}
			if why := c.outside(c.abs(base)); why != "" {
				c.note(Skipped, where, "files: %q: %s", f, why)
				return false
			}
			if !add("/"+base, c.abs(base)) {
				return false
			}
		case map[string]any:
			src, _ := f["source"].(string)
			dst, _ := f["destination"].(string)
			if src == "" || dst == "" {
				c.note(Skipped, where, "files: a placement needs source and destination")
				return false
			}
			if !strings.HasPrefix(dst, "/") {
				dst = "/" + dst
			}
			dst = path.Clean(dst)
			host := c.abs(src)
			if why := c.outside(host); why != "" {
				c.note(Skipped, where, "files: source %q: %s", src, why)
				return false
			}
			st, err := os.Stat(host)
			if err != nil {
				c.note(Skipped, where, "files: source %q: %v", src, err)
				return false
			}
			if !st.IsDir() {
				c.note(Skipped, where, "files: { source = %q } is a single file: volumes are directories and cannot rename a file; put it in a directory and mount that", src)
				return false
			}
			if !add(dst, host) {
				return false
			}
		default:
			c.note(Skipped, where, "files: an entry is neither a path nor { source, destination }")
			return false
		}
	}
	return true
}

// outside says why host, a directory the manifest names, must not become a
// volume, or "" when it may: it must lie strictly inside the application
// directory (a manifest written by someone else must not mount /etc), and
// be reached without a symbolic link, which could lead anywhere and which
// volumes never follow.
func (c *converter) outside(host string) string {
	rel, err := filepath.Rel(c.root, host)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "not a path inside the application directory"
	}
	root, err := filepath.EvalSymlinks(c.root)
	if err != nil {
		return err.Error()
	}
	real, err := filepath.EvalSymlinks(host)
	if err != nil {
		return err.Error()
	}
	if real != filepath.Join(root, rel) {
		return "it is a symbolic link or goes through one (to " + real + "); volumes never follow links: list the directory itself"
	}
	return ""
}

func hasGlob(p string) bool { return strings.ContainsAny(p, "*?[{") }

// globBase is the leading segments of a pattern without glob characters.
func globBase(p string) string {
	segs := strings.Split(p, "/")
	var base []string
	for _, s := range segs {
		if hasGlob(s) {
			break
		}
		base = append(base, s)
	}
	return strings.Join(base, "/")
}

// hosts converts allowed_outbound_hosts to allowed_hosts. HTTP and HTTPS
// entries are kept as written (scheme, host and port, "*.example.com"
// wildcards too); "*://host[:port]" becomes an http and an https entry; a
// "*" port (any port) has no equivalent, so it becomes the scheme's
// default port, with a warning; "*://*:*" and "http(s)://*:*" are
// "insecure:allow-all". Entries for other protocols (redis, mysql,
// postgres, mqtt, tcp), templated ones ("{{ var }}") and service chaining
// ("self", "*.spin.internal") are reported and left out: leaving one out
// can only deny more.
func (c *converter) hosts(where string, list []string) []string {
	var out []string
	addOnce := func(h string) {
		if !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	for _, h := range list {
		if h == "insecure:allow-all" {
			addOnce(h)
			continue
		}
		scheme, rest, ok := strings.Cut(h, "://")
		if !ok {
			c.note(Ignored, where, "allowed_outbound_hosts %q: not scheme://host[:port]", h)
			continue
		}
		host, port, hasPort := strings.Cut(strings.TrimSuffix(rest, "/"), ":")
		switch {
		case strings.Contains(h, "{{"):
			c.note(Ignored, where, "allowed_outbound_hosts %q: templates need Spin's variables; write the host out", h)
			continue
		case scheme != "http" && scheme != "https" && scheme != "*":
			c.note(Ignored, where, "allowed_outbound_hosts %q: only outbound HTTP exists here (wasi_experimental_http)", h)
			continue
		case host == "self" || strings.HasSuffix(host, ".spin.internal"):
			c.note(Ignored, where, "allowed_outbound_hosts %q: service chaining is not supported", h)
			continue
		case host == "*":
			if port == "*" || !hasPort {
				addOnce("insecure:allow-all")
				c.note(Warning, where, "allowed_outbound_hosts %q allows every host: written as \"insecure:allow-all\"", h)
			} else {
				c.note(Ignored, where, "allowed_outbound_hosts %q: any host on one port has no equivalent", h)
			}
			continue
		case strings.Contains(strings.TrimPrefix(host, "*."), "*"):
			c.note(Ignored, where, "allowed_outbound_hosts %q: only a leading \"*.\" wildcard has an equivalent; list the hosts", h)
			continue
		}
		if internalHost(rest) {
			c.note(Warning, where, "allowed_outbound_hosts %q names this machine or a private network (loopback, private, link-local or metadata addresses): the egress proxy lets the module reach it because the entry names it; make sure it should", h)
		}
		entry := host
		if hasPort && port != "*" {
			entry += ":" + port
		} else if port == "*" {
			c.note(Warning, where, "allowed_outbound_hosts %q: any port has no equivalent; only the scheme's default port is allowed", h)
		}
		if scheme == "*" {
			addOnce("http://" + entry)
			addOnce("https://" + entry)
			continue
		}
		addOnce(scheme + "://" + entry)
	}
	return out
}

// internalHost reports whether hostPort ("host[:port]", IPv6 in brackets)
// names this machine or a private network: what the egress proxy refuses
// unless an entry names it.
func internalHost(hostPort string) bool {
	u, err := url.Parse("x://" + strings.TrimSuffix(hostPort, "/"))
	if err != nil {
		return false
	}
	h := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && (ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsUnspecified())
}

// abs is a manifest-relative path made absolute.
func (c *converter) abs(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(c.root, filepath.FromSlash(p))
}

// local writes an absolute path for the config: relative to the output
// file's directory when there is one.
func (c *converter) local(abs string) string {
	if c.outDir == "" {
		return abs
	}
	out, err := filepath.Abs(c.outDir)
	if err != nil {
		return abs
	}
	rel, err := filepath.Rel(out, abs)
	if err != nil {
		return abs
	}
	if !strings.HasPrefix(rel, "..") {
		rel = "./" + rel
	}
	return filepath.ToSlash(rel)
}

// render writes the config.
func (c *converter) render() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# wagi-fcgi config written by `wagi-fcgi import` from %s (Spin manifest version %d)", c.manifest, c.version)
	if c.app != "" {
		fmt.Fprintf(&b, ",\n# application %s", c.app)
	}
	b.WriteString(".\n# Review it, add listen and state_dir as needed, then run `wagi-fcgi check -c` on it.\n\n")
	b.WriteString("# Spin has no built-in /healthz route; WAGI and wagi-fcgi do. Off, so the\n# application's own routes answer /healthz as they did under Spin.\nhealthz = false\n")
	for _, m := range c.modules {
		fmt.Fprintf(&b, "\n# %s\n[[module]]\n", m.comment)
		fmt.Fprintf(&b, "route = %s\n", quote(m.route))
		fmt.Fprintf(&b, "module = %s\n", quote(m.source))
		if m.digest != "" {
			fmt.Fprintf(&b, "digest = %s\n", quote(m.digest))
		}
		if m.entrypoint != "" {
			fmt.Fprintf(&b, "entrypoint = %s\n", quote(m.entrypoint))
		}
		fmt.Fprintf(&b, "argv = %s\n", quote(m.argv))
		if len(m.volumes) > 0 {
			parts := make([]string, len(m.volumes))
			for i, v := range m.volumes {
				parts[i] = quote(v[0]) + " = " + quote(v[1])
			}
			fmt.Fprintf(&b, "volumes = { %s }\n", strings.Join(parts, ", "))
		}
		if len(m.environment) > 0 {
			keys := make([]string, 0, len(m.environment))
			for k := range m.environment {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			parts := make([]string, len(keys))
			for i, k := range keys {
				parts[i] = key(k) + " = " + quote(m.environment[k])
			}
			fmt.Fprintf(&b, "environment = { %s }\n", strings.Join(parts, ", "))
		}
		if len(m.allowedHosts) > 0 {
			parts := make([]string, len(m.allowedHosts))
			for i, h := range m.allowedHosts {
				parts[i] = quote(h)
			}
			fmt.Fprintf(&b, "allowed_hosts = [%s]\n", strings.Join(parts, ", "))
		}
	}
	return b.Bytes()
}

// quote writes s as a TOML basic string.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// key writes a TOML key: bare when it can be, else quoted.
func key(k string) string {
	if k != "" && strings.IndexFunc(k, func(r rune) bool {
		return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}) < 0 {
		return k
	}
	return quote(k)
}

func appName(v any) string {
	m, _ := v.(map[string]any)
	name, _ := m["name"].(string)
	if ver, _ := m["version"].(string); ver != "" {
		name += " " + ver
	}
	return name
}

func stringList(v any) []string {
	var out []string
	for _, e := range list(v) {
		if s, ok := e.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// list is a TOML array as []any, whatever the decoder made of it.
func list(v any) []any {
	switch v := v.(type) {
	case []any:
		return v
	case []map[string]any:
		out := make([]any, len(v))
		for i, m := range v {
			out[i] = m
		}
		return out
	}
	return nil
}

// tables is a TOML array of tables.
func tables(v any) []map[string]any {
	var out []map[string]any
	for _, e := range list(v) {
		if m, ok := e.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}
