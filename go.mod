module github.com/wagi-fcgi/wagi-fcgi

go 1.26.0

require (
	github.com/BurntSushi/toml v1.6.0
	github.com/prometheus/procfs v0.23.0
	github.com/tetratelabs/wazero v1.12.0
	github.com/yookoala/gofast v0.8.0
	golang.org/x/sys v0.49.0
)

require golang.org/x/tools v0.0.0-20200908211811-12e1bf57a112 // indirect
