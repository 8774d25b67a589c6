// Package wasmbound bounds what a WebAssembly module may declare before any
// engine decodes it, and caps its tables so they cannot grow past the bound.
//
// The guest's linear memory is bounded by wazero's memory limit, but
// nothing else a module declares is: a 217-byte module can declare three
// funcref tables of 2^27 elements (8 bytes each in wazero, 3 GiB per
// instance), and wazero's decoder allocates every vector by the count it
// reads from the wire before it reads the elements (a name section that
// claims 2^32 function names asks the Go runtime for 96 GiB, which kills
// the process outright). Apply walks the binary's sections, checks every
// count and size against the bytes that are there and against Bounds, and
// rewrites the maximum of each table so that all tables together stay
// within Bounds.TableElements; table.grow past that returns -1, as the
// spec allows.
//
// Apply also coalesces runs of active data segments into one segment each
// (dataseg.go), keeping the instantiated memory and its bounds traps: the
// Go linker emits tens of thousands of segments, and wazero evaluates
// each one's offset on every instantiation.
//
// Apply does not decode code: function bodies are skipped by size once
// their local declarations are counted. What it does parse, it parses the
// way wazero v1.12.0 does, so that every count wazero allocates by has been
// checked here first.
package wasmbound

import (
	"errors"
	"fmt"
)

// Bounds are the most a module may declare. A zero field means no bound
// for that item (the structural checks still apply).
type Bounds struct {
	// TableElements bounds the elements of all tables together, at
	// instantiation and after any table.grow, and the items of all
	// element segments together (they can only be copied into tables).
	TableElements uint32
	// Tables bounds the tables, imported and defined.
	Tables uint32
	// Functions bounds imported plus defined functions.
	Functions uint32
	// Globals bounds imported plus defined globals.
	Globals uint32
	// Types bounds the function types of the type section.
	Types uint32
	// Params bounds the parameters, and separately the results, of
	// one function type.
	Params uint32
	// Locals bounds the locals one function body declares, TotalLocals
	// those of all bodies together (wazero keeps a byte per local, and a
	// six-byte body can declare 2^32-1 of them).
	Locals      uint32
	TotalLocals uint32
	// Imports and Exports bound those sections' entries.
	Imports uint32
	Exports uint32
	// ElementSegments and DataSegments bound those sections' entries.
	ElementSegments uint32
	DataSegments    uint32
}

// Default is what wagi-fcgi applies. Reasons, from the modules in
// tests/testdata, cmd/compile built for wasip1 (49 MB of wasm, the largest
// module at hand) and wazero v1.12.0's costs measured by compiling
// generated modules:
//
//   - TableElements: 1 Mi elements is 8 MiB of references per instance,
//     small next to the default 128 MiB linear memory. C modules have a
//     table of 5 to 7 elements, the Go hello 5,863, the Go compiler 24,026.
//   - Tables: 100, as wasmparser (every toolchain emits one table).
//   - Functions: 200,000, ten times the Go compiler's 19,930 (C modules
//     have tens to hundreds). wazero holds ~270 bytes per function after
//     compiling it (100,000 empty functions: 37 MiB peak RSS), so the bound
//     keeps an empty-function bomb near 55 MiB.
//   - Globals: 100,000 (Go has 8, C 1); ~135 bytes each at compile time
//     and again per live instance (1,000,000 globals: 134 MiB, then 270).
//   - DataSegments: 100,000, the Go linker's own cap (the Go compiler has
//     exactly 100,000, the Go hello 30,477) and the browsers' limit.
//   - Locals: 50,000 per function, the browsers' limit (Go's largest is 20,
//     C's 38); TotalLocals: 16 Mi, 16 MiB of local types in wazero (the Go
//     compiler declares 90,795 in all).
//   - Types, Params, Imports, Exports, ElementSegments: the limits browser
//     engines agreed on (V8's wasm-limits.h: 1,000 parameters or results;
//     100,000 imports, exports and element segments), except Types, cut
//     from 1,000,000 to 100,000 like Functions (the Go compiler has 13
//     types, C modules under 20). Every toolchain stays within these,
//     since modules over them do not load in a browser.
var Default = Bounds{
	TableElements:   1 << 20,
	Tables:          100,
	Functions:       200_000,
	Globals:         100_000,
	Types:           100_000,
	Params:          1_000,
	Locals:          50_000,
	TotalLocals:     1 << 24,
	Imports:         100_000,
	Exports:         100_000,
	ElementSegments: 100_000,
	DataSegments:    100_000,
}

// ErrBound is wrapped by the errors of a module that declares more than
// its Bounds allow.
var ErrBound = errors.New("module exceeds a bound")

// ErrMalformed is wrapped by the errors of bytes that are not a well-formed
// module (a count or size that does not fit in what follows, a truncated
// section); wazero would refuse them too, but only after allocating by
// the count.
var ErrMalformed = errors.New("malformed module")

// Section ids of the binary format.
const (
	secCustom    = 0
	secType      = 1
	secImport    = 2
	secFunction  = 3
	secTable     = 4
	secMemory    = 5
	secGlobal    = 6
	secExport    = 7
	secStart     = 8
	secElement   = 9
	secCode      = 10
	secData      = 11
	secDataCount = 12
	secTag       = 13
)

var sectionNames = [...]string{"custom", "type", "import", "function", "table", "memory", "global", "export", "start", "element", "code", "data", "data count", "tag"}

func sectionName(id byte) string {
	if int(id) < len(sectionNames) {
		return sectionNames[id]
	}
	return fmt.Sprintf("unknown (id %d)", id)
}

// table is a table declared in the table section: where its limits are in
// the binary, so Apply can rewrite its maximum.
type table struct {
	flagAt, minEnd, maxEnd int // offsets in bin: the limits flag, the end of min, the end of max (minEnd if none)
	min                    uint32
	max                    uint32
	hasMax                 bool
}

// walk holds what Apply learned of a module.
type walk struct {
	b Bounds

	importedFuncs, importedGlobals uint32
	importedTables                 uint32
	totalLocals                    uint64
	importedTableElems             uint64
	definedFuncs                   uint32
	tableSec                       [2]int // start and end of the table section's content; 0, 0 if none
	tableHdr                       int    // offset of the table section's id byte
	tables                         []table
	seen                           [secTag + 1]bool

	// For coalescing data segments (dataseg.go).
	dataSec        [2]int    // start and end of the data section's content
	dataHdr        int       // offset of the data section's id byte
	segs           []dataSeg // the candidates up to the first other segment
	nsegs          int       // segments in the data section
	segsDone       bool      // a segment that ends coalescing was seen
	passiveData    bool
	importedMemory bool
	minSegs        int // coalesce data sections of at least this many segments
}

// Apply checks bin against b and returns the bytes to compile: bin itself
// when no table needs a new maximum and no data segments can be coalesced
// (see dataseg.go), otherwise a copy with the table section, the data
// section or both re-encoded. The result depends only on bin and b, so every
// process that applies the same bounds to the same module compiles the
// same bytes (and wazero's compilation cache, keyed by them, hits).
//
// Errors wrap ErrBound or ErrMalformed and name the item and the numbers.
// Apply never panics, whatever bin holds.
func Apply(bin []byte, b Bounds) ([]byte, error) {
	return apply(bin, b, minSegments)
}

// apply is Apply, coalescing data sections of at least minSegs segments.
func apply(bin []byte, b Bounds, minSegs int) ([]byte, error) {
	if len(bin) < 8 || string(bin[:4]) != "\x00asm" {
		return nil, fmt.Errorf("%w: no \\0asm magic", ErrMalformed)
	}
	if string(bin[4:8]) != "\x01\x00\x00\x00" {
		return nil, fmt.Errorf("%w: binary format version %x, want 1", ErrMalformed, bin[4:8])
	}
	w := &walk{b: b, minSegs: minSegs}
	r := &reader{b: bin, off: 8}
	for r.off < len(bin) {
		hdr := r.off
		id := r.byte1()
		size := r.u32()
		if r.err != nil {
			return nil, fmt.Errorf("%w: section header at offset %d: %v", ErrMalformed, hdr, r.err)
		}
		if int64(size) > int64(len(bin)-r.off) {
			return nil, fmt.Errorf("%w: %s section at offset %d declares %d bytes, only %d follow",
				ErrMalformed, sectionName(id), hdr, size, len(bin)-r.off)
		}
		s := &reader{b: bin[:r.off+int(size)], off: r.off}
		if id != secCustom && int(id) < len(w.seen) {
			if w.seen[id] {
				return nil, fmt.Errorf("%w: a second %s section at offset %d", ErrMalformed, sectionName(id), hdr)
			}
			w.seen[id] = true
		}
		if err := w.section(id, hdr, s); err != nil {
			return nil, err
		}
		r.off += int(size)
	}
	if err := w.totals(); err != nil {
		return nil, err
	}
	return w.rewrite(bin), nil
}

// rewrite returns bin with the table and data sections replaced by their
// rewritten forms, where they have one.
func (w *walk) rewrite(bin []byte) []byte {
	type splice struct {
		from, to int
		with     []byte
	}
	var sp []splice
	if t := w.tableRewrite(bin); t != nil {
		sp = append(sp, splice{w.tableHdr, w.tableSec[1], t})
	}
	if d := w.coalesce(bin); d != nil {
		sp = append(sp, splice{w.dataHdr, w.dataSec[1], d})
	}
	if len(sp) == 0 {
		return bin
	}
	if len(sp) == 2 && sp[0].from > sp[1].from {
		sp[0], sp[1] = sp[1], sp[0]
	}
	size := len(bin)
	for _, s := range sp {
		size += len(s.with) - (s.to - s.from)
	}
	out := make([]byte, 0, size)
	prev := 0
	for _, s := range sp {
		out = append(out, bin[prev:s.from]...)
		out = append(out, s.with...)
		prev = s.to
	}
	return append(out, bin[prev:]...)
}

// section checks one section; s spans exactly its content.
func (w *walk) section(id byte, hdr int, s *reader) error {
	var err error
	switch id {
	case secCustom:
		err = w.custom(s)
	case secType:
		err = w.types(s)
	case secImport:
		err = w.imports(s)
	case secFunction:
		n := s.count("functions", 1)
		w.definedFuncs = n
		s.off = len(s.b) // type indices: one LEB each, nothing allocated by them
	case secTable:
		w.tableHdr = hdr
		w.tableSec = [2]int{s.off, len(s.b)}
		err = w.tableSection(s)
	case secGlobal:
		n := s.count("globals", 3)
		if err := over("the module", "globals", uint64(n)+uint64(w.importedGlobals), w.b.Globals); err != nil {
			return err
		}
		s.off = len(s.b) // a global's init expression allocates no more than its bytes
	case secExport:
		err = w.exports(s)
	case secElement:
		err = w.elements(s)
	case secCode:
		err = w.code(s)
	case secData:
		w.dataHdr = hdr
		w.dataSec = [2]int{s.off, len(s.b)}
		err = w.data(s)
	case secDataCount:
		n := s.u32()
		if s.err == nil {
			err = over("the data count section", "data segments", uint64(n), w.b.DataSegments)
		}
	default:
		// memory (at most one, wazero checks), start (one index), tag
		// (refused: exceptions are not enabled) and unknown ids (refused by
		// wazero): nothing is allocated by a count in them.
		s.off = len(s.b)
	}
	if err != nil {
		return err
	}
	if s.err != nil {
		return fmt.Errorf("%w: %s section at offset %d: %v", ErrMalformed, sectionName(id), hdr, s.err)
	}
	if s.off != len(s.b) {
		return fmt.Errorf("%w: %s section at offset %d: %d bytes left over", ErrMalformed, sectionName(id), hdr, len(s.b)-s.off)
	}
	return nil
}

// over reports a count over its bound (0: no bound).
func over(who, what string, n uint64, bound uint32) error {
	if exceeds(n, bound) {
		return fmt.Errorf("%w: %s declares %d %s, over the bound of %d", ErrBound, who, n, what, bound)
	}
	return nil
}

// exceeds is over's test, for loops that should not format a name for
// every item.
func exceeds(n uint64, bound uint32) bool { return bound != 0 && n > uint64(bound) }

func (w *walk) types(s *reader) error {
	n := s.count("types", 1)
	var total uint64
	for i := uint32(0); i < n && s.err == nil; i++ {
		members := uint32(1)
		if s.peek() == 0x4e { // a recursion group of function types
			s.byte1()
			members = s.count("types in a recursion group", 3)
		}
		for j := uint32(0); j < members && s.err == nil; j++ {
			total++
			if err := over("the type section", "types", total, w.b.Types); err != nil {
				return err
			}
			if form := s.byte1(); s.err == nil && form != 0x60 {
				s.fail("type %d is not a function type (%#x)", total-1, form)
				break
			}
			for _, what := range []string{"parameters", "results"} {
				k := s.count(what, 1)
				if exceeds(uint64(k), w.b.Params) {
					return over(fmt.Sprintf("type %d", total-1), what, uint64(k), w.b.Params)
				}
				for v := uint32(0); v < k && s.err == nil; v++ {
					s.valType()
				}
			}
		}
	}
	return nil
}

func (w *walk) imports(s *reader) error {
	n := s.count("imports", 4)
	if err := over("the import section", "imports", uint64(n), w.b.Imports); err != nil {
		return err
	}
	for i := uint32(0); i < n && s.err == nil; i++ {
		s.name()
		s.name()
		switch kind := s.byte1(); kind {
		case 0x00: // function
			s.u32()
			w.importedFuncs++
		case 0x01: // table
			t := s.tableType()
			w.importedTableElems += uint64(t.min)
			w.importedTables++
		case 0x02: // memory
			w.importedMemory = true
			switch flag := s.byte1(); flag {
			case 0x00, 0x02:
				s.u32()
			case 0x01, 0x03:
				s.u32()
				s.u32()
			default:
				s.fail("import %d: memory limits flag %#x", i, flag)
			}
		case 0x03: // global
			s.valType()
			s.byte1()
			w.importedGlobals++
		case 0x04: // tag
			s.byte1()
			s.u32()
		default:
			if s.err == nil {
				s.fail("import %d: unknown kind %#x", i, kind)
			}
		}
	}
	return nil
}

func (w *walk) tableSection(s *reader) error {
	n := s.count("tables", 3)
	if err := over("the module", "tables", uint64(n)+uint64(w.importedTables), w.b.Tables); err != nil {
		return err
	}
	for i := uint32(0); i < n && s.err == nil; i++ {
		t := s.tableType()
		if s.err != nil {
			break
		}
		if err := over(fmt.Sprintf("table %d", i), "elements", uint64(t.min), w.b.TableElements); err != nil {
			return err
		}
		w.tables = append(w.tables, t)
	}
	return nil
}

func (w *walk) exports(s *reader) error {
	n := s.count("exports", 3)
	if err := over("the export section", "exports", uint64(n), w.b.Exports); err != nil {
		return err
	}
	for i := uint32(0); i < n && s.err == nil; i++ {
		s.name()
		s.byte1()
		s.u32()
	}
	return nil
}

func (w *walk) elements(s *reader) error {
	n := s.count("element segments", 3)
	if err := over("the element section", "element segments", uint64(n), w.b.ElementSegments); err != nil {
		return err
	}
	var items uint64
	for i := uint32(0); i < n && s.err == nil; i++ {
		flags := s.u32()
		if s.err != nil {
			break
		}
		if flags > 7 {
			s.fail("element segment %d: flags %d", i, flags)
			break
		}
		if flags&2 != 0 && flags&1 == 0 { // active with a table index
			s.u32()
		}
		if flags&1 == 0 { // active: an offset
			s.constExpr()
		}
		if flags&3 != 0 { // not the legacy form: an element kind or a reference type
			if flags&4 == 0 {
				s.byte1()
			} else {
				s.refType()
			}
		}
		k := s.count("element items", 1)
		items += uint64(k)
		if err := over("the element section", "items in its segments", items, w.b.TableElements); err != nil {
			return err
		}
		for j := uint32(0); j < k && s.err == nil; j++ {
			if flags&4 == 0 {
				s.u32()
			} else {
				s.constExpr()
			}
		}
	}
	return nil
}

func (w *walk) code(s *reader) error {
	n := s.count("function bodies", 2)
	// wazero allocates the bodies before it compares their count with
	// the function section's.
	if err := over("the code section", "function bodies", uint64(n), w.b.Functions); err != nil {
		return err
	}
	for i := uint32(0); i < n && s.err == nil; i++ {
		size := s.u32()
		if s.err != nil {
			break
		}
		if int64(size) > int64(len(s.b)-s.off) {
			s.fail("function body %d declares %d bytes, only %d follow", i, size, len(s.b)-s.off)
			break
		}
		end := s.off + int(size)
		body := &reader{b: s.b[:end], off: s.off}
		decls := body.count("local declarations", 2)
		var locals uint64
		for j := uint32(0); j < decls && body.err == nil; j++ {
			locals += uint64(body.u32())
			body.valType()
			if exceeds(locals, w.b.Locals) {
				return over(fmt.Sprintf("function body %d", i), "locals", locals, w.b.Locals)
			}
			if err := over("the code section", "locals in all", w.totalLocals+locals, w.b.TotalLocals); err != nil {
				return err
			}
		}
		if body.err != nil {
			s.fail("function body %d: %v", i, body.err)
			break
		}
		w.totalLocals += locals
		s.off = end
	}
	return nil
}

func (w *walk) data(s *reader) error {
	n := s.count("data segments", 2)
	if err := over("the data section", "data segments", uint64(n), w.b.DataSegments); err != nil {
		return err
	}
	w.nsegs = int(n)
	// A candidate for coalescing takes 5 bytes at least, and only
	// candidates are kept (dataseg.go).
	w.segs = make([]dataSeg, 0, min(int(n), s.left()/5))
	for i := uint32(0); i < n && s.err == nil; i++ {
		at := s.off
		expr := -1
		flags := s.u32()
		switch flags {
		case 0:
			expr = s.off
			s.constExpr()
		case 1:
		case 2:
			s.u32()
			expr = s.off
			s.constExpr()
		default:
			if s.err == nil {
				s.fail("data segment %d: flags %d", i, flags)
			}
		}
		var offset []byte
		if expr >= 0 && s.err == nil {
			offset = s.b[expr:s.off]
		}
		dataAt := s.bytes("data segment")
		if s.err == nil {
			w.dataSegment(flags, at, offset, dataAt, s.off)
		}
	}
	return nil
}

// custom checks the name section, which wazero decodes always (the other
// custom sections it copies by their size, which the section walk checked).
// wazero reads a known subsection by its content, not by its declared
// size, so a subsection here must hold exactly what it declares.
func (w *walk) custom(s *reader) error {
	if string(s.name()) != "name" || s.err != nil {
		s.off = len(s.b)
		return nil
	}
	for s.off < len(s.b) && s.err == nil {
		id := s.byte1()
		size := s.u32()
		if s.err != nil {
			break
		}
		if int64(size) > int64(len(s.b)-s.off) {
			s.fail("name subsection %d declares %d bytes, only %d follow", id, size, len(s.b)-s.off)
			break
		}
		sub := &reader{b: s.b[:s.off+int(size)], off: s.off}
		switch id {
		case 0:
			sub.name()
		case 1:
			n := sub.count("function names", 2)
			if err := over("the name section", "function names", uint64(n), w.b.Functions); err != nil {
				return err
			}
			for i := uint32(0); i < n && sub.err == nil; i++ {
				sub.u32()
				sub.name()
			}
		case 2:
			n := sub.count("functions with local names", 2)
			if err := over("the name section", "functions with local names", uint64(n), w.b.Functions); err != nil {
				return err
			}
			for i := uint32(0); i < n && sub.err == nil; i++ {
				sub.u32()
				k := sub.count("local names", 2)
				// A function's locals index space holds its parameters too.
				bound := uint64(w.b.Locals) + uint64(w.b.Params)
				if w.b.Locals == 0 || w.b.Params == 0 || bound > 1<<32-1 {
					bound = 0
				}
				if err := over("the name section", "local names for one function", uint64(k), uint32(bound)); err != nil {
					return err
				}
				for j := uint32(0); j < k && sub.err == nil; j++ {
					sub.u32()
					sub.name()
				}
			}
		default:
			sub.off = len(sub.b)
		}
		if sub.err == nil && sub.off != len(sub.b) {
			sub.fail("name subsection %d: %d bytes left over", id, len(sub.b)-sub.off)
		}
		if sub.err != nil {
			s.err = sub.err
			break
		}
		s.off = sub.off
	}
	return nil
}

// totals checks the counts that span sections.
func (w *walk) totals() error {
	if err := over("the module", "functions (imported and defined)", uint64(w.importedFuncs)+uint64(w.definedFuncs), w.b.Functions); err != nil {
		return err
	}
	sum := w.importedTableElems
	for _, t := range w.tables {
		sum += uint64(t.min)
	}
	if err := over("the module's tables", "elements together", sum, w.b.TableElements); err != nil {
		return err
	}
	return nil
}

// tableRewrite gives the tables maxima that keep them within the bound
// together: the room left over the minimums goes to the tables in order,
// each getting what it declares (no maximum: all that is left). It
// returns the new table section, or nil if no maximum changes.
func (w *walk) tableRewrite(bin []byte) []byte {
	if w.b.TableElements == 0 || len(w.tables) == 0 {
		return nil
	}
	room := uint64(w.b.TableElements) - w.importedTableElems
	for _, t := range w.tables {
		room -= uint64(t.min) // totals checked that the minimums fit
	}
	maxima := make([]uint32, len(w.tables))
	change := false
	for i, t := range w.tables {
		want := uint64(t.max) - uint64(t.min)
		if !t.hasMax || want > room {
			want = room
			change = true
		}
		room -= want
		maxima[i] = t.min + uint32(want)
	}
	if !change {
		return nil
	}
	var content []byte
	prev := w.tableSec[0]
	for i, t := range w.tables {
		content = append(content, bin[prev:t.flagAt]...)
		content = append(content, 0x01)
		content = append(content, bin[t.flagAt+1:t.minEnd]...)
		content = appendU32(content, maxima[i])
		prev = t.maxEnd // what follows (an init expression) is kept
	}
	content = append(content, bin[prev:w.tableSec[1]]...)
	out := make([]byte, 0, len(content)+6)
	out = append(out, secTable)
	out = appendU32(out, uint32(len(content)))
	return append(out, content...)
}

func appendU32(b []byte, v uint32) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}
