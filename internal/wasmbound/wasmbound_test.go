package wasmbound

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// Modules are written as bytes here, with these helpers, so each test says
// exactly what the binary declares.

func leb(v uint32) []byte { return appendU32(nil, v) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func vec(items ...[]byte) []byte { return cat(leb(uint32(len(items))), cat(items...)) }

func str(s string) []byte { return cat(leb(uint32(len(s))), []byte(s)) }

func section(id byte, content ...[]byte) []byte {
	c := cat(content...)
	return cat([]byte{id}, leb(uint32(len(c))), c)
}

func module(sections ...[]byte) []byte {
	return cat([]byte("\x00asm\x01\x00\x00\x00"), cat(sections...))
}

// Table types: funcref with a minimum, and with a maximum too.
func tableMin(min uint32) []byte      { return cat([]byte{0x70, 0x00}, leb(min)) }
func tableMax(min, max uint32) []byte { return cat([]byte{0x70, 0x01}, leb(min), leb(max)) }

var (
	voidType  = section(secType, vec([]byte{0x60, 0x00, 0x00}))
	oneFunc   = section(secFunction, vec(leb(0)))
	emptyBody = section(secCode, vec([]byte{0x02, 0x00, 0x0b}))
)

// tableMaxima returns the maxima of the tables Apply's output declares
// (-1: none), read back through Apply's own walk.
func tableMaxima(t *testing.T, bin []byte) []int64 {
	t.Helper()
	w := &walk{}
	r := &reader{b: bin, off: 8}
	for r.off < len(bin) {
		hdr := r.off
		id := r.byte1()
		size := r.u32()
		s := &reader{b: bin[:r.off+int(size)], off: r.off}
		if err := w.section(id, hdr, s); err != nil {
			t.Fatal(err)
		}
		r.off += int(size)
	}
	var out []int64
	for _, tb := range w.tables {
		if tb.hasMax {
			out = append(out, int64(tb.max))
		} else {
			out = append(out, -1)
		}
	}
	return out
}

func TestApply(t *testing.T) {
	small := Bounds{TableElements: 100, Tables: 3, Functions: 3, Globals: 2, Types: 2, Params: 2, Locals: 10, TotalLocals: 15, Imports: 2, Exports: 2, ElementSegments: 2, DataSegments: 2}
	cases := []struct {
		name      string
		bin       []byte
		b         Bounds
		err       error  // nil: success
		msg       string // in the error
		unchanged bool   // the very input slice comes back
		maxima    []int64
	}{
		{name: "a module whose tables are capped within the bound comes back as it is",
			bin: module(voidType, section(secTable, vec(tableMax(5, 5)))), b: small, unchanged: true, maxima: []int64{5}},
		{name: "a module without tables comes back as it is",
			bin: module(voidType, oneFunc, emptyBody), b: small, unchanged: true},
		{name: "a table with no maximum gets the bound as its maximum",
			bin: module(section(secTable, vec(tableMin(7)))), b: small, maxima: []int64{100}},
		{name: "a table whose maximum is over the bound gets the bound",
			bin: module(section(secTable, vec(tableMax(1, 1<<20)))), b: small, maxima: []int64{100}},
		{name: "the room over the minimums goes to the tables in order",
			bin: module(section(secTable, vec(tableMin(10), tableMin(20), tableMax(5, 8)))), b: small, maxima: []int64{75, 20, 5}},
		{name: "a table with an initialiser keeps it when its maximum is rewritten",
			bin: module(section(secTable, vec(cat([]byte{0x40, 0x00}, tableMin(3), []byte{0xd0, 0x70, 0x0b})))), b: small, maxima: []int64{100}},
		{name: "three tables of 2^27 elements are refused, naming the first and the numbers",
			bin: module(section(secTable, vec(tableMin(1<<27), tableMin(1<<27), tableMin(1<<27)))), b: Default,
			err: ErrBound, msg: "table 0 declares 134217728 elements, over the bound of 1048576"},
		{name: "tables that fit one by one but not together are refused",
			bin: module(section(secTable, vec(tableMin(60), tableMin(60)))), b: small,
			err: ErrBound, msg: "declares 120 elements together, over the bound of 100"},
		{name: "an imported table counts towards the bound",
			bin: module(section(secImport, vec(cat(str("env"), str("t"), []byte{0x01}, tableMin(90)))), section(secTable, vec(tableMin(20)))), b: small,
			err: ErrBound, msg: "110 elements together"},
		{name: "too many tables are refused, however small",
			bin: module(section(secImport, vec(cat(str("env"), str("t"), []byte{0x01}, tableMin(0)))), section(secTable, vec(tableMin(0), tableMin(0), tableMin(0)))), b: small,
			err: ErrBound, msg: "declares 4 tables, over the bound of 3"},
		{name: "function bodies over the function bound are refused before their count is compared",
			bin: module(voidType, section(secCode, cat(leb(4), bytes.Repeat([]byte{0x02, 0x00, 0x0b}, 4)))), b: small,
			err: ErrBound, msg: "the code section declares 4 function bodies, over the bound of 3"},
		{name: "a table maximum under its minimum is malformed",
			bin: module(section(secTable, vec(tableMax(5, 4)))), b: small, err: ErrMalformed, msg: "under its minimum"},
		{name: "a shared table is malformed",
			bin: module(section(secTable, vec([]byte{0x70, 0x03, 0x01, 0x01}))), b: small, err: ErrMalformed, msg: "limits flag 0x3"},
		{name: "functions imported and defined count together",
			bin: module(voidType,
				section(secImport, vec(cat(str("m"), str("a"), []byte{0x00, 0x00}), cat(str("m"), str("b"), []byte{0x00, 0x00}))),
				section(secFunction, vec(leb(0), leb(0))),
				section(secCode, vec([]byte{0x02, 0x00, 0x0b}, []byte{0x02, 0x00, 0x0b}))), b: small,
			err: ErrBound, msg: "declares 4 functions (imported and defined), over the bound of 3"},
		{name: "globals imported and defined count together",
			bin: module(
				section(secImport, vec(cat(str("m"), str("g"), []byte{0x03, 0x7f, 0x00}))),
				section(secGlobal, vec([]byte{0x7f, 0x00, 0x41, 0x00, 0x0b}, []byte{0x7f, 0x00, 0x41, 0x00, 0x0b}))), b: small,
			err: ErrBound, msg: "3 globals, over the bound of 2"},
		{name: "too many types are refused",
			bin: module(section(secType, vec([]byte{0x60, 0, 0}, []byte{0x60, 0, 0}, []byte{0x60, 0, 0}))), b: small,
			err: ErrBound, msg: "3 types, over the bound of 2"},
		{name: "types in a recursion group count one by one",
			bin: module(section(secType, vec(cat([]byte{0x4e}, vec([]byte{0x60, 0, 0}, []byte{0x60, 0, 0}, []byte{0x60, 0, 0}))))), b: small,
			err: ErrBound, msg: "3 types, over the bound of 2"},
		{name: "a function type with too many parameters is refused",
			bin: module(section(secType, vec([]byte{0x60, 0x03, 0x7f, 0x7f, 0x7f, 0x00}))), b: small,
			err: ErrBound, msg: "type 0 declares 3 parameters, over the bound of 2"},
		{name: "a function type claiming 2^32-1 parameters in a few bytes is malformed",
			bin: module(section(secType, vec(cat([]byte{0x60}, leb(0xffffffff))))), b: Bounds{},
			err: ErrMalformed, msg: "4294967295 parameters declared"},
		{name: "a function body declaring 2^32-1 locals is refused",
			bin: module(voidType, oneFunc, section(secCode, vec(cat(leb(8), vec(cat(leb(0xffffffff), []byte{0x7f})), []byte{0x0b})))), b: Default,
			err: ErrBound, msg: "function body 0 declares 4294967295 locals, over the bound of 50000"},
		{name: "locals count across function bodies",
			bin: module(voidType, section(secFunction, vec(leb(0), leb(0))), section(secCode, vec(
				cat(leb(4), vec(cat(leb(9), []byte{0x7f})), []byte{0x0b}),
				cat(leb(4), vec(cat(leb(9), []byte{0x7e})), []byte{0x0b})))), b: small,
			err: ErrBound, msg: "the code section declares 18 locals in all, over the bound of 15"},
		{name: "a function body longer than its section is malformed",
			bin: module(voidType, oneFunc, section(secCode, vec(cat(leb(200), []byte{0x00, 0x0b})))), b: small,
			err: ErrMalformed, msg: "function body 0 declares 200 bytes"},
		{name: "too many imports are refused",
			bin: module(section(secImport, vec(cat(str("m"), str("a"), []byte{0x03, 0x7f, 0x00}), cat(str("m"), str("b"), []byte{0x03, 0x7f, 0x00}), cat(str("m"), str("c"), []byte{0x03, 0x7f, 0x00})))), b: small,
			err: ErrBound, msg: "3 imports, over the bound of 2"},
		{name: "too many exports are refused",
			bin: module(section(secExport, vec(cat(str("a"), []byte{0, 0}), cat(str("b"), []byte{0, 0}), cat(str("c"), []byte{0, 0})))), b: small,
			err: ErrBound, msg: "3 exports, over the bound of 2"},
		{name: "an import name longer than the section is malformed",
			bin: module(section(secImport, vec(cat(leb(0xfffffff0), []byte("m"))))), b: Bounds{},
			err: ErrMalformed, msg: "declares 4294967280 bytes"},
		{name: "too many data segments are refused",
			bin: module(section(secData, vec([]byte{0x01, 0x00}, []byte{0x01, 0x00}, []byte{0x01, 0x00}))), b: small,
			err: ErrBound, msg: "3 data segments, over the bound of 2"},
		{name: "a data count over the bound is refused",
			bin: module(section(secDataCount, leb(1<<20))), b: small,
			err: ErrBound, msg: "1048576 data segments, over the bound of 2"},
		{name: "a data segment claiming more bytes than follow is malformed",
			bin: module(section(secData, vec(cat([]byte{0x00, 0x41, 0x00, 0x0b}, leb(1<<30))))), b: small,
			err: ErrMalformed, msg: "declares 1073741824 bytes"},
		{name: "too many element segments are refused",
			bin: module(section(secElement, vec([]byte{0x01, 0x00, 0x00}, []byte{0x01, 0x00, 0x00}, []byte{0x01, 0x00, 0x00}))), b: small,
			err: ErrBound, msg: "3 element segments, over the bound of 2"},
		{name: "element items over the table bound are refused",
			bin: module(section(secElement, vec(cat([]byte{0x00, 0x41, 0x00, 0x0b}, cat(leb(101), bytes.Repeat([]byte{0x00}, 101)))))), b: small,
			err: ErrBound, msg: "101 items in its segments, over the bound of 100"},
		{name: "element segments of every encoding are walked",
			bin: module(section(secElement, vec(
				cat([]byte{0x02, 0x00, 0x41, 0x00, 0x0b, 0x00}, vec(leb(0))),
				cat([]byte{0x05, 0x70}, vec([]byte{0xd2, 0x00, 0x0b}, []byte{0xd0, 0x70, 0x0b}))))), b: small, unchanged: true},
		{name: "element items claiming 2^32-1 entries are malformed",
			bin: module(section(secElement, vec(cat([]byte{0x01, 0x00}, leb(0xffffffff))))), b: Bounds{},
			err: ErrMalformed, msg: "4294967295 element items declared"},
		{name: "a name section claiming 2^32-1 function names is malformed",
			bin: module(section(secCustom, str("name"), []byte{0x01}, leb(5), leb(0xffffffff))), b: Bounds{},
			err: ErrMalformed, msg: "4294967295 function names declared"},
		{name: "a name subsection whose entries do not fit its size is malformed",
			bin: module(section(secCustom, str("name"), []byte{0x01, 0x01}, vec(cat(leb(0), str("f"))))), b: small,
			err: ErrMalformed, msg: "1 function names declared"},
		{name: "a well-formed name section passes",
			bin: module(voidType, oneFunc, emptyBody, section(secCustom, str("name"), cat([]byte{0x01}, leb(4), vec(cat(leb(0), str("f")))))), b: small, unchanged: true},
		{name: "another custom section is skipped by its size",
			bin: module(section(secCustom, str("producers"), []byte{0xff, 0xff, 0xff, 0xff, 0x0f})), b: small, unchanged: true},
		{name: "a section longer than the file is malformed",
			bin: cat(module(), []byte{secCustom}, leb(1<<31)), b: small,
			err: ErrMalformed, msg: "declares 2147483648 bytes, only 0 follow"},
		{name: "a second table section is malformed",
			bin: module(section(secTable, vec(tableMax(1, 1))), section(secTable, vec(tableMax(1, 1)))), b: small,
			err: ErrMalformed, msg: "a second table section"},
		{name: "bytes left over in a section are malformed",
			bin: module(section(secTable, vec(tableMax(1, 1)), []byte{0x00})), b: small,
			err: ErrMalformed, msg: "1 bytes left over"},
		{name: "a LEB128 over 32 bits is malformed",
			bin: module(section(secFunction, []byte{0xff, 0xff, 0xff, 0xff, 0x7f})), b: small,
			err: ErrMalformed, msg: "overflows 32 bits"},
		{name: "bytes that are not wasm are malformed",
			bin: []byte("this is not a wasm module\n"), b: small, err: ErrMalformed, msg: "no \\0asm magic"},
		{name: "a zero bound is no bound",
			bin: module(section(secTable, vec(tableMin(1<<27)))), b: Bounds{}, unchanged: true, maxima: []int64{-1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Apply(tc.bin, tc.b)
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("error %v, want %q with %q", err, tc.err, tc.msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if same := len(out) > 0 && &out[0] == &tc.bin[0]; same != tc.unchanged {
				t.Errorf("input returned as is: %v, want %v", same, tc.unchanged)
			}
			if tc.maxima != nil {
				if got := tableMaxima(t, out); !equal(got, tc.maxima) {
					t.Errorf("table maxima %v, want %v", got, tc.maxima)
				}
			}
			again, err := Apply(out, tc.b)
			if err != nil || !bytes.Equal(again, out) {
				t.Errorf("applying the bounds again changed the module: %v", err)
			}
		})
	}
}

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// growModule exports grow(n) = table.grow(ref.null, n) on a table of 1
// element with no maximum, and size() = table.size.
var growModule = module(
	section(secType, vec([]byte{0x60, 0x01, 0x7f, 0x01, 0x7f}, []byte{0x60, 0x00, 0x01, 0x7f})),
	section(secFunction, vec(leb(0), leb(1))),
	section(secTable, vec(tableMin(1))),
	section(secExport, vec(cat(str("grow"), []byte{0x00, 0x00}), cat(str("size"), []byte{0x00, 0x01}))),
	section(secCode, vec(
		// ref.null func; local.get 0; table.grow 0; end
		cat(leb(9), []byte{0x00, 0xd0, 0x70, 0x20, 0x00, 0xfc, 0x0f, 0x00, 0x0b}),
		// table.size 0; end
		cat(leb(5), []byte{0x00, 0xfc, 0x10, 0x00, 0x0b}))),
)

func TestATableCannotGrowPastTheBoundInWazero(t *testing.T) {
	ctx := context.Background()
	bin, err := Apply(growModule, Bounds{TableElements: 10})
	if err != nil {
		t.Fatal(err)
	}
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	mod, err := rt.Instantiate(ctx, bin)
	if err != nil {
		t.Fatal(err)
	}
	call := func(name string, args ...uint64) int32 {
		t.Helper()
		res, err := mod.ExportedFunction(name).Call(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		return api.DecodeI32(res[0])
	}
	steps := []struct {
		by   uint64
		want int32 // table.grow's answer: the old size, or -1
		size int32
	}{
		{4, 1, 5},
		{5, 5, 10},
		{1, -1, 10},
		{1 << 27, -1, 10},
	}
	for _, s := range steps {
		if got := call("grow", s.by); got != s.want {
			t.Fatalf("grow(%d) = %d, want %d", s.by, got, s.want)
		}
		if got := call("size"); got != s.size {
			t.Fatalf("size after grow(%d) = %d, want %d", s.by, got, s.size)
		}
	}
}

func TestApplyIsDeterministic(t *testing.T) {
	in := module(section(secTable, vec(tableMin(3), tableMin(4))))
	a, err := Apply(in, Default)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		b, err := Apply(bytes.Clone(in), Default)
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("run %d gave other bytes (%v)", i, err)
		}
	}
	if bytes.Equal(a, in) {
		t.Fatal("tables without a maximum were not given one")
	}
}

func TestRealModulesPassTheDefaultBounds(t *testing.T) {
	cases := []struct {
		module   string
		segments int // at most this many data segments after Apply
	}{
		{"hello", 2}, // .rodata and .data: under minSegments, left as they are
		{"files", 2},
		{"guestbook", 2},
		{"gohello", 10}, // 30,477 before (Go 1.26: 5 after); one table, no maximum; 1,767 functions
		{"goecho", 10},
	}
	for _, tc := range cases {
		t.Run(tc.module, func(t *testing.T) {
			bin, err := os.ReadFile(testenv.Module(t, tc.module))
			if err != nil {
				t.Fatal(err)
			}
			out, err := Apply(bin, Default)
			if err != nil {
				t.Fatal(err)
			}
			if got := dataSegments(t, out); got > tc.segments {
				t.Errorf("%d data segments after Apply (%d before), want at most %d", got, dataSegments(t, bin), tc.segments)
			}
			before, err := instantiateWASI(t, bin)
			if err != nil {
				t.Fatal(err)
			}
			after, err := instantiateWASI(t, out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(before, after) {
				t.Error("linear memory after instantiation differs")
			}
			if len(out) > len(bin)+len(bin)/2 {
				t.Errorf("Apply grew the module from %d to %d bytes", len(bin), len(out))
			}
			t.Logf("%d bytes, %d data segments; after Apply %d bytes, %d data segments", len(bin), dataSegments(t, bin), len(out), dataSegments(t, out))
			for _, m := range tableMaxima(t, out) {
				if m < 0 || m > int64(Default.TableElements) {
					t.Fatalf("table maximum %d after Apply", m)
				}
			}
			again, err := Apply(out, Default)
			if err != nil || !bytes.Equal(again, out) {
				t.Fatalf("applying again changed the module: %v", err)
			}
		})
	}
}

// instantiateWASI instantiates bin with WASI but without running its start
// function, and returns its linear memory as data segments left it.
func instantiateWASI(t *testing.T, bin []byte) ([]byte, error) {
	t.Helper()
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	wasi_snapshot_preview1.MustInstantiate(ctx, rt)
	cm, err := rt.CompileModule(ctx, bin)
	if err != nil {
		return nil, err
	}
	mod, err := rt.InstantiateModule(ctx, cm, wazero.NewModuleConfig().WithStartFunctions())
	if err != nil {
		return nil, err
	}
	mem := mod.Memory()
	b, _ := mem.Read(0, mem.Size())
	return bytes.Clone(b), nil
}
