package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

// guest runs the module once per request in a fresh instance, every
// FastCGI param in its environment, as a wagi-fcgi child does (without
// volumes, limits or output checks: the prototypes measure the path
// around the guest, not the product).
type guest struct {
	rt     wazero.Runtime
	mod    wazero.CompiledModule
	name   string
	stdout bytes.Buffer
	stdin  bytes.Reader
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
	return &guest{rt: rt, mod: mod, name: path}, nil
}

// run returns the module's stdout (a CGI response), or a CGI 500.
func (g *guest) run(ctx context.Context, r *request) []byte {
	g.stdout.Reset()
	g.stdin.Reset(r.body)
	cfg := wazero.NewModuleConfig().WithName("").WithArgs(g.name).
		WithStdin(&g.stdin).WithStdout(&g.stdout)
	eachParam(r.params, func(k, v string) { cfg = cfg.WithEnv(k, v) })
	inst, err := g.rt.InstantiateModule(ctx, g.mod, cfg)
	if inst != nil {
		_ = inst.Close(ctx)
	}
	var exit *sys.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 0) {
		return []byte("Status: 500\r\nContent-Type: text/plain\r\n\r\nmodule failed\n")
	}
	return g.stdout.Bytes()
}
