package child_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tetratelabs/wazero/api"

	"github.com/wagi-fcgi/wagi-fcgi/child"
	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wasmhost"
)

// The compile process accepts a module exactly when a child can run it:
// every import it lets through links in a child, and every one it refuses
// fails to link there too.
func TestTheCompileCheckAndTheChildAgree(t *testing.T) {
	ctx := context.Background()
	const pages = 16
	// The compile process's Runtime, made as internal/compiler makes it.
	rt, provided, err := wasmhost.NewRuntime(ctx, nil, pages, wasmhost.Unimplemented())
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)

	i32, i64 := api.ValueTypeI32, api.ValueTypeI64
	fn := func(module, name string, params, results []api.ValueType) wasmImport {
		return wasmImport{module: module, name: name, params: params, results: results}
	}
	ints := func(n int) []api.ValueType { return slices.Repeat([]api.ValueType{i32}, n) }
	one := []api.ValueType{i32}
	type testCase struct {
		name    string
		imports []wasmImport
		refused string // part of the check's reason; "" = accepted
	}
	cases := []testCase{
		{"a module importing nothing is accepted", nil, ""},
		{"fd_write as C programs import it is accepted",
			[]wasmImport{fn("wasi_snapshot_preview1", "fd_write", ints(4), one)}, ""},
		{"wasi_unstable's fd_seek with preview0's types is accepted",
			[]wasmImport{fn("wasi_unstable", "fd_seek", []api.ValueType{i32, i64, i32, i32}, one)}, ""},
		{"the environment functions of both WASI versions are accepted", []wasmImport{
			fn("wasi_snapshot_preview1", "environ_get", ints(2), one), fn("wasi_snapshot_preview1", "environ_sizes_get", ints(2), one),
			fn("wasi_unstable", "environ_get", ints(2), one), fn("wasi_unstable", "environ_sizes_get", ints(2), one),
		}, ""},
		{"every outbound HTTP function with WAGI's types is accepted", []wasmImport{
			fn("wasi_experimental_http", "req", ints(10), one), fn("wasi_experimental_http", "close", ints(1), one),
			fn("wasi_experimental_http", "header_get", ints(6), one), fn("wasi_experimental_http", "headers_get_all", ints(4), one),
			fn("wasi_experimental_http", "body_read", ints(4), one),
		}, ""},
		{"a function of a module that is not provided is refused",
			[]wasmImport{fn("env", "missing_host_function", nil, nil)}, "imports env.missing_host_function, which wagi-fcgi does not provide"},
		{"an unknown function of a provided module is refused",
			[]wasmImport{fn("wasi_snapshot_preview1", "no_such_function", nil, nil)}, "imports wasi_snapshot_preview1.no_such_function, which"},
		{"preview1's sock_accept under wasi_unstable, which has none, is refused",
			[]wasmImport{fn("wasi_unstable", "sock_accept", ints(3), one)}, "imports wasi_unstable.sock_accept, which"},
		{"fd_write with a parameter missing is refused",
			[]wasmImport{fn("wasi_snapshot_preview1", "fd_write", ints(3), one)},
			"imports wasi_snapshot_preview1.fd_write as (param i32 i32 i32) (result i32), but wagi-fcgi provides it as (param i32 i32 i32 i32) (result i32)"},
		{"proc_exit with a result is refused",
			[]wasmImport{fn("wasi_snapshot_preview1", "proc_exit", one, one)}, "imports wasi_snapshot_preview1.proc_exit as (param i32) (result i32)"},
		{"environ_get with 64-bit pointers is refused",
			[]wasmImport{fn("wasi_unstable", "environ_get", []api.ValueType{i64, i64}, one)}, "imports wasi_unstable.environ_get as (param i64 i64)"},
		{"req with a parameter missing is refused",
			[]wasmImport{fn("wasi_experimental_http", "req", ints(9), one)}, "imports wasi_experimental_http.req as"},
		{"wasi_unstable's fd_filestat_get, whose ABI differs, is refused with the reason",
			[]wasmImport{fn("wasi_unstable", "fd_filestat_get", ints(2), one)}, "wasi_unstable.fd_filestat_get differs from preview1 and is not provided"},
		{"wasi_unstable's poll_oneoff, whose ABI differs, is refused with the reason",
			[]wasmImport{fn("wasi_unstable", "poll_oneoff", ints(4), one)}, "wasi_unstable.poll_oneoff differs from preview1"},
		{"an imported memory is refused",
			[]wasmImport{{module: "wasi_snapshot_preview1", name: "memory", memory: true}}, "imports wasi_snapshot_preview1.memory (memory), which"},
	}
	// Every function the compile process says a guest may import, alone
	// and all together.
	keys := make([]string, 0, len(provided))
	for k := range provided {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var all []wasmImport
	for _, k := range keys {
		mod, name, _ := strings.Cut(k, ".")
		imp := fn(mod, name, provided[k].ParamTypes(), provided[k].ResultTypes())
		all = append(all, imp)
		cases = append(cases, testCase{"the provided " + k + " is accepted", []wasmImport{imp}, ""})
	}
	cases = append(cases, testCase{"every provided function at once is accepted", all, ""})

	s := newSession(t, child.Options{})
	dir := t.TempDir()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bin := moduleImporting(tc.imports...)
			cm, err := rt.CompileModule(ctx, bin)
			if err != nil {
				t.Fatalf("the test module does not compile: %v", err)
			}
			checkErr := provided.Check(cm)
			switch {
			case tc.refused == "" && checkErr != nil:
				t.Fatalf("the compile check refuses it: %v", checkErr)
			case tc.refused != "" && checkErr == nil:
				t.Fatalf("the compile check accepts it, want a refusal with %q", tc.refused)
			case tc.refused != "" && !strings.Contains(checkErr.Error(), tc.refused):
				t.Fatalf("the compile check says %q, want it to say %q", checkErr, tc.refused)
			}

			sum := sha256.Sum256(bin)
			key := hex.EncodeToString(sum[:])
			path := filepath.Join(dir, key+".wasm")
			if err := os.WriteFile(path, bin, 0o644); err != nil {
				t.Fatal(err)
			}
			res := s.run(&ipc.Run{ID: "agree", ModuleKey: key, ModulePath: path, MemoryPages: pages,
				Entrypoint: "_start", Args: []string{"agree"}, StderrCap: 1 << 10})
			switch {
			case checkErr == nil && res.done.Outcome != ipc.OutcomeOK:
				t.Fatalf("the check accepts it; the child ends %s (%s)", res.done.Outcome, res.done.Message)
			case checkErr != nil && res.done.Outcome == ipc.OutcomeOK:
				t.Fatalf("the check says %v; the child runs it", checkErr)
			case checkErr != nil && !strings.Contains(res.done.Message, tc.imports[0].module):
				// The child links and starts in one call (a link failure
				// is reported as a trap): the message must be the link's.
				t.Fatalf("the child ends %s (%s), not for the import of %s", res.done.Outcome, res.done.Message, tc.imports[0].module)
			}
		})
	}
}

// wasmImport is one import of a test module: a function with its type,
// or (memory) a memory of one page.
type wasmImport struct {
	module, name    string
	params, results []api.ValueType
	memory          bool
}

// moduleImporting is a module with imps and an exported _start that
// returns at once, so a child that links it runs it to the end.
func moduleImporting(imps ...wasmImport) []byte {
	leb := func(b []byte, v int) []byte {
		for {
			c := byte(v & 0x7f)
			if v >>= 7; v == 0 {
				return append(b, c)
			}
			b = append(b, c|0x80)
		}
	}
	name := func(b []byte, s string) []byte { return append(leb(b, len(s)), s...) }
	vec := func(b []byte, ts []api.ValueType) []byte { return append(leb(b, len(ts)), ts...) }
	section := func(out []byte, id byte, count int, body []byte) []byte {
		payload := append(leb(nil, count), body...)
		return append(leb(append(out, id), len(payload)), payload...)
	}

	var types, imports []byte
	ntypes, nfuncs := 0, 0
	for _, imp := range imps {
		imports = name(name(imports, imp.module), imp.name)
		if imp.memory {
			imports = append(imports, 0x02, 0x00, 0x01) // memory, no maximum, 1 page
			continue
		}
		types = vec(vec(append(types, 0x60), imp.params), imp.results)
		imports = leb(append(imports, 0x00), ntypes)
		ntypes++
		nfuncs++
	}
	types = append(types, 0x60, 0x00, 0x00) // _start: () -> ()

	out := []byte("\x00asm\x01\x00\x00\x00")
	out = section(out, 1, ntypes+1, types)
	out = section(out, 2, len(imps), imports)
	out = section(out, 3, 1, leb(nil, ntypes))
	out = section(out, 7, 1, leb(append(name(nil, "_start"), 0x00), nfuncs))
	out = section(out, 10, 1, []byte{0x02, 0x00, 0x0b}) // body of 2 bytes: no locals, end
	return out
}
