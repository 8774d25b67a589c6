# wagi-fcgi: `make run` to try it, `make test` to test everything.

GO      ?= go
BIN     := build/bin/wagi-fcgi
HTTP    ?= 127.0.0.1:8080
# Fuzzing budgets are execution counts, about 10-15 s each here. A duration
# (-fuzztime 15s) races Go's fuzz coordinator at the deadline and can fail
# with a bare "context deadline exceeded" and no input (golang/go#75804,
# fixed in Go 1.27; we build with 1.26).
FUZZ_SERVECONN    ?= 200000x
FUZZ_PARAMS       ?= 300000x
FUZZ_ROUNDTRIP    ?= 20000x
FUZZ_CHILDFRAMES  ?= 200000x
FUZZ_WASMBOUND    ?= 200000x
FUZZ_WHOLE        ?= 200000x
FUZZMINIMIZETIME  ?= 10s

.PHONY: all build run test unit fuzz example clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/wagi-fcgi

example:
	GOOS=wasip1 GOARCH=wasm $(GO) build -o build/examples/hello.wasm ./examples/hello

# Build the service and an example module, and serve it over plain HTTP on
# $(HTTP) through the same FastCGI path nginx would use.
# As root, the children run as the wagi-fcgi system user: it is created
# if missing (conf/systemd/useradd.sh).
run: build example
	@[ "$$(bash conf/systemd/useradd.sh)" != created ] || echo "make run: created the wagi-fcgi system user the children run as"
	$(BIN) serve -c examples/hello/wagi.toml --http $(HTTP)

# Every test: installs what the tests need (nginx, clang for wasm32-wasi,
# wabt; apt-get as root), vets, runs unit and end-to-end tests, runs the
# end-to-end tests again with the fast path on (README, "The fast path"),
# then fuzzes the FastCGI parser for a bounded time.
test:
	bash tests/setup.sh
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 45m ./...
	WAGI_FCGI_FAST_PATH=1 $(GO) test -count=1 -timeout 45m ./tests
	$(MAKE) fuzz

# Bounded fuzzing of the FastCGI record and params parsers, of the
# manager's reading of what a (compromised) child sends, and of the module
# bounds checker that reads untrusted module bytes.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzServeConn$$' -fuzztime $(FUZZ_SERVECONN) -fuzzminimizetime $(FUZZMINIMIZETIME) ./fcgi
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeParams$$' -fuzztime $(FUZZ_PARAMS) -fuzzminimizetime $(FUZZMINIMIZETIME) ./fcgi
	$(GO) test -run '^$$' -fuzz '^FuzzRequestRoundTrip$$' -fuzztime $(FUZZ_ROUNDTRIP) -fuzzminimizetime $(FUZZMINIMIZETIME) ./fcgi
	$(GO) test -run '^$$' -fuzz '^FuzzParseWhole$$' -fuzztime $(FUZZ_WHOLE) -fuzzminimizetime $(FUZZMINIMIZETIME) ./fcgi
	$(GO) test -run '^$$' -fuzz '^FuzzChildFrames$$' -fuzztime $(FUZZ_CHILDFRAMES) -fuzzminimizetime $(FUZZMINIMIZETIME) ./internal/ipc
	$(GO) test -run '^$$' -fuzz '^FuzzApply$$' -fuzztime $(FUZZ_WASMBOUND) -fuzzminimizetime $(FUZZMINIMIZETIME) ./internal/wasmbound

clean:
	rm -rf build

# Benchmarks (bench/README.md); .PHONY because bench/ is a directory.
.PHONY: bench bench-cold
bench bench-cold: ; bash bench/run $(if $(filter bench-cold,$@),--cold)
