package wasmbound

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
)

// FuzzApply feeds Apply arbitrary bytes: it must never panic, and what it
// accepts must come out as a module it accepts again unchanged (so the
// manager and a child, applying it to the same bytes, agree). Where Apply
// coalesced data segments, wazero must instantiate both modules alike:
// both fail, or both succeed with the same linear memory.
func FuzzApply(f *testing.F) {
	seeds := [][]byte{
		growModule,
		module(section(secTable, vec(tableMin(1<<27), tableMin(1<<27), tableMin(1<<27)))),
		module(section(secTable, vec(tableMin(10), tableMin(20), tableMax(5, 8)))),
		module(section(secTable, vec(cat([]byte{0x40, 0x00}, tableMin(3), []byte{0xd0, 0x70, 0x0b})))),
		module(section(secImport, vec(cat(str("env"), str("t"), []byte{0x01}, tableMin(90)))), section(secTable, vec(tableMin(20)))),
		module(voidType, oneFunc, section(secCode, vec(cat(leb(8), vec(cat(leb(0xffffffff), []byte{0x7f})), []byte{0x0b})))),
		module(section(secElement, vec(
			cat([]byte{0x02, 0x00, 0x41, 0x00, 0x0b, 0x00}, vec(leb(0))),
			cat([]byte{0x05, 0x70}, vec([]byte{0xd2, 0x00, 0x0b}, []byte{0xd0, 0x70, 0x0b}))))),
		module(section(secData, vec(cat([]byte{0x00, 0x41, 0x00, 0x0b}, str("hi")), []byte{0x01, 0x00}))),
		module(voidType, oneFunc, emptyBody, section(secCustom, str("name"), cat([]byte{0x01}, leb(4), vec(cat(leb(0), str("f")))))),
		module(section(secType, vec(cat([]byte{0x4e}, vec([]byte{0x60, 0x01, 0x64, 0x70, 0x00}))))),
		dataModule(active(0, "0123456789abcdef"), active(20, "ghijklmnopqrstuv"), active(8, "XY")),
		dataModule(active(200, "high"), active(0, "0123456789abcdef0123"), active(24, "0123456789abcdef0123")),
		dataModule(active(40, "xxxx"), active(0, "0123456789abcdef0123456789abcdef0123456789"), active(44, "0123456789abcdef0123456789abcdef0123456789")),
		dataModule(active(65530, "0123"), active(65534, "0123456789")),
		dataModule(active(0, "0123456789abcdef"), active(20, "0123456789abcdef"), passive("pp")),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	small := Bounds{TableElements: 100, Tables: 2, Functions: 10, TotalLocals: 20, Globals: 10, Types: 10, Params: 4, Locals: 10, Imports: 4, Exports: 4, ElementSegments: 4, DataSegments: 4}
	f.Fuzz(func(t *testing.T, bin []byte) {
		for _, b := range []Bounds{Default, small} {
			in := bytes.Clone(bin)
			out, err := apply(in, b, 2)
			if b == Default {
				out, err = Apply(in, b)
			}
			if !bytes.Equal(in, bin) {
				t.Fatal("Apply changed its input")
			}
			if err != nil {
				continue
			}
			again, err := apply(out, b, 2)
			if b == Default {
				again, err = Apply(out, b)
			}
			if err != nil {
				t.Fatalf("Apply refused its own output: %v", err)
			}
			if !bytes.Equal(again, out) {
				t.Fatal("Apply changed its own output")
			}
			if w := walkData(out); w != nil && w.nsegs < walkData(bin).nsegs {
				sameInstance(t, bin, out)
			}
		}
	})
}

// walkData returns Apply's walk of bin, or nil if Apply refuses it.
func walkData(bin []byte) *walk {
	w := &walk{}
	r := &reader{b: bin, off: 8}
	for r.off < len(bin) {
		hdr := r.off
		id := r.byte1()
		size := r.u32()
		if r.err != nil || int64(size) > int64(len(bin)-r.off) {
			return nil
		}
		s := &reader{b: bin[:r.off+int(size)], off: r.off}
		if w.section(id, hdr, s) != nil {
			return nil
		}
		r.off += int(size)
	}
	return w
}

// sameInstance fails unless wazero instantiates a and b alike: both fail,
// or both succeed with the same memory. A start function gets a second.
func sameInstance(t *testing.T, a, b []byte) {
	t.Helper()
	var mem [2][]byte
	var err [2]error
	for i, bin := range [][]byte{a, b} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter().WithMemoryLimitPages(4).WithCloseOnContextDone(true))
		mod, e := rt.InstantiateWithConfig(ctx, bin, wazero.NewModuleConfig().WithStartFunctions())
		err[i] = e
		if e == nil && mod.Memory() != nil {
			m, _ := mod.Memory().Read(0, mod.Memory().Size())
			mem[i] = bytes.Clone(m)
		}
		_ = rt.Close(ctx)
		cancel()
	}
	if (err[0] == nil) != (err[1] == nil) || !bytes.Equal(mem[0], mem[1]) {
		t.Fatalf("coalescing changed the instance: errors %v and %v, memories equal: %v", err[0], err[1], bytes.Equal(mem[0], mem[1]))
	}
}
