// Package wasmhost is what a guest module runs against: the wazero runtime
// configuration and the host modules a guest may import from.
//
// The compile process (internal/compiler), which decides at load whether a
// module may run, and the child, which runs it, both take them from here:
// the compile process accepts a module exactly when a child can instantiate
// it against the same host modules, and the compilation cache entries the
// one writes are the ones the other looks up.
//
// Most host functions are wazero's WASI preview1 ones. Those wagi-fcgi
// implements itself, and whose work needs the child's per-request state
// (the request's environment, its outbound HTTP), are declared here by name
// and type (EnvironFuncs, HTTPFuncs) and implemented by the caller (Impl):
// the child passes its own; the compile process, which never runs guest
// code, passes Unimplemented. The types come from the declaration either
// way, so the list of what a guest may import exists once.
package wasmhost

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/wagi-fcgi/wagi-fcgi/internal/quota"
)

// RuntimeConfig is the wazero configuration of every Runtime that compiles
// or runs a guest, in the compile process and in the children. Both sides
// must use the same one, or the file cache misses (the cache key covers
// compile-affecting settings). Features are wazero's defaults (WebAssembly
// 2.0); memoryPages bounds every guest memory; cache nil means no file
// cache.
func RuntimeConfig(cache wazero.CompilationCache, memoryPages uint32) wazero.RuntimeConfig {
	c := wazero.NewRuntimeConfig().
		// Leave CloseOnContextDone off: it makes tight loops ~25x slower
		// (wazero's ensureTermination checks in every loop). The manager
		// enforces time limits with SIGKILL instead. It also changes the
		// compiled code, so it is part of the cache key and of what
		// compiler.CodeIDs names: both sides must agree on it.
		WithCloseOnContextDone(false).
		WithMemoryLimitPages(memoryPages)
	if cache != nil {
		c = c.WithCompilationCache(cache)
	}
	return c
}

// The host modules a guest may import from.
const (
	// Preview1 is WASI preview1: wazero's functions, with the
	// environment ones replaced (EnvironFuncs) and quota errors reported
	// as ENOSPC (internal/quota).
	Preview1 = wasi_snapshot_preview1.ModuleName
	// Preview0 is WASI preview0 (witx in WebAssembly/WASI
	// legacy/preview0): preview1's functions where the ABI is the same;
	// see preview0.go.
	Preview0 = "wasi_unstable"
	// HTTP is WAGI's outbound HTTP (deislabs/wasi-experimental-http).
	// Its functions are always provided, so a module importing them loads
	// whatever its allowed_hosts say; a call goes to the manager's egress
	// proxy (internal/egress), which decides. The child itself opens no
	// network connection (its seccomp filter allows AF_UNIX sockets only).
	HTTP = "wasi_experimental_http"
)

// ModuleNames are the host modules a guest may import from, in the order
// Instantiate instantiates them.
var ModuleNames = []string{Preview1, Preview0, HTTP}

// Func declares a host function wagi-fcgi implements itself: its import
// name, its WebAssembly type, and the names of its parameters (for wazero's
// traces; nil for none).
type Func struct {
	Name            string
	Params, Results []api.ValueType
	ParamNames      []string
}

var i32 = api.ValueTypeI32

// EnvironFuncs replace preview1's (and so preview0's) environment
// functions: the child's read the request's environment from the call's
// context, because wazero's ModuleConfig.WithEnv copies the whole config on
// every call (see child/environ.go).
var EnvironFuncs = []Func{
	{Name: "environ_sizes_get", Params: []api.ValueType{i32, i32}, Results: []api.ValueType{i32},
		ParamNames: []string{"result.environc", "result.environv_len"}},
	{Name: "environ_get", Params: []api.ValueType{i32, i32}, Results: []api.ValueType{i32},
		ParamNames: []string{"environ", "environ_buf"}},
}

// HTTPFuncs are the functions of HTTP. Each takes i32 parameters and
// returns one i32, a WAGI error code (0 = success). The signatures are
// those of wasi-experimental-http-wasmtime 0.10 (WAGI's).
var HTTPFuncs = []Func{
	i32Func("req", 10),            // url, url_len, method, method_len, headers, headers_len, body, body_len, *status(u16), *handle(u32)
	i32Func("close", 1),           // handle
	i32Func("header_get", 6),      // handle, name, name_len, value, value_len, *written(u32)
	i32Func("headers_get_all", 4), // handle, buf, buf_len, *written(u32)
	i32Func("body_read", 4),       // handle, buf, buf_len, *read(u32)
}

func i32Func(name string, params int) Func {
	p := make([]api.ValueType, params)
	for i := range p {
		p[i] = i32
	}
	return Func{Name: name, Params: p, Results: []api.ValueType{i32}}
}

// Impl implements the functions wagi-fcgi declares, by name: Environ those
// of EnvironFuncs, HTTP those of HTTPFuncs.
type Impl struct {
	Environ map[string]api.GoModuleFunction
	HTTP    map[string]api.GoModuleFunction
}

// Unimplemented is an Impl for a Runtime that checks modules and never runs
// one (the compile process): each function panics if called, which wazero
// turns into an error of the call.
func Unimplemented() Impl {
	stub := func(decl []Func) map[string]api.GoModuleFunction {
		m := make(map[string]api.GoModuleFunction, len(decl))
		for _, f := range decl {
			name := f.Name
			m[name] = api.GoModuleFunc(func(context.Context, api.Module, []uint64) {
				panic("wasmhost: " + name + " called in a Runtime that runs no guest")
			})
		}
		return m
	}
	return Impl{Environ: stub(EnvironFuncs), HTTP: stub(HTTPFuncs)}
}

// check says which declared function impl lacks, or which it has that is
// not declared.
func (impl Impl) check() error {
	for _, set := range []struct {
		module string
		decl   []Func
		impl   map[string]api.GoModuleFunction
	}{{Preview1, EnvironFuncs, impl.Environ}, {HTTP, HTTPFuncs, impl.HTTP}} {
		for _, f := range set.decl {
			if set.impl[f.Name] == nil {
				return fmt.Errorf("no implementation of %s.%s", set.module, f.Name)
			}
		}
		for name := range set.impl {
			if !slices.ContainsFunc(set.decl, func(f Func) bool { return f.Name == name }) {
				return fmt.Errorf("an implementation of %s.%s, which is not declared", set.module, name)
			}
		}
	}
	return nil
}

// export exports decl's functions into b with impl's Go functions.
func export(b wazero.HostModuleBuilder, decl []Func, impl map[string]api.GoModuleFunction) {
	for _, f := range decl {
		fb := b.NewFunctionBuilder().WithGoModuleFunction(impl[f.Name], f.Params, f.Results)
		if f.ParamNames != nil {
			fb = fb.WithParameterNames(f.ParamNames...)
		}
		fb.Export(f.Name)
	}
}

// Provided are the functions a guest may import, by "module.name".
type Provided map[string]api.FunctionDefinition

// Instantiate instantiates in rt every host module of ModuleNames, in that
// order, with impl's functions where wagi-fcgi provides its own, and
// returns what they export. It fails before instantiating anything if impl
// lacks a declared function or has an undeclared one.
func Instantiate(ctx context.Context, rt wazero.Runtime, impl Impl) (Provided, error) {
	if err := impl.check(); err != nil {
		return nil, err
	}
	if err := instantiatePreview1(ctx, rt, impl.Environ); err != nil {
		return nil, err
	}
	if err := instantiatePreview0(ctx, rt, impl.Environ); err != nil {
		return nil, err
	}
	b := rt.NewHostModuleBuilder(HTTP)
	export(b, HTTPFuncs, impl.HTTP)
	if _, err := b.Instantiate(ctx); err != nil {
		return nil, fmt.Errorf("instantiate %s: %w", HTTP, err)
	}
	provided := Provided{}
	for _, mod := range ModuleNames {
		for name, def := range rt.Module(mod).ExportedFunctionDefinitions() {
			provided[mod+"."+name] = def
		}
	}
	return provided, nil
}

// NewRuntime is a Runtime with RuntimeConfig(cache, memoryPages) and the
// host modules instantiated in it with impl (Instantiate), and what they
// provide. The compile process and the children both make their Runtimes
// with it.
func NewRuntime(ctx context.Context, cache wazero.CompilationCache, memoryPages uint32, impl Impl) (wazero.Runtime, Provided, error) {
	rt := wazero.NewRuntimeWithConfig(ctx, RuntimeConfig(cache, memoryPages))
	provided, err := Instantiate(ctx, rt, impl)
	if err != nil {
		_ = rt.Close(ctx)
		return nil, nil, err
	}
	return rt, provided, nil
}

// instantiatePreview1 instantiates Preview1 in rt.
func instantiatePreview1(ctx context.Context, rt wazero.Runtime, environ map[string]api.GoModuleFunction) error {
	b := rt.NewHostModuleBuilder(Preview1)
	if err := exportWASI(b, environ); err != nil {
		return err
	}
	_, err := b.Instantiate(ctx)
	return err
}

// exportWASI exports the preview1 functions into b, as wagi-fcgi provides
// them (quotas, environment).
func exportWASI(b wazero.HostModuleBuilder, environ map[string]api.GoModuleFunction) error {
	wasi_snapshot_preview1.NewFunctionExporter().ExportFunctions(b)
	// Volume quotas answer ENOSPC, which wazero's errno set lacks.
	if err := quota.WrapWASI(b); err != nil {
		return err
	}
	export(b, EnvironFuncs, environ)
	return nil
}

// Check says whether a child can instantiate cm against the host modules
// that export p: nil, or an error naming the reason it cannot. A refused
// preview0 function (ImportRefusal) or an import of the wrong type is
// named alone, the first found; imports that are not provided at all, and
// imported memories, are named together.
func (p Provided) Check(cm wazero.CompiledModule) error {
	var bad []string
	for _, fn := range cm.ImportedFunctions() {
		mod, name, _ := fn.Import()
		if why := ImportRefusal(mod, name); why != "" {
			return errors.New(why)
		}
		def := p[mod+"."+name]
		if def == nil {
			bad = append(bad, mod+"."+name)
			continue
		}
		if !slices.Equal(def.ParamTypes(), fn.ParamTypes()) || !slices.Equal(def.ResultTypes(), fn.ResultTypes()) {
			return fmt.Errorf("imports %s.%s as %s, but wagi-fcgi provides it as %s", mod, name, signature(fn), signature(def))
		}
	}
	for _, mem := range cm.ImportedMemories() {
		mod, name, _ := mem.Import()
		bad = append(bad, mod+"."+name+" (memory)")
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("imports %s, which wagi-fcgi does not provide (modules may import only %s)",
			strings.Join(bad, ", "), strings.Join(ModuleNames, " and "))
	}
	return nil
}

// signature writes a function type the way WebAssembly text does.
func signature(def api.FunctionDefinition) string {
	names := func(ts []api.ValueType) string {
		s := make([]string, len(ts))
		for i, t := range ts {
			s[i] = api.ValueTypeName(t)
		}
		return strings.Join(s, " ")
	}
	return fmt.Sprintf("(param %s) (result %s)", names(def.ParamTypes()), names(def.ResultTypes()))
}
