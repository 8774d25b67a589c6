package wasmbound

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/tetratelabs/wazero"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// Data modules: one page of memory, exported as "memory", and the data
// segments given.

func memPages(min uint32) []byte { return section(secMemory, vec(cat([]byte{0x00}, leb(min)))) }

var exportMemory = section(secExport, vec(cat(str("memory"), []byte{0x02, 0x00})))

// active is an active segment of memory 0 at i32.const off.
func active(off int32, data string) []byte {
	return cat([]byte{0x00, 0x41}, appendS32(nil, off), []byte{0x0b}, str(data))
}

// activeGlobal is an active segment at global.get g.
func activeGlobal(g uint32, data string) []byte {
	return cat([]byte{0x00, 0x23}, leb(g), []byte{0x0b}, str(data))
}

func passive(data string) []byte { return cat([]byte{0x01}, str(data)) }

func dataModule(segs ...[]byte) []byte {
	return module(memPages(1), exportMemory, section(secData, vec(segs...)))
}

// importGlobal imports env.g, an immutable i32.
var importGlobal = section(secImport, vec(cat(str("env"), str("g"), []byte{0x03, 0x7f, 0x00})))

// envModule exports g = 40 and a memory, for the modules that import them.
var envModule = module(
	memPages(1),
	section(secGlobal, vec([]byte{0x7f, 0x00, 0x41, 40, 0x0b})),
	section(secExport, vec(cat(str("g"), []byte{0x03, 0x00}), cat(str("mem"), []byte{0x02, 0x00}))))

// instantiate runs bin in wazero and returns its memory, or the error
// that kept it from instantiating.
func instantiate(t testing.TB, bin []byte) ([]byte, error) {
	t.Helper()
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter().WithMemoryLimitPages(4))
	defer rt.Close(ctx)
	if _, err := rt.InstantiateWithConfig(ctx, envModule, wazero.NewModuleConfig().WithName("env")); err != nil {
		t.Fatal(err)
	}
	mod, err := rt.InstantiateWithConfig(ctx, bin, wazero.NewModuleConfig().WithName("m"))
	if err != nil {
		return nil, err
	}
	mem := mod.ExportedMemory("memory")
	if mem == nil {
		return nil, nil
	}
	b, _ := mem.Read(0, mem.Size())
	return bytes.Clone(b), nil
}

// dataSegments returns how many data segments Apply's walk finds in bin.
func dataSegments(t testing.TB, bin []byte) int {
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
	return w.nsegs
}

func TestCoalescingDataSegments(t *testing.T) {
	big := strings.Repeat("z", 40)
	cases := []struct {
		name     string
		bin      []byte
		segments int  // after Apply
		fails    bool // instantiation fails, before and after
	}{
		{name: "segments in offset order with small gaps become one",
			bin: dataModule(active(16, big), active(60, big), active(110, big)), segments: 1},
		{name: "a later segment that overlaps an earlier one still overwrites it",
			bin: dataModule(active(16, "aaaaaaaa"), active(20, "BB"), active(18, "c")), segments: 1},
		{name: "a segment going back inside its run is applied in its order",
			bin: dataModule(active(0, big), active(60, "tail"), active(10, "back")), segments: 1},
		{name: "segments not in offset order are coalesced where their runs do not meet",
			bin: dataModule(active(200, "high"), active(0, big), active(44, big)), segments: 2},
		{name: "a run whose zeros would cover an earlier segment is left alone",
			bin: dataModule(active(40, "xxxx"), active(0, big), active(44, big)), segments: 3},
		{name: "a gap over the bound splits the run",
			bin: dataModule(active(0, big), active(40+maxGap+1, big), active(2*40+maxGap+10, big)), segments: 2},
		{name: "a run with more zeros than its bound allows is left alone",
			bin: dataModule(active(0, "a"), active(500, "b"), active(1000, "c")), segments: 3},
		{name: "a global.get offset ends coalescing: what follows it stays as it is",
			bin: module(importGlobal, memPages(1), exportMemory, section(secData, vec(
				active(0, big), active(44, big), activeGlobal(0, "gg"), active(100, big), active(144, big)))), segments: 1 + 1 + 2},
		{name: "a module with a passive segment is left alone",
			bin: dataModule(active(0, "ab"), active(4, "cd"), passive("pp")), segments: 3},
		{name: "a module with a data count section is left alone",
			bin: module(memPages(1), exportMemory, section(secDataCount, leb(2)), section(secData, vec(active(0, "ab"), active(4, "cd")))), segments: 2},
		{name: "a module that imports its memory is left alone",
			bin: module(section(secImport, vec(cat(str("env"), str("mem"), []byte{0x02, 0x00, 0x01}))), section(secData, vec(active(0, "ab"), active(4, "cd")))), segments: 2},
		{name: "a run reaching past the memory still fails instantiation",
			bin: dataModule(active(65530, "ab"), active(65534, "cdef")), segments: 1, fails: true},
		{name: "a zero-length segment past the memory still fails instantiation",
			bin: dataModule(active(65530, "ab"), active(65537, "")), segments: 1, fails: true},
		{name: "a segment at a negative offset is left alone and still fails",
			bin: dataModule(active(-1, "ab"), active(0, "cd"), active(4, "ef")), segments: 3, fails: true},
		{name: "an offset in a padded LEB128 is read as wazero reads it",
			bin: dataModule(cat([]byte{0x00, 0x41, 0x90, 0x80, 0x80, 0x80, 0x00, 0x0b}, str("pad")), active(20, "ded")), segments: 1},
		{name: "segments at the very end of memory fit",
			bin: dataModule(active(65530, "ab"), active(65534, "cd")), segments: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := apply(tc.bin, Default, 2)
			if err != nil {
				t.Fatal(err)
			}
			if got := dataSegments(t, out); got != tc.segments {
				t.Errorf("%d data segments after Apply, want %d", got, tc.segments)
			}
			if len(out) > len(tc.bin)+len(tc.bin)/2 {
				t.Errorf("Apply grew the module from %d to %d bytes", len(tc.bin), len(out))
			}
			before, errBefore := instantiate(t, tc.bin)
			after, errAfter := instantiate(t, out)
			if (errBefore != nil) != tc.fails || (errAfter != nil) != tc.fails {
				t.Fatalf("instantiation errors %v before, %v after; want failure: %v", errBefore, errAfter, tc.fails)
			}
			if !bytes.Equal(before, after) {
				t.Error("memory after instantiation differs")
			}
			again, err := apply(out, Default, 2)
			if err != nil || !bytes.Equal(again, out) {
				t.Errorf("applying again changed the module: %v", err)
			}
		})
	}
}

func TestADataSectionOfFewSegmentsIsLeftAsItIs(t *testing.T) {
	var segs [][]byte
	for i := range minSegments {
		segs = append(segs, active(int32(i*44), strings.Repeat("d", 40)))
	}
	few := dataModule(segs[:minSegments-1]...)
	if out, err := Apply(few, Default); err != nil || &out[0] != &few[0] {
		t.Fatalf("%d segments: not returned as they were (%v)", minSegments-1, err)
	}
	enough := dataModule(segs...)
	out, err := Apply(enough, Default)
	if err != nil {
		t.Fatal(err)
	}
	if got := dataSegments(t, out); got != 1 {
		t.Fatalf("%d segments coalesced to %d, want 1", minSegments, got)
	}
}

func TestI32ConstExprIsReadAsWazeroReadsIt(t *testing.T) {
	cases := []struct {
		expr []byte
		want uint32
		ok   bool
	}{
		{[]byte{0x41, 0x00, 0x0b}, 0, true},
		{[]byte{0x41, 0x7f, 0x0b}, 0xffffffff, true},
		{[]byte{0x41, 0x80, 0x08, 0x0b}, 1024, true},
		{[]byte{0x41, 0x80, 0x80, 0x80, 0x80, 0x00, 0x0b}, 0, true},
		{[]byte{0x41, 0xff, 0xff, 0xff, 0xff, 0x07, 0x0b}, 0x7fffffff, true},
		{[]byte{0x41, 0x80, 0x80, 0x80, 0x80, 0x78, 0x0b}, 0x80000000, true},
		{[]byte{0x41, 0x80, 0x80, 0x80, 0x80, 0x10, 0x0b}, 0, false}, // unused bits set
		{[]byte{0x41, 0x80, 0x80, 0x80, 0x80, 0x48, 0x0b}, 0, false}, // sign bits inconsistent
		{[]byte{0x41, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0x0b}, 0, false},
		{[]byte{0x41, 0x80, 0x0b}, 0, false},
		{[]byte{0x23, 0x00, 0x0b}, 0, false},
		{[]byte{0x41, 0x01, 0x41, 0x01, 0x6a, 0x0b}, 0, false},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("% x", tc.expr), func(t *testing.T) {
			got, ok := i32ConstExpr(tc.expr)
			if ok != tc.ok || (ok && got != tc.want) {
				t.Fatalf("i32ConstExpr = %#x, %v; want %#x, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// BenchmarkApplyGoHello measures what Apply costs the compile process and
// a child on the Go hello (30,477 data segments, coalesced to a few).
func BenchmarkApplyGoHello(b *testing.B) {
	bin, err := os.ReadFile(testenv.Module(b, "gohello"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(bin)))
	for b.Loop() {
		if _, err := Apply(bin, Default); err != nil {
			b.Fatal(err)
		}
	}
}
