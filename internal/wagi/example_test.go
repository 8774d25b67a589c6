package wagi_test

import (
	"bufio"
	"fmt"
	"strings"

	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
)

// A request for /hello/world?name=ada routed to "/hello/...": what the
// module sees, and what its output becomes.
func Example() {
	var table wagi.Table[string]
	table.Add(wagi.MustParseRoute("/hello/..."), "hello.wasm")

	params := map[string]string{
		"REQUEST_METHOD":  "GET",
		"REQUEST_URI":     "/hello/wor%6Cd?name=ada",
		"QUERY_STRING":    "name=ada",
		"SERVER_PROTOCOL": "HTTP/1.1",
		"SERVER_PORT":     "80",
		"HTTP_HOST":       "example.com",
	}
	module, scriptName, rawPathInfo, route, ok := table.Lookup(wagi.RawPath(params))
	if !ok {
		fmt.Println("404")
		return
	}
	ri := &wagi.RequestInfo{
		Params:         params,
		ScriptName:     scriptName,
		RawPathInfo:    rawPathInfo,
		MatchedRoute:   route.Pattern,
		ServerSoftware: "wagi-fcgi/dev",
	}
	fmt.Println("module:", module)
	fmt.Printf("argv: %q\n", wagi.Argv(ri))
	for _, kv := range wagi.Env(ri) {
		if strings.HasPrefix(kv, "SCRIPT_NAME=") || strings.HasPrefix(kv, "PATH_INFO=") || strings.HasPrefix(kv, "X_FULL_URL=") {
			fmt.Println(kv)
		}
	}

	out := bufio.NewReader(strings.NewReader("Location: /elsewhere\nSet-Cookie: a=1\n\n"))
	resp, err := wagi.ReadResponseHeader(out, 0)
	if err != nil {
		fmt.Println("502:", err)
		return
	}
	// What goes to the web server on FastCGI STDOUT (CRLFs shown as
	// line breaks).
	var header strings.Builder
	_, _ = resp.WriteTo(&header)
	fmt.Print(strings.ReplaceAll(header.String(), "\r\n", "\n"))
	// Output:
	// module: hello.wasm
	// argv: ["/hello/wor%6Cd" "name=ada"]
	// SCRIPT_NAME=/hello
	// PATH_INFO=/world
	// X_FULL_URL=http://example.com:80/hello/wor%6Cd?name=ada
	// Status: 302 Found
	// Location: /elsewhere
	// Set-Cookie: a=1
}

func ExampleParseRoutesOutput() {
	parent := wagi.MustParseRoute("/api/...")
	subs, err := wagi.ParseRoutesOutput([]byte("/users list_users\n/users/... user\n"))
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, s := range subs {
		r, err := parent.Join(s.Pattern)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(r.Pattern, "->", s.Export)
	}
	// Output:
	// /api/users -> list_users
	// /api/users/... -> user
}
