package wagi

import (
	"slices"
	"strconv"
	"strings"
)

// RequestInfo is what Env and Argv need to know about one request.
type RequestInfo struct {
	// Params are the FastCGI params as the web server sent them
	// (REQUEST_METHOD, REQUEST_URI, QUERY_STRING, SERVER_NAME,
	// SERVER_PORT, SERVER_PROTOCOL, REMOTE_ADDR, REMOTE_PORT, HTTPS,
	// CONTENT_TYPE, AUTH_TYPE, REMOTE_USER, HTTP_*, ...). They are only
	// read.
	Params map[string]string

	// ScriptName and RawPathInfo come from Route.Match (or from the
	// matched sub-route).
	ScriptName, RawPathInfo string

	// MatchedRoute is the matched route's pattern as written.
	MatchedRoute string

	// ContentLength is the real length of the request body in bytes.
	ContentLength int64

	// ServerSoftware is "wagi-fcgi/<version>".
	ServerSoftware string

	// ModuleEnv is the module's environment from the config: the global
	// env (env_file, env, --env-file, --env) with the module's own
	// `environment` over it (config.Module.Environment). It goes first;
	// a CGI variable of the same name wins.
	ModuleEnv map[string]string

	// ArgvTemplate is the module's `argv`; "" selects the default argv.
	ArgvTemplate string
}

// numCGIVars is how many variables Env always sets besides HTTP_*.
const numCGIVars = 20

// isCGIVar reports whether name is one of the variables Env always sets.
func isCGIVar(name string) bool {
	switch name {
	case "GATEWAY_INTERFACE", "SERVER_SOFTWARE", "SERVER_PROTOCOL",
		"SERVER_NAME", "SERVER_PORT", "REQUEST_METHOD", "QUERY_STRING",
		"SCRIPT_NAME", "PATH_INFO", "PATH_TRANSLATED", "X_RAW_PATH_INFO",
		"X_MATCHED_ROUTE", "X_FULL_URL", "REMOTE_ADDR", "REMOTE_HOST",
		"REMOTE_PORT", "AUTH_TYPE", "REMOTE_USER", "CONTENT_LENGTH",
		"CONTENT_TYPE":
		return true
	}
	return false
}

// RawPath returns the raw (percent-encoded) request path without the
// query: the path of REQUEST_URI; without REQUEST_URI, DOCUMENT_URI; without
// that, SCRIPT_NAME + PATH_INFO as the web server sent them. An
// absolute-form REQUEST_URI ("http://host/p?q") gives its path ("/p").
func RawPath(params map[string]string) string {
	if uri, ok := params["REQUEST_URI"]; ok && uri != "" {
		if i := strings.IndexAny(uri, "?#"); i >= 0 {
			uri = uri[:i]
		}
		if uri != "" && uri[0] != '/' {
			// Absolute form: scheme://authority/path.
			if i := strings.Index(uri, "://"); i >= 0 {
				rest := uri[i+3:]
				if j := strings.IndexByte(rest, '/'); j >= 0 {
					return rest[j:]
				}
				return "/"
			}
		}
		return uri
	}
	if du := params["DOCUMENT_URI"]; du != "" {
		return du
	}
	return params["SCRIPT_NAME"] + params["PATH_INFO"]
}

// QueryString returns the raw query string without the '?': the
// QUERY_STRING param when the web server sent one (even empty), else the
// part of REQUEST_URI after '?'.
func QueryString(params map[string]string) string {
	if q, ok := params["QUERY_STRING"]; ok {
		return q
	}
	uri := params["REQUEST_URI"]
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		q := uri[i+1:]
		if j := strings.IndexByte(q, '#'); j >= 0 {
			q = q[:j]
		}
		return q
	}
	return ""
}

// serverName is the host part of the Host header, else the web server's
// SERVER_NAME. An IPv6 literal keeps its brackets.
func serverName(params map[string]string) string {
	host := strings.TrimSpace(params["HTTP_HOST"])
	if host != "" {
		if host[0] == '[' {
			if i := strings.IndexByte(host, ']'); i >= 0 {
				return host[:i+1]
			}
		} else if i := strings.IndexByte(host, ':'); i >= 0 {
			host = host[:i]
		}
		if host != "" {
			return host
		}
	}
	return params["SERVER_NAME"]
}

// excludedHeader reports whether an HTTP_* param must never reach a module.
func excludedHeader(name string) bool {
	switch name {
	case "HTTP_AUTHORIZATION", "HTTP_CONNECTION", "HTTP_PROXY":
		return true
	}
	return false
}

// validEnv reports whether a variable can be given to a module at all:
// wazero rejects an empty key, '=' in a key and NUL anywhere.
func validEnv(key, value string) bool {
	return key != "" && strings.IndexByte(key, '=') < 0 &&
		strings.IndexByte(key, 0) < 0 && strings.IndexByte(value, 0) < 0
}

// Env returns the environment of a module serving the request, as
// "KEY=VALUE" strings in a deterministic order: the module's own
// `environment` first (sorted by key, minus any key a CGI variable below
// also sets), then the CGI variables of the contract in a fixed order
// (every one present, empty when it has no value), then the HTTP_* request
// headers sorted by name (never HTTP_AUTHORIZATION, HTTP_CONNECTION or
// HTTP_PROXY).
//
// A variable that cannot be passed to a module (empty key, '=' in the key,
// NUL in key or value; for example PATH_INFO decoded from "%00") is left
// out. Nothing of the server's own process environment is ever included.
func Env(ri *RequestInfo) []string {
	p := ri.Params
	rawPath := RawPath(p)
	query := QueryString(p)
	name := serverName(p)
	port := p["SERVER_PORT"]
	pathInfo := percentDecode(ri.RawPathInfo)

	var headers []string // HTTP_* param names, sorted below
	for k, v := range p {
		if strings.HasPrefix(k, "HTTP_") && !excludedHeader(k) && validEnv(k, v) {
			headers = append(headers, k)
		}
	}
	slices.Sort(headers)

	var modKeys []string
	for k, v := range ri.ModuleEnv {
		if !validEnv(k, v) || isCGIVar(k) {
			continue
		}
		if strings.HasPrefix(k, "HTTP_") {
			if _, found := slices.BinarySearch(headers, k); found {
				continue // the request header wins
			}
		}
		modKeys = append(modKeys, k)
	}
	slices.Sort(modKeys)

	// Collect the pairs, then lay them all out in one string and slice it:
	// two allocations for the whole environment instead of one per
	// variable.
	type kv struct{ k, v string }
	pairs := make([]kv, 0, len(modKeys)+numCGIVars+len(headers))
	add := func(k, v string) {
		if validEnv(k, v) {
			pairs = append(pairs, kv{k, v})
		}
	}
	for _, k := range modKeys {
		pairs = append(pairs, kv{k, ri.ModuleEnv[k]})
	}

	scheme := "http://"
	if strings.EqualFold(p["HTTPS"], "on") {
		scheme = "https://"
	}
	var fullURL strings.Builder
	fullURL.Grow(len(scheme) + len(name) + 1 + len(port) + len(rawPath) + 1 + len(query))
	fullURL.WriteString(scheme)
	fullURL.WriteString(name)
	if port != "" {
		fullURL.WriteByte(':')
		fullURL.WriteString(port)
	}
	fullURL.WriteString(rawPath)
	if query != "" {
		fullURL.WriteByte('?')
		fullURL.WriteString(query)
	}

	add("GATEWAY_INTERFACE", "CGI/1.1")
	add("SERVER_SOFTWARE", ri.ServerSoftware)
	add("SERVER_PROTOCOL", p["SERVER_PROTOCOL"])
	add("SERVER_NAME", name)
	add("SERVER_PORT", port)
	add("REQUEST_METHOD", p["REQUEST_METHOD"])
	add("QUERY_STRING", query)
	add("SCRIPT_NAME", ri.ScriptName)
	add("PATH_INFO", pathInfo)
	add("PATH_TRANSLATED", pathInfo)
	add("X_RAW_PATH_INFO", ri.RawPathInfo)
	add("X_MATCHED_ROUTE", ri.MatchedRoute)
	add("X_FULL_URL", fullURL.String())
	add("REMOTE_ADDR", p["REMOTE_ADDR"])
	add("REMOTE_HOST", p["REMOTE_ADDR"])
	add("REMOTE_PORT", p["REMOTE_PORT"])
	add("AUTH_TYPE", p["AUTH_TYPE"])
	add("REMOTE_USER", p["REMOTE_USER"])
	add("CONTENT_LENGTH", strconv.FormatInt(max(ri.ContentLength, 0), 10))
	add("CONTENT_TYPE", p["CONTENT_TYPE"])
	for _, k := range headers {
		pairs = append(pairs, kv{k, p[k]})
	}

	total := 0
	for _, kv := range pairs {
		total += len(kv.k) + 1 + len(kv.v)
	}
	var b strings.Builder
	b.Grow(total)
	for _, kv := range pairs {
		b.WriteString(kv.k)
		b.WriteByte('=')
		b.WriteString(kv.v)
	}
	all := b.String()
	env := make([]string, len(pairs))
	off := 0
	for i, kv := range pairs {
		n := len(kv.k) + 1 + len(kv.v)
		env[i] = all[off : off+n]
		off += n
	}
	return env
}

// percentDecode decodes %XX escapes; '+' stays '+' (this is a path), and a
// '%' not followed by two hex digits is kept as it is.
func percentDecode(s string) string {
	i := strings.IndexByte(s, '%')
	if i < 0 {
		return s
	}
	b := make([]byte, 0, len(s))
	b = append(b, s[:i]...)
	for ; i < len(s); i++ {
		c := s[i]
		if c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
			continue
		}
		b = append(b, c)
	}
	return string(b)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}
