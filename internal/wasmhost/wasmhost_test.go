package wasmhost

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

func TestPreview0SeekTranslatesWhenceToPreview1(t *testing.T) {
	cases := []struct {
		name          string
		whence        uint64 // preview0
		wantWhence    uint64 // what preview1's fd_seek gets
		wantCalled    bool
		wantErrnoLeft uint64
	}{
		{"cur becomes preview1's cur", 0, 1, true, 0},
		{"end becomes preview1's end", 1, 2, true, 0},
		{"set becomes preview1's set", 2, 0, true, 0},
		{"an unknown whence is EINVAL without a call", 3, 0, false, errnoInval},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got uint64
			called := false
			orig := api.GoModuleFunc(func(_ context.Context, _ api.Module, stack []uint64) {
				called, got = true, stack[2]
				stack[0] = 0
			})
			stack := []uint64{3, 10, tc.whence, 64}
			seekWhence0(orig).Call(context.Background(), nil, stack)
			if called != tc.wantCalled || called && got != tc.wantWhence || !called && stack[0] != tc.wantErrnoLeft {
				t.Fatalf("called %v with whence %d, errno %d; want called %v with %d, errno %d",
					called, got, stack[0], tc.wantCalled, tc.wantWhence, tc.wantErrnoLeft)
			}
		})
	}
}

func TestPreview0ExportsTheSameABIFunctionsAndNoneOfTheRefused(t *testing.T) {
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	if _, err := Instantiate(ctx, rt, Unimplemented()); err != nil {
		t.Fatal(err)
	}
	defs := rt.Module(Preview0).ExportedFunctionDefinitions()
	got := slices.Sorted(maps.Keys(defs))
	want := append(append([]string(nil), preview0Same...), "fd_seek")
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("wasi_unstable exports %v, want %v", got, want)
	}
	for name := range preview0Refused {
		if _, ok := defs[name]; ok {
			t.Errorf("%s is refused but exported", name)
		}
		if ImportRefusal(Preview0, name) == "" {
			t.Errorf("%s has no refusal reason", name)
		}
	}
	// Preview1 is untouched: its filestat functions are still there.
	if _, ok := rt.Module(Preview1).ExportedFunctionDefinitions()["fd_filestat_get"]; !ok {
		t.Error("trimming wasi_unstable removed preview1's fd_filestat_get")
	}
}

func TestEveryDeclaredFunctionIsProvidedWithItsDeclaredType(t *testing.T) {
	ctx := context.Background()
	rt, provided, err := NewRuntime(ctx, nil, 16, Unimplemented())
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	for _, set := range []struct {
		module string
		decl   []Func
	}{{Preview1, EnvironFuncs}, {Preview0, EnvironFuncs}, {HTTP, HTTPFuncs}} {
		for _, f := range set.decl {
			def := provided[set.module+"."+f.Name]
			if def == nil {
				t.Errorf("%s.%s is declared but not provided", set.module, f.Name)
				continue
			}
			if !slices.Equal(def.ParamTypes(), f.Params) || !slices.Equal(def.ResultTypes(), f.Results) {
				t.Errorf("%s.%s is provided as %s, declared as %v -> %v", set.module, f.Name, signature(def), f.Params, f.Results)
			}
		}
	}
	// HTTP has exactly the declared functions; every module is there.
	var http []string
	for k := range provided {
		if name, ok := strings.CutPrefix(k, HTTP+"."); ok {
			http = append(http, name)
		}
	}
	var declared []string
	for _, f := range HTTPFuncs {
		declared = append(declared, f.Name)
	}
	slices.Sort(http)
	slices.Sort(declared)
	if !slices.Equal(http, declared) {
		t.Errorf("%s provides %v, declared %v", HTTP, http, declared)
	}
	for _, mod := range ModuleNames {
		if rt.Module(mod) == nil {
			t.Errorf("%s is not instantiated", mod)
		}
	}
}

func TestInstantiateRefusesAnImplThatDiffersFromTheDeclaration(t *testing.T) {
	noop := api.GoModuleFunc(func(context.Context, api.Module, []uint64) {})
	cases := []struct {
		name   string
		change func(*Impl)
		want   string
	}{
		{"an environment function missing", func(i *Impl) { delete(i.Environ, "environ_get") },
			"no implementation of wasi_snapshot_preview1.environ_get"},
		{"an outbound HTTP function missing", func(i *Impl) { delete(i.HTTP, "req") },
			"no implementation of wasi_experimental_http.req"},
		{"an outbound HTTP function nil", func(i *Impl) { i.HTTP["close"] = nil },
			"no implementation of wasi_experimental_http.close"},
		{"no outbound HTTP at all", func(i *Impl) { i.HTTP = nil },
			"no implementation of wasi_experimental_http.req"},
		{"an undeclared outbound HTTP function", func(i *Impl) { i.HTTP["connect"] = noop },
			"an implementation of wasi_experimental_http.connect, which is not declared"},
		{"an undeclared environment function", func(i *Impl) { i.Environ["args_get"] = noop },
			"an implementation of wasi_snapshot_preview1.args_get, which is not declared"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			rt := wazero.NewRuntime(ctx)
			defer rt.Close(ctx)
			impl := Unimplemented()
			tc.change(&impl)
			_, err := Instantiate(ctx, rt, impl)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			for _, mod := range ModuleNames {
				if rt.Module(mod) != nil {
					t.Errorf("%s was instantiated although the Impl was refused", mod)
				}
			}
		})
	}
}

func TestAnUnimplementedFunctionFailsEveryCall(t *testing.T) {
	ctx := context.Background()
	rt, _, err := NewRuntime(ctx, nil, 16, Unimplemented())
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	// A guest exporting "call", which calls wasi_experimental_http.close(1).
	bin := []byte("\x00asm\x01\x00\x00\x00" +
		"\x01\x09\x02\x60\x01\x7f\x01\x7f\x60\x00\x00" + // types: (i32) -> i32, () -> ()
		"\x02\x20\x01\x16wasi_experimental_http\x05close\x00\x00" +
		"\x03\x02\x01\x01" + // one function of type 1
		"\x07\x08\x01\x04call\x00\x01" +
		"\x0a\x09\x01\x07\x00\x41\x01\x10\x00\x1a\x0b") // i32.const 1; call 0; drop
	mod, err := rt.Instantiate(ctx, bin)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		_, err := mod.ExportedFunction("call").Call(ctx)
		if err == nil || !strings.Contains(err.Error(), "close called in a Runtime that runs no guest") {
			t.Fatalf("call %d of an unimplemented function: %v", i+1, err)
		}
	}
}
