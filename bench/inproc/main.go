// Command inproc is the benchmark's "no isolation" peer: a FastCGI server
// (net/http/fcgi) that runs a WASI module with wazero inside its own
// process. One Runtime and one compiled module are shared; every request
// gets a fresh module instance with the request's CGI variables, its body
// on stdin and its stdout captured, whose CGI header is then split off with
// a simple parser and written to the response. There are no limits, no
// child processes and no routing: it is the lower bound of what running a
// fresh WASI instance per request costs, for comparison with wagi-fcgi.
//
// Usage: inproc -listen unix:/path/to.sock -module hello.wasm
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"log"
	"net"
	"net/http"
	"net/http/fcgi"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

func main() {
	listen := flag.String("listen", "", "unix:PATH or tcp:HOST:PORT")
	modPath := flag.String("module", "", "the WASI module to run per request")
	flag.Parse()
	if *listen == "" || *modPath == "" {
		flag.Usage()
		os.Exit(2)
	}
	ctx := context.Background()
	bin, err := os.ReadFile(*modPath)
	if err != nil {
		log.Fatal(err)
	}
	rt := wazero.NewRuntime(ctx)
	wasi_snapshot_preview1.MustInstantiate(ctx, rt)
	compiled, err := rt.CompileModule(ctx, bin)
	if err != nil {
		log.Fatalf("compile %s: %v", *modPath, err)
	}

	network, addr, ok := strings.Cut(*listen, ":")
	if !ok || (network != "unix" && network != "tcp") {
		log.Fatalf("-listen %q: want unix:PATH or tcp:HOST:PORT", *listen)
	}
	if network == "unix" {
		_ = os.Remove(addr)
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		log.Fatal(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		_ = l.Close()
	}()
	h := &handler{rt: rt, mod: compiled, name: *modPath}
	if err := fcgi.Serve(l, h); err != nil && !errors.Is(err, net.ErrClosed) {
		log.Fatal(err)
	}
	_ = rt.Close(ctx)
}

type handler struct {
	rt   wazero.Runtime
	mod  wazero.CompiledModule
	name string
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var stdout, stderr bytes.Buffer
	cfg := wazero.NewModuleConfig().
		WithName(""). // anonymous: many instances may live at once
		WithArgs(h.name).
		WithStdin(r.Body).
		WithStdout(&stdout).
		WithStderr(&stderr).
		WithEnv("REQUEST_METHOD", r.Method).
		WithEnv("SCRIPT_NAME", r.URL.Path).
		WithEnv("QUERY_STRING", r.URL.RawQuery).
		WithEnv("SERVER_PROTOCOL", r.Proto).
		WithEnv("CONTENT_LENGTH", strconv.FormatInt(max(r.ContentLength, 0), 10)).
		WithEnv("CONTENT_TYPE", r.Header.Get("Content-Type"))
	inst, err := h.rt.InstantiateModule(r.Context(), h.mod, cfg)
	if inst != nil {
		_ = inst.Close(r.Context())
	}
	var exit *sys.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 0) {
		log.Printf("%s: %v (stderr: %q)", r.URL.Path, err, stderr.String())
		http.Error(w, "module failed", http.StatusBadGateway)
		return
	}
	writeCGI(w, stdout.Bytes())
}

// writeCGI splits a CGI response at the first empty line and writes its
// header fields (Status: sets the code) and body.
func writeCGI(w http.ResponseWriter, out []byte) {
	head, body, ok := bytes.Cut(out, []byte("\n\n"))
	if !ok {
		head, body, ok = bytes.Cut(out, []byte("\r\n\r\n"))
	}
	if !ok {
		http.Error(w, "module sent no CGI header", http.StatusBadGateway)
		return
	}
	status := http.StatusOK
	for _, line := range strings.Split(string(head), "\n") {
		k, v, ok := strings.Cut(strings.TrimRight(line, "\r"), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if strings.EqualFold(k, "Status") {
			if n, err := strconv.Atoi(strings.Fields(v + " 0")[0]); err == nil && n >= 100 && n <= 999 {
				status = n
			}
			continue
		}
		w.Header().Add(k, v)
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
