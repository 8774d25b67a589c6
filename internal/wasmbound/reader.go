package wasmbound

import "fmt"

// reader reads the binary format from b[off:]. It never reads past len(b)
// (callers cut b at the end of the section or entry being read) and keeps
// the first error; after an error every read returns zero.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
}

func (r *reader) left() int { return len(r.b) - r.off }

func (r *reader) peek() byte {
	if r.err != nil || r.off >= len(r.b) {
		return 0
	}
	return r.b[r.off]
}

func (r *reader) byte1() byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.b) {
		r.fail("unexpected end at offset %d", r.off)
		return 0
	}
	v := r.b[r.off]
	r.off++
	return v
}

// u32 reads an unsigned LEB128 of at most 5 bytes whose value fits in 32
// bits, as wazero requires.
func (r *reader) u32() uint32 {
	var v uint32
	for i := 0; i < 5; i++ {
		c := r.byte1()
		if r.err != nil {
			return 0
		}
		if i == 4 && c&0xf0 != 0 {
			r.fail("LEB128 at offset %d overflows 32 bits", r.off-1)
			return 0
		}
		v |= uint32(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			return v
		}
	}
	r.fail("LEB128 at offset %d is longer than 5 bytes", r.off)
	return 0
}

// sleb skips a signed LEB128 of at most n bytes.
func (r *reader) sleb(n int) {
	for i := 0; i < n; i++ {
		c := r.byte1()
		if r.err != nil || c&0x80 == 0 {
			return
		}
	}
	r.fail("LEB128 at offset %d is longer than %d bytes", r.off, n)
}

// count reads a vector length and fails unless that many entries of at
// least min bytes each fit in what is left: the check wazero's decoder
// does not make before it allocates by the count.
func (r *reader) count(what string, min int) uint32 {
	at := r.off
	n := r.u32()
	if r.err == nil && uint64(n)*uint64(min) > uint64(r.left()) {
		r.fail("%d %s declared at offset %d, in %d bytes", n, what, at, r.left())
		return 0
	}
	return n
}

// bytes skips a length-prefixed byte vector and returns where its bytes
// begin.
func (r *reader) bytes(what string) int {
	at := r.off
	n := r.u32()
	if r.err == nil && uint64(n) > uint64(r.left()) {
		r.fail("%s at offset %d declares %d bytes, only %d follow", what, at, n, r.left())
		return r.off
	}
	start := r.off
	r.off += int(n)
	return start
}

// name reads a length-prefixed name; the result aliases the binary.
func (r *reader) name() []byte {
	start := r.off
	r.bytes("a name")
	if r.err != nil {
		return nil
	}
	// Skip the length: re-read it to find where the bytes begin.
	l := &reader{b: r.b, off: start}
	l.u32()
	return r.b[l.off:r.off]
}

// valType skips a value type: one byte, or a reference type prefix with a
// heap type (as wazero v1.12.0 accepts them).
func (r *reader) valType() {
	if c := r.byte1(); c == 0x63 || c == 0x64 {
		r.sleb(5)
	}
}

func (r *reader) refType() { r.valType() }

// tableType reads a table type, remembering where its limits are.
func (r *reader) tableType() table {
	var t table
	init := false
	if r.peek() == 0x40 { // a table with an initialiser: 0x40 0x00 tabletype expr
		r.byte1()
		if z := r.byte1(); r.err == nil && z != 0 {
			r.fail("table prefix 0x40 %#x", z)
		}
		init = true
	}
	r.refType()
	t.flagAt = r.off
	switch flag := r.byte1(); flag {
	case 0x00:
		t.min = r.u32()
		t.minEnd = r.off
	case 0x01:
		t.min = r.u32()
		t.minEnd = r.off
		t.max = r.u32()
		t.hasMax = true
		if r.err == nil && t.max < t.min {
			r.fail("table maximum %d under its minimum %d", t.max, t.min)
		}
	default:
		if r.err == nil {
			r.fail("table limits flag %#x (only 0x00 and 0x01 are valid for a table)", flag)
		}
	}
	t.maxEnd = r.off
	if init {
		r.constExpr()
	}
	return t
}

// constExpr skips a constant expression, with the opcodes wazero v1.12.0
// accepts in one.
func (r *reader) constExpr() {
	for r.err == nil {
		switch op := r.byte1(); op {
		case 0x0b: // end
			return
		case 0x41: // i32.const
			r.sleb(5)
		case 0x42: // i64.const
			r.sleb(10)
		case 0x43: // f32.const
			r.skip(4)
		case 0x44: // f64.const
			r.skip(8)
		case 0x23, 0xd2: // global.get, ref.func
			r.u32()
		case 0xd0: // ref.null
			r.sleb(5)
		case 0x6a, 0x6b, 0x6c, 0x7c, 0x7d, 0x7e: // extended const: i32/i64 add, sub, mul
		case 0xfd: // v128.const
			if sub := r.byte1(); r.err == nil && sub != 0x0c {
				r.fail("vector opcode %#x in a constant expression", sub)
			}
			r.skip(16)
		default:
			if r.err == nil {
				r.fail("opcode %#x in a constant expression", op)
			}
		}
	}
}

func (r *reader) skip(n int) {
	if r.err == nil && n > r.left() {
		r.fail("unexpected end at offset %d", r.off)
		return
	}
	if r.err == nil {
		r.off += n
	}
}
