package config_test

import (
	"fmt"

	"github.com/wagi-fcgi/wagi-fcgi/config"
)

func Example() {
	src := `
[limits]
timeout = "10s"

[[module]]
route = "/hello/..."
module = "hello.wasm"
volumes = { "/static" = "./static:ro" }
memory = "16MiB"
`
	cfg, err := config.Parse([]byte(src), "wagi.toml", "/etc/wagi")
	if err != nil {
		fmt.Println(err)
		return
	}
	m := cfg.Modules[0]
	fmt.Println(cfg.Listen, cfg.StateDir)
	fmt.Println(m.Route, m.Module, m.Entrypoint)
	fmt.Println(m.Volumes[0].Guest, m.Volumes[0].Path, m.Volumes[0].ReadOnly)
	fmt.Println(m.Limits.Timeout, m.Limits.MemoryPages(), "pages")
	// Output:
	// unix:/run/wagi.sock /var/lib/wagi-fcgi
	// /hello/... /etc/wagi/hello.wasm _start
	// /static /etc/wagi/static true
	// 10s 256 pages
}

// A typo is an error with the file, the line and the key.
func Example_typo() {
	src := `
[[module]]
route = "/"
module = "/srv/index.wasm"

[[module]]
rute = "/api/..."
module = "/srv/api.wasm"
timeout = "5 seconds"
`
	_, err := config.Parse([]byte(src), "modules.toml", "/srv")
	fmt.Println(err)
	// Output:
	// modules.toml:6: [[module]] #2: missing required key "route"
	// modules.toml:7: unknown key "rute" in [[module]] #2 (did you mean "route"?)
	// modules.toml:9: [[module]] #2 timeout: invalid duration "5 seconds" (want a number with a unit: ms, s, m or h, like "30s" or "1h30m")
}

func ExampleParseSize() {
	for _, s := range []string{"128MiB", "64MB", "4096", "1.5GiB"} {
		n, err := config.ParseSize(s)
		fmt.Println(n, err)
	}
	// Output:
	// 134217728 <nil>
	// 64000000 <nil>
	// 4096 <nil>
	// 0 invalid size "1.5GiB": fractions are not allowed; use a smaller unit (1536MiB, not 1.5GiB)
}
