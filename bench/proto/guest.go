package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"

	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
)

// guest runs the module once per request in a fresh instance and does
// what a child's fast path would do around it: decode the params, match
// the route, build WAGI's environment and argv, parse the module's CGI
// header and write it back filtered (internal/wagi, as the manager does
// today). There are no volumes, limits or kills: the prototypes measure
// the path around the guest, not the product.
type guest struct {
	rt     wazero.Runtime
	mod    wazero.CompiledModule
	name   string
	route  wagi.Route
	stdout bytes.Buffer
	stdin  bytes.Reader
	br     *bufio.Reader
	params map[string]string
}

func newGuest(ctx context.Context, path string) (*guest, error) {
	bin, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	rt := wazero.NewRuntime(ctx)
	wasi_snapshot_preview1.MustInstantiate(ctx, rt)
	mod, err := rt.CompileModule(ctx, bin)
	if err != nil {
		return nil, fmt.Errorf("compile %s: %w", path, err)
	}
	return &guest{rt: rt, mod: mod, name: path, route: wagi.MustParseRoute("/..."),
		br: bufio.NewReaderSize(nil, 4096), params: map[string]string{}}, nil
}

// run returns the answer's FastCGI stdout content: a filtered CGI header
// block and the body.
func (g *guest) run(ctx context.Context, r *request) []byte {
	clear(g.params)
	eachParam(r.params, func(k, v string) { g.params[k] = v })
	script, pathInfo, ok := g.route.Match(wagi.RawPath(g.params))
	if !ok {
		return []byte("Status: 404\r\nContent-Type: text/plain\r\n\r\nno route\n")
	}
	ri := &wagi.RequestInfo{Params: g.params, ScriptName: script, RawPathInfo: pathInfo,
		MatchedRoute: g.route.Pattern, ContentLength: int64(len(r.body)), ServerSoftware: "wagi-fcgi/proto"}
	g.stdout.Reset()
	g.stdin.Reset(r.body)
	cfg := wazero.NewModuleConfig().WithName("").WithArgs(wagi.Argv(ri)...).
		WithStdin(&g.stdin).WithStdout(&g.stdout)
	for _, kv := range wagi.Env(ri) {
		k, v, _ := cutEq(kv)
		cfg = cfg.WithEnv(k, v)
	}
	inst, err := g.rt.InstantiateModule(ctx, g.mod, cfg)
	if inst != nil {
		_ = inst.Close(ctx)
	}
	var exit *sys.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 0) {
		return []byte("Status: 500\r\nContent-Type: text/plain\r\n\r\nmodule failed\n")
	}
	out := g.stdout.Bytes()
	src := bytes.NewReader(out)
	g.br.Reset(src)
	resp, err := wagi.ReadResponseHeader(g.br, 0)
	if err != nil {
		return []byte("Status: 502\r\nContent-Type: text/plain\r\n\r\ninvalid CGI response\n")
	}
	body := out[len(out)-g.br.Buffered()-src.Len():]
	return append(resp.AppendHeader(nil), body...)
}

func cutEq(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}
