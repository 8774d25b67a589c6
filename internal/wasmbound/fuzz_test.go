package wasmbound

import (
	"bytes"
	"testing"
)

// FuzzApply feeds Apply arbitrary bytes: it must never panic, and what it
// accepts must come out as a module it accepts again unchanged (so the
// manager and a child, applying it to the same bytes, agree).
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
	}
	for _, s := range seeds {
		f.Add(s)
	}
	small := Bounds{TableElements: 100, Tables: 2, Functions: 10, TotalLocals: 20, Globals: 10, Types: 10, Params: 4, Locals: 10, Imports: 4, Exports: 4, ElementSegments: 4, DataSegments: 4}
	f.Fuzz(func(t *testing.T, bin []byte) {
		for _, b := range []Bounds{Default, small} {
			in := bytes.Clone(bin)
			out, err := Apply(in, b)
			if !bytes.Equal(in, bin) {
				t.Fatal("Apply changed its input")
			}
			if err != nil {
				continue
			}
			again, err := Apply(out, b)
			if err != nil {
				t.Fatalf("Apply refused its own output: %v", err)
			}
			if !bytes.Equal(again, out) {
				t.Fatal("Apply changed its own output")
			}
		}
	})
}
