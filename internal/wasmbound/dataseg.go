package wasmbound

import (
	"cmp"
	"slices"
)

// Coalescing active data segments.
//
// wazero evaluates the offset expression of every active data segment on
// every instantiation (ModuleInstance.applyData), allocating as it goes.
// The Go linker emits a segment wherever its data has a run of more than
// eight zero bytes, so the Go hello has 30,477 segments and those
// evaluations were three quarters of its instantiation. Apply rewrites
// runs of such segments into one segment each, with the gaps between them
// written as zeros: the memory a module instantiates with is the same
// byte for byte, and instantiation fails exactly when it failed before.
//
// Why that holds, for the segments this rewrites (and it rewrites nothing
// else):
//
//   - Only active segments of memory 0 in the flags-0 encoding whose offset
//     is exactly `i32.const c; end` are candidates. The first segment that
//     is not one (a global.get offset, an extended constant expression, an
//     offset a decoder might read otherwise, one reaching past 2 GiB) ends
//     coalescing: what follows it stays as it is.
//   - A run is consecutive segments, each starting at or after the run's
//     first offset and at most maxGap bytes past the run's end so far. Its
//     segments are copied into the new one in their order, so a later one
//     that overlaps an earlier one still overwrites it.
//   - The zeros of a coalesced run overwrite nothing: a run is coalesced
//     only if its extent [lowest offset, highest end) meets the extent of
//     no other run (a run of one segment included). Linear memory is zero
//     until data is applied, segments after the run overwrite it as they
//     did before, and segments before it wrote nothing inside it.
//   - The coalesced segment ends where the run's farthest-reaching part
//     ends, so it is out of bounds iff one of its parts was. wazero then
//     fails the instantiation; the parts before it have been written to
//     memory, but that memory is the new instance's own and is discarded
//     with it. A module that imports its memory could observe those
//     partial writes, so such a module is left alone (wagi-fcgi's compiler
//     refuses imported memories anyway).
//   - A data section of fewer than minSegments segments is left alone.
//   - Data segment indices change, so a module that could name one is
//     left alone: one with a passive segment, or with a data count section
//     (memory.init and data.drop do not validate without it).
//   - A coalesced run may grow its bytes by the zeros it fills in, but by
//     no more than half of what its segments took in the binary (maxGrowth);
//     a run over that, or with a gap over maxGap, is left as it is. The
//     size of the new segment is checked against that bound before it is
//     allocated. The decision for a run depends on its segments only, so
//     applying Apply to its own output changes nothing.
const (
	// maxGap is the largest hole between consecutive segments a run may
	// bridge with zeros. The Go hello's gaps are 9 to 106 bytes but for
	// five (323, 1,549, 4,270 and 1,062,791 bytes and one going back).
	maxGap = 1024
	// maxGrowth: a coalesced run takes at most its segments' bytes plus
	// 1/maxGrowth of them. The Go hello's zeros are 73% of its data bytes
	// (546,533 zero bytes in gaps, 744,114 bytes of data), and its data
	// section grows by a third when coalesced.
	maxGrowth = 2
	// minSegments: a data section of fewer segments is left as it is.
	// Coalescing them would save wazero well under a microsecond per
	// instantiation, and C modules (2 or 3 segments) then compile from
	// their stored bytes unchanged, which the manager's module store
	// relies on to find their compiled code by the stored bytes' hash
	// (manager/diskstore.go, cacheCandidates).
	minSegments = 16
)

// dataSeg is a data segment as Apply found it.
type dataSeg struct {
	at, end int    // the segment's encoding in bin
	dataAt  int    // where its bytes begin in bin
	off     uint32 // the offset, if known
	n       uint32 // its length in bytes
	known   bool   // a candidate: active, memory 0, i32.const offset, within 2 GiB
}

// segRun is consecutive candidate segments first..last and their extent.
type segRun struct {
	first, last int
	lo, hi      uint64
	overlaps    bool
}

// dataSegment records the next segment of the data section, whose
// encoding spans bin[at:end]; expr is its offset expression (nil for a
// passive segment), its bytes are bin[dataAt:end].
// Only segments up to the first that is not a candidate are kept (that
// one included, to mark where coalescing ends), and none once a passive
// segment is seen: what is kept is at most one entry per 5 bytes of the
// section.
func (w *walk) dataSegment(flags uint32, at int, expr []byte, dataAt, end int) {
	if flags == 1 {
		w.passiveData = true
		w.segs, w.segsDone = nil, true
	}
	if w.segsDone {
		return
	}
	sg := dataSeg{at: at, end: end, dataAt: dataAt, n: uint32(end - dataAt)}
	if off, ok := i32ConstExpr(expr); flags == 0 && ok && uint64(off)+uint64(sg.n) <= 1<<31 {
		sg.off, sg.known = off, true
	}
	w.segs = append(w.segs, sg)
	w.segsDone = !sg.known
}

// i32ConstExpr returns c if expr is exactly `i32.const c; end`, with c's
// LEB128 read the way wazero reads it and accepted only where no decoder
// could read it otherwise (a fifth byte's unused bits must extend the
// sign). c is returned as wazero uses it: as an unsigned offset.
func i32ConstExpr(expr []byte) (uint32, bool) {
	if len(expr) < 3 || expr[0] != 0x41 || expr[len(expr)-1] != 0x0b {
		return 0, false
	}
	leb := expr[1 : len(expr)-1]
	if len(leb) > 5 {
		return 0, false
	}
	var v uint32
	for i, c := range leb {
		last := i == len(leb)-1
		if (c&0x80 == 0) != last {
			return 0, false
		}
		v |= uint32(c&0x7f) << (7 * i)
		if !last {
			continue
		}
		if i < 4 {
			if c&0x40 != 0 { // negative: extend the sign
				v |= ^uint32(0) << (7 * (i + 1))
			}
		} else if hi := c & 0x70; (c&0x08 != 0 && hi != 0x70) || (c&0x08 == 0 && hi != 0) {
			return 0, false
		}
	}
	return v, true
}

// coalesce returns the data section re-encoded with its runs of segments
// coalesced, as a replacement of bin[w.dataHdr:w.dataSec[1]], or nil if
// nothing is to change.
func (w *walk) coalesce(bin []byte) []byte {
	if !w.seen[secData] || w.seen[secDataCount] || w.passiveData || w.importedMemory || w.nsegs < max(w.minSegs, 2) || len(w.segs) == 0 {
		return nil
	}
	var runs []segRun
	for i, sg := range w.segs {
		if !sg.known {
			break
		}
		end := uint64(sg.off) + uint64(sg.n)
		if k := len(runs) - 1; k >= 0 && uint64(sg.off) >= runs[k].lo && uint64(sg.off) <= runs[k].hi+maxGap {
			runs[k].last = i
			runs[k].hi = max(runs[k].hi, end)
			continue
		}
		runs = append(runs, segRun{first: i, last: i, lo: uint64(sg.off), hi: end})
	}
	markOverlaps(runs)
	count, size := w.nsegs, w.dataSec[1]-w.segs[0].at
	for i, r := range runs {
		if r.last == r.first || r.overlaps || !w.fits(r) {
			runs[i].last = r.first // left as it is
			continue
		}
		count -= r.last - r.first
		size += segmentSize(r) - (w.segs[r.last].end - w.segs[r.first].at)
	}
	if count == w.nsegs {
		return nil
	}
	// The size is what fits allowed: at most half as much again as the
	// section's own bytes.
	content := lebSize(uint32(count)) + size
	out := make([]byte, 0, 1+lebSize(uint32(content))+content)
	out = append(out, secData)
	out = appendU32(out, uint32(content))
	out = appendU32(out, uint32(count))
	next := 0 // the first segment not yet written
	for _, r := range runs {
		if r.last == r.first {
			continue
		}
		out = append(out, bin[w.segs[next].at:w.segs[r.first].at]...)
		out = append(out, 0x00, 0x41)
		out = appendS32(out, int32(r.lo)) // lo < 2^31
		out = append(out, 0x0b)
		out = appendU32(out, uint32(r.hi-r.lo))
		image := len(out)
		out = append(out, make([]byte, r.hi-r.lo)...) // within the capacity: no allocation
		for _, sg := range w.segs[r.first : r.last+1] {
			copy(out[image+int(uint64(sg.off)-r.lo):], bin[sg.dataAt:sg.end])
		}
		next = r.last + 1
	}
	if next < len(w.segs) {
		out = append(out, bin[w.segs[next].at:w.dataSec[1]]...)
	}
	return out
}

// segmentSize is the size of run r's coalesced segment in the binary.
func segmentSize(r segRun) int {
	return 3 + len(appendS32(nil, int32(r.lo))) + lebSize(uint32(r.hi-r.lo)) + int(r.hi-r.lo)
}

func lebSize(v uint32) int { return len(appendU32(nil, v)) }

// fits reports whether run r, coalesced, stays within maxGrowth of the
// bytes its segments take now.
func (w *walk) fits(r segRun) bool {
	in := uint64(w.segs[r.last].end - w.segs[r.first].at)
	return r.hi-r.lo+16 <= in+in/maxGrowth // 16: more than a segment's header
}

// markOverlaps marks the runs whose extent meets another's (empty extents
// meet nothing): sorted by their lowest offset, a run meets an earlier one
// iff the highest end before it is past its start, and a later one iff the
// next start is before its end.
func markOverlaps(runs []segRun) {
	order := make([]int, 0, len(runs))
	for i, r := range runs {
		if r.hi > r.lo {
			order = append(order, i)
		}
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(runs[a].lo, runs[b].lo) })
	var reach uint64
	for k, i := range order {
		r := &runs[i]
		if k > 0 && reach > r.lo {
			r.overlaps = true
		}
		if k+1 < len(order) && runs[order[k+1]].lo < r.hi {
			r.overlaps = true
		}
		reach = max(reach, r.hi)
	}
}

func appendS32(b []byte, v int32) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}
