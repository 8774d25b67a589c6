package wagi

import (
	"reflect"
	"strings"
	"testing"
)

// nginxParams are the params nginx sends with the stock fastcgi_params for
// "GET /hello/a%3bb/c?x=1&y=2" on plain HTTP, with no request body: nginx
// sends CONTENT_TYPE and CONTENT_LENGTH as empty strings and HTTPS not at
// all.
func nginxParams() map[string]string {
	return map[string]string{
		"QUERY_STRING":       "x=1&y=2",
		"REQUEST_METHOD":     "GET",
		"CONTENT_TYPE":       "",
		"CONTENT_LENGTH":     "",
		"SCRIPT_NAME":        "/hello/a;b/c",
		"REQUEST_URI":        "/hello/a%3bb/c?x=1&y=2",
		"DOCUMENT_URI":       "/hello/a;b/c",
		"DOCUMENT_ROOT":      "/usr/share/nginx/html",
		"SERVER_PROTOCOL":    "HTTP/1.1",
		"REQUEST_SCHEME":     "http",
		"GATEWAY_INTERFACE":  "CGI/1.1",
		"SERVER_SOFTWARE":    "nginx/1.24.0",
		"REMOTE_ADDR":        "192.0.2.7",
		"REMOTE_PORT":        "51234",
		"SERVER_ADDR":        "192.0.2.1",
		"SERVER_PORT":        "8080",
		"SERVER_NAME":        "_",
		"REDIRECT_STATUS":    "200",
		"HTTP_HOST":          "example.com:8080",
		"HTTP_USER_AGENT":    "curl/8.5.0",
		"HTTP_ACCEPT":        "*/*",
		"HTTP_COOKIE":        "a=1; b=2",
		"HTTP_X_FORWARDED":   "one, two",
		"HTTP_AUTHORIZATION": "Basic c2VjcmV0",
		"HTTP_CONNECTION":    "keep-alive",
		"HTTP_PROXY":         "http://evil.example/",
	}
}

// apacheParams are what Apache's mod_proxy_fcgi sends for an authenticated
// "GET /app/?q=go HTTP/1.1" over TLS: HTTPS=on, no CONTENT_LENGTH or
// CONTENT_TYPE at all, AUTH_TYPE and REMOTE_USER set.
func apacheParams() map[string]string {
	return map[string]string{
		"HTTPS":             "on",
		"SSL_TLS_SNI":       "www.example.org",
		"HTTP_HOST":         "www.example.org",
		"HTTP_USER_AGENT":   "Mozilla/5.0",
		"PATH":              "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
		"SERVER_SIGNATURE":  "",
		"SERVER_SOFTWARE":   "Apache/2.4.58 (Debian)",
		"SERVER_NAME":       "www.example.org",
		"SERVER_ADDR":       "198.51.100.1",
		"SERVER_PORT":       "443",
		"REMOTE_ADDR":       "2001:db8::7",
		"DOCUMENT_ROOT":     "/var/www/html",
		"REQUEST_SCHEME":    "https",
		"CONTEXT_PREFIX":    "",
		"SCRIPT_FILENAME":   "proxy:fcgi://localhost/app/",
		"REMOTE_PORT":       "40000",
		"REMOTE_USER":       "alice",
		"AUTH_TYPE":         "Basic",
		"GATEWAY_INTERFACE": "CGI/1.1",
		"SERVER_PROTOCOL":   "HTTP/1.1",
		"REQUEST_METHOD":    "GET",
		"QUERY_STRING":      "q=go",
		"REQUEST_URI":       "/app/?q=go",
		"SCRIPT_NAME":       "/app/",
	}
}

func TestEnvWithNginxParamsIsExactlyTheContract(t *testing.T) {
	ri := &RequestInfo{
		Params:         nginxParams(),
		ScriptName:     "/hello",
		RawPathInfo:    "/a%3bb/c",
		MatchedRoute:   "/hello/...",
		ServerSoftware: "wagi-fcgi/1.2.3",
		ModuleEnv:      map[string]string{"GREETING": "hi", "A_FIRST": "1"},
	}
	want := []string{
		"A_FIRST=1",
		"GREETING=hi",
		"GATEWAY_INTERFACE=CGI/1.1",
		"SERVER_SOFTWARE=wagi-fcgi/1.2.3",
		"SERVER_PROTOCOL=HTTP/1.1",
		"SERVER_NAME=example.com",
		"SERVER_PORT=8080",
		"REQUEST_METHOD=GET",
		"QUERY_STRING=x=1&y=2",
		"SCRIPT_NAME=/hello",
		"PATH_INFO=/a;b/c",
		"PATH_TRANSLATED=/a;b/c",
		"X_RAW_PATH_INFO=/a%3bb/c",
		"X_MATCHED_ROUTE=/hello/...",
		"X_FULL_URL=http://example.com:8080/hello/a%3bb/c?x=1&y=2",
		"REMOTE_ADDR=192.0.2.7",
		"REMOTE_HOST=192.0.2.7",
		"REMOTE_PORT=51234",
		"AUTH_TYPE=",
		"REMOTE_USER=",
		"CONTENT_LENGTH=0",
		"CONTENT_TYPE=",
		"HTTP_ACCEPT=*/*",
		"HTTP_COOKIE=a=1; b=2",
		"HTTP_HOST=example.com:8080",
		"HTTP_USER_AGENT=curl/8.5.0",
		"HTTP_X_FORWARDED=one, two",
	}
	got := Env(ri)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Env() =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if again := Env(ri); !reflect.DeepEqual(again, got) {
		t.Errorf("a second Env() differs: the order is not deterministic")
	}
}

func TestEnvWithApacheParamsIsExactlyTheContract(t *testing.T) {
	ri := &RequestInfo{
		Params:         apacheParams(),
		ScriptName:     "/app",
		RawPathInfo:    "/",
		MatchedRoute:   "/app/...",
		ServerSoftware: "wagi-fcgi/dev",
	}
	want := []string{
		"GATEWAY_INTERFACE=CGI/1.1",
		"SERVER_SOFTWARE=wagi-fcgi/dev",
		"SERVER_PROTOCOL=HTTP/1.1",
		"SERVER_NAME=www.example.org",
		"SERVER_PORT=443",
		"REQUEST_METHOD=GET",
		"QUERY_STRING=q=go",
		"SCRIPT_NAME=/app",
		"PATH_INFO=/",
		"PATH_TRANSLATED=/",
		"X_RAW_PATH_INFO=/",
		"X_MATCHED_ROUTE=/app/...",
		"X_FULL_URL=https://www.example.org:443/app/?q=go",
		"REMOTE_ADDR=2001:db8::7",
		"REMOTE_HOST=2001:db8::7",
		"REMOTE_PORT=40000",
		"AUTH_TYPE=Basic",
		"REMOTE_USER=alice",
		"CONTENT_LENGTH=0",
		"CONTENT_TYPE=",
		"HTTP_HOST=www.example.org",
		"HTTP_USER_AGENT=Mozilla/5.0",
	}
	if got := Env(ri); !reflect.DeepEqual(got, want) {
		t.Errorf("Env() =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// envMap turns Env's result into a map, failing on a repeated key.
func envMap(t *testing.T, env []string) map[string]string {
	t.Helper()
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("env entry %q has no '='", kv)
		}
		if _, dup := m[k]; dup {
			t.Fatalf("env has %s twice", k)
		}
		m[k] = v
	}
	return m
}

func TestEnvVariables(t *testing.T) {
	base := func() *RequestInfo {
		return &RequestInfo{
			Params:         nginxParams(),
			ScriptName:     "/hello",
			RawPathInfo:    "/a%3bb/c",
			MatchedRoute:   "/hello/...",
			ServerSoftware: "wagi-fcgi/test",
		}
	}
	tests := []struct {
		name   string
		change func(ri *RequestInfo)
		key    string
		want   string // "<absent>" when the variable must not be set
	}{
		{name: "GATEWAY_INTERFACE is CGI/1.1", key: "GATEWAY_INTERFACE", want: "CGI/1.1"},
		{name: "SERVER_SOFTWARE is ours, not the web server's", key: "SERVER_SOFTWARE", want: "wagi-fcgi/test"},
		{name: "SERVER_PROTOCOL is the web server's", key: "SERVER_PROTOCOL", want: "HTTP/1.1"},
		{name: "REQUEST_METHOD is the web server's", change: func(ri *RequestInfo) { ri.Params["REQUEST_METHOD"] = "POST" }, key: "REQUEST_METHOD", want: "POST"},
		{name: "QUERY_STRING is raw without the question mark", change: func(ri *RequestInfo) { ri.Params["QUERY_STRING"] = "a=%20b&c" }, key: "QUERY_STRING", want: "a=%20b&c"},
		{name: "QUERY_STRING falls back to the request URI", change: func(ri *RequestInfo) { delete(ri.Params, "QUERY_STRING") }, key: "QUERY_STRING", want: "x=1&y=2"},
		{name: "REMOTE_ADDR is the web server's", key: "REMOTE_ADDR", want: "192.0.2.7"},
		{name: "REMOTE_PORT is the web server's", key: "REMOTE_PORT", want: "51234"},
		{name: "REMOTE_HOST is REMOTE_ADDR without DNS", key: "REMOTE_HOST", want: "192.0.2.7"},
		{name: "AUTH_TYPE is empty when not sent", key: "AUTH_TYPE", want: ""},
		{name: "AUTH_TYPE is passed when sent", change: func(ri *RequestInfo) { ri.Params["AUTH_TYPE"] = "Digest" }, key: "AUTH_TYPE", want: "Digest"},
		{name: "REMOTE_USER is passed when sent", change: func(ri *RequestInfo) { ri.Params["REMOTE_USER"] = "bob" }, key: "REMOTE_USER", want: "bob"},
		{name: "SERVER_NAME is the host part of the Host header", key: "SERVER_NAME", want: "example.com"},
		{name: "SERVER_NAME keeps the brackets of an IPv6 host", change: func(ri *RequestInfo) { ri.Params["HTTP_HOST"] = "[2001:db8::1]:8080" }, key: "SERVER_NAME", want: "[2001:db8::1]"},
		{name: "SERVER_NAME takes a Host header without a port whole", change: func(ri *RequestInfo) { ri.Params["HTTP_HOST"] = "h.example" }, key: "SERVER_NAME", want: "h.example"},
		{name: "SERVER_NAME falls back to the web server's without a Host header", change: func(ri *RequestInfo) { delete(ri.Params, "HTTP_HOST") }, key: "SERVER_NAME", want: "_"},
		{name: "SERVER_NAME falls back to the web server's with an empty Host header", change: func(ri *RequestInfo) { ri.Params["HTTP_HOST"] = "" }, key: "SERVER_NAME", want: "_"},
		{name: "SERVER_PORT is the web server's even when the Host header names another", change: func(ri *RequestInfo) { ri.Params["HTTP_HOST"] = "example.com:9999" }, key: "SERVER_PORT", want: "8080"},
		{name: "CONTENT_LENGTH is 0 without a body even when sent empty", key: "CONTENT_LENGTH", want: "0"},
		{name: "CONTENT_LENGTH is the real body length, not the param", change: func(ri *RequestInfo) { ri.ContentLength = 42; ri.Params["CONTENT_LENGTH"] = "7" }, key: "CONTENT_LENGTH", want: "42"},
		{name: "CONTENT_TYPE is the request's", change: func(ri *RequestInfo) { ri.Params["CONTENT_TYPE"] = "application/json" }, key: "CONTENT_TYPE", want: "application/json"},
		{name: "CONTENT_TYPE is empty when absent", change: func(ri *RequestInfo) { delete(ri.Params, "CONTENT_TYPE") }, key: "CONTENT_TYPE", want: ""},
		{name: "SCRIPT_NAME is what the route match gave", key: "SCRIPT_NAME", want: "/hello"},
		{name: "PATH_INFO is percent-decoded", key: "PATH_INFO", want: "/a;b/c"},
		{name: "PATH_INFO keeps a plus sign", change: func(ri *RequestInfo) { ri.RawPathInfo = "/a+b%2B" }, key: "PATH_INFO", want: "/a+b+"},
		{name: "PATH_INFO keeps a malformed escape as it is", change: func(ri *RequestInfo) { ri.RawPathInfo = "/100%/x%4" }, key: "PATH_INFO", want: "/100%/x%4"},
		{name: "PATH_INFO decodes an encoded slash", change: func(ri *RequestInfo) { ri.RawPathInfo = "/a%2Fb" }, key: "PATH_INFO", want: "/a/b"},
		{name: "PATH_INFO is empty for an exact route", change: func(ri *RequestInfo) { ri.RawPathInfo = "" }, key: "PATH_INFO", want: ""},
		{name: "PATH_INFO decoding to NUL is left out", change: func(ri *RequestInfo) { ri.RawPathInfo = "/a%00b" }, key: "PATH_INFO", want: "<absent>"},
		{name: "PATH_TRANSLATED is the same as PATH_INFO", key: "PATH_TRANSLATED", want: "/a;b/c"},
		{name: "X_RAW_PATH_INFO is not decoded", key: "X_RAW_PATH_INFO", want: "/a%3bb/c"},
		{name: "X_RAW_PATH_INFO keeps an encoded NUL", change: func(ri *RequestInfo) { ri.RawPathInfo = "/a%00b" }, key: "X_RAW_PATH_INFO", want: "/a%00b"},
		{name: "X_MATCHED_ROUTE is the pattern as written", key: "X_MATCHED_ROUTE", want: "/hello/..."},
		{name: "X_FULL_URL is http by default", key: "X_FULL_URL", want: "http://example.com:8080/hello/a%3bb/c?x=1&y=2"},
		{name: "X_FULL_URL is https when HTTPS is on", change: func(ri *RequestInfo) { ri.Params["HTTPS"] = "on" }, key: "X_FULL_URL", want: "https://example.com:8080/hello/a%3bb/c?x=1&y=2"},
		{name: "X_FULL_URL stays http when HTTPS is empty", change: func(ri *RequestInfo) { ri.Params["HTTPS"] = "" }, key: "X_FULL_URL", want: "http://example.com:8080/hello/a%3bb/c?x=1&y=2"},
		{name: "X_FULL_URL has no question mark without a query", change: func(ri *RequestInfo) {
			ri.Params["QUERY_STRING"] = ""
			ri.Params["REQUEST_URI"] = "/hello/a%3bb/c"
		}, key: "X_FULL_URL", want: "http://example.com:8080/hello/a%3bb/c"},
		{name: "X_FULL_URL uses the path of an absolute-form request URI", change: func(ri *RequestInfo) { ri.Params["REQUEST_URI"] = "http://example.com:8080/p?x=1&y=2" }, key: "X_FULL_URL", want: "http://example.com:8080/p?x=1&y=2"},
		{name: "HTTP headers pass through", key: "HTTP_USER_AGENT", want: "curl/8.5.0"},
		{name: "a header sent twice keeps the web server's join", key: "HTTP_X_FORWARDED", want: "one, two"},
		{name: "HTTP_AUTHORIZATION never reaches a module", key: "HTTP_AUTHORIZATION", want: "<absent>"},
		{name: "HTTP_CONNECTION never reaches a module", key: "HTTP_CONNECTION", want: "<absent>"},
		{name: "HTTP_PROXY never reaches a module", key: "HTTP_PROXY", want: "<absent>"},
		{name: "a header with NUL in its value is left out", change: func(ri *RequestInfo) { ri.Params["HTTP_X_BAD"] = "a\x00b" }, key: "HTTP_X_BAD", want: "<absent>"},
		{name: "a header with '=' in its name is left out", change: func(ri *RequestInfo) { ri.Params["HTTP_X=Y"] = "v" }, key: "HTTP_X", want: "<absent>"},
		{name: "web server params outside the contract are not passed", key: "DOCUMENT_ROOT", want: "<absent>"},
		{name: "REQUEST_URI is not passed", key: "REQUEST_URI", want: "<absent>"},
		{name: "REDIRECT_STATUS is not passed", key: "REDIRECT_STATUS", want: "<absent>"},
		{name: "a module variable is passed", change: func(ri *RequestInfo) { ri.ModuleEnv = map[string]string{"GREETING": "hi"} }, key: "GREETING", want: "hi"},
		{name: "a CGI variable wins over a module variable", change: func(ri *RequestInfo) { ri.ModuleEnv = map[string]string{"SCRIPT_NAME": "/fake"} }, key: "SCRIPT_NAME", want: "/hello"},
		{name: "a request header wins over a module variable", change: func(ri *RequestInfo) { ri.ModuleEnv = map[string]string{"HTTP_ACCEPT": "text/fake"} }, key: "HTTP_ACCEPT", want: "*/*"},
		{name: "a module HTTP_ variable with no such header is passed", change: func(ri *RequestInfo) { ri.ModuleEnv = map[string]string{"HTTP_X_MODULE": "m"} }, key: "HTTP_X_MODULE", want: "m"},
		{name: "a module variable with NUL is left out", change: func(ri *RequestInfo) { ri.ModuleEnv = map[string]string{"BAD": "a\x00"} }, key: "BAD", want: "<absent>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ri := base()
			if tt.change != nil {
				tt.change(ri)
			}
			env := envMap(t, Env(ri))
			got, ok := env[tt.key]
			if !ok {
				got = "<absent>"
			}
			if got != tt.want {
				t.Errorf("%s = %q, want %q", tt.key, got, tt.want)
			}
		})
	}
}

func TestEnvNeverHoldsWhatWazeroRejects(t *testing.T) {
	ri := &RequestInfo{
		Params:      map[string]string{"HTTP_X": "\x00", "HTTP_A=B": "c", "REQUEST_URI": "/%00"},
		ScriptName:  "/",
		RawPathInfo: "/%00",
		ModuleEnv:   map[string]string{"": "empty key", "K=V": "x", "N\x00UL": "y", "OK": "fine"},
	}
	for _, kv := range Env(ri) {
		k, v, _ := strings.Cut(kv, "=")
		if k == "" || strings.ContainsRune(kv, 0) || strings.Contains(k, "=") {
			t.Errorf("env holds %q (key %q, value %q)", kv, k, v)
		}
	}
}

func TestRawPath(t *testing.T) {
	tests := []struct {
		name   string
		params map[string]string
		want   string
	}{
		{name: "the request URI's path is used without the query", params: map[string]string{"REQUEST_URI": "/a%20b/c?x=1"}, want: "/a%20b/c"},
		{name: "a request URI without a query is used whole", params: map[string]string{"REQUEST_URI": "/a/b"}, want: "/a/b"},
		{name: "an absolute-form request URI gives its path", params: map[string]string{"REQUEST_URI": "https://h.example:8443/p/q?x"}, want: "/p/q"},
		{name: "an absolute-form request URI without a path gives the root", params: map[string]string{"REQUEST_URI": "http://h.example"}, want: "/"},
		{name: "the document URI is the first fallback", params: map[string]string{"DOCUMENT_URI": "/doc", "SCRIPT_NAME": "/s", "PATH_INFO": "/p"}, want: "/doc"},
		{name: "script name and path info are the last fallback", params: map[string]string{"SCRIPT_NAME": "/s", "PATH_INFO": "/p"}, want: "/s/p"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RawPath(tt.params); got != tt.want {
				t.Errorf("RawPath() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestQueryString(t *testing.T) {
	tests := []struct {
		name   string
		params map[string]string
		want   string
	}{
		{name: "the QUERY_STRING param is used as sent", params: map[string]string{"QUERY_STRING": "a=1", "REQUEST_URI": "/?b=2"}, want: "a=1"},
		{name: "an empty QUERY_STRING param is believed", params: map[string]string{"QUERY_STRING": "", "REQUEST_URI": "/?b=2"}, want: ""},
		{name: "without QUERY_STRING the request URI's query is used", params: map[string]string{"REQUEST_URI": "/?b=2&c"}, want: "b=2&c"},
		{name: "without either there is no query", params: map[string]string{}, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := QueryString(tt.params); got != tt.want {
				t.Errorf("QueryString() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestArgv(t *testing.T) {
	tests := []struct {
		name     string
		uri      string
		template string
		want     []string
	}{
		{name: "the default argv is the raw path alone without a query", uri: "/hello/a%20b", want: []string{"/hello/a%20b"}},
		{name: "the default argv splits the query on ampersands", uri: "/hello?a=1&b=2", want: []string{"/hello", "a=1", "b=2"}},
		{name: "the default argv keeps the query raw", uri: "/hello?a=%20&b+c", want: []string{"/hello", "a=%20", "b+c"}},
		{name: "the default argv keeps empty items", uri: "/p?a&&b&", want: []string{"/p", "a", "", "b", ""}},
		{name: "the default argv of a lone ampersand is two empty items", uri: "/p?&", want: []string{"/p", "", ""}},
		{name: "the default argv of an empty query adds nothing", uri: "/p?", want: []string{"/p"}},
		{name: "the README template gives the path and the query items", uri: "/hello?a=1&b=2", template: "${SCRIPT_NAME} ${ARGS}", want: []string{"/hello", "a=1", "b=2"}},
		{name: "the README template drops empty items", uri: "/hello?a&&b", template: "${SCRIPT_NAME} ${ARGS}", want: []string{"/hello", "a", "b"}},
		{name: "the README template without a query gives the path alone", uri: "/hello", template: "${SCRIPT_NAME} ${ARGS}", want: []string{"/hello"}},
		{name: "a template may add fixed words", uri: "/x?v", template: "prog --verbose ${ARGS} --from=${SCRIPT_NAME}", want: []string{"prog", "--verbose", "v", "--from=/x"}},
		{name: "a template is split on any white space", uri: "/x", template: "  a\tb\n${SCRIPT_NAME}  ", want: []string{"a", "b", "/x"}},
		{name: "a template variable inside the path is not expanded", uri: "/${ARGS}?q", template: "${SCRIPT_NAME}", want: []string{"/${ARGS}"}},
		{name: "a template without variables is used as is", uri: "/x?q", template: "fixed", want: []string{"fixed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, query, _ := strings.Cut(tt.uri, "?")
			ri := &RequestInfo{
				Params:       map[string]string{"REQUEST_URI": tt.uri, "QUERY_STRING": query},
				ArgvTemplate: tt.template,
			}
			if got := Argv(ri); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Argv() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCheckArgvTemplate(t *testing.T) {
	tests := []struct {
		name, tmpl, wantErr string
	}{
		{name: "the README template is valid", tmpl: "${SCRIPT_NAME} ${ARGS}"},
		{name: "a template without variables is valid", tmpl: "a b c"},
		{name: "a lone dollar sign is valid", tmpl: "$5 ${ARGS}"},
		{name: "an unknown variable is rejected", tmpl: "${SCRIPT} ${ARGS}", wantErr: "unknown variable ${SCRIPT}"},
		{name: "an unclosed variable is rejected", tmpl: "${ARGS", wantErr: "unclosed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckArgvTemplate(tt.tmpl)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func BenchmarkEnv(b *testing.B) {
	ri := &RequestInfo{
		Params:         nginxParams(),
		ScriptName:     "/hello",
		RawPathInfo:    "/a%3bb/c",
		MatchedRoute:   "/hello/...",
		ServerSoftware: "wagi-fcgi/1.2.3",
		ModuleEnv:      map[string]string{"GREETING": "hi"},
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = Env(ri)
	}
}
