package scoreboard

import (
	"encoding/binary"
	"time"
)

// Record is one finished fast-path request, as its child reports it.
type Record struct {
	ID        string
	Method    string
	Path      string // cut to MaxPath bytes
	Status    int
	Route     int
	Conn      int
	BytesOut  int64
	Wall, CPU time.Duration
	// Outcome is the child's word for how the guest ended (an
	// ipc.Outcome), for the log line.
	Outcome uint8
}

// Record field bounds.
const (
	MaxID     = 31
	MaxMethod = 15
	MaxPath   = recSize - recFixed - 3 - MaxID - MaxMethod
	recFixed  = 48
)

// Append writes r into the ring (child side). A ring the manager has not
// drained is overwritten from its oldest record: the manager counts what
// it missed.
func (s *Slot) Append(r *Record) {
	head := u64(s.b, offHead).Load()
	i := ringStart + int(head%RingLen)*recSize
	b := s.b[i : i+recSize]
	le := binary.LittleEndian
	le.PutUint16(b[0:], uint16(r.Status))
	b[2] = r.Outcome
	le.PutUint32(b[4:], uint32(r.Route))
	le.PutUint32(b[8:], uint32(r.Conn))
	le.PutUint64(b[16:], uint64(r.BytesOut))
	le.PutUint64(b[24:], uint64(r.Wall))
	le.PutUint64(b[32:], uint64(r.CPU))
	p := recFixed
	p = putStr(b, p, r.ID, MaxID)
	p = putStr(b, p, r.Method, MaxMethod)
	putStr(b, p, r.Path, MaxPath)
	u64(s.b, offHead).Store(head + 1)
}

func putStr(b []byte, p int, s string, max int) int {
	n := min(len(s), max)
	b[p] = byte(n)
	copy(b[p+1:p+1+n], s)
	return p + 1 + max
}

func getStr(b []byte, p int, max int) (string, int) {
	n := min(int(b[p]), max)
	return string(b[p+1 : p+1+n]), p + 1 + max
}

// Drain calls f with every record written since the last Drain (manager
// side), until f returns false, and returns how many were overwritten
// before it could read them. Every field is bounded; the strings are as
// the child wrote them, to be logged quoted.
func (s *Slot) Drain(f func(*Record) bool) (lost uint64) {
	head := u64(s.b, offHead).Load()
	if head < s.read { // a child rewound its counter: start over from it
		s.read = head
	}
	if head-s.read > RingLen {
		lost = head - s.read - RingLen
		s.read = head - RingLen
	}
	le := binary.LittleEndian
	var r Record
	for ; s.read < head; s.read++ {
		// (s.read moves on only after f has seen the record.)
		i := ringStart + int(s.read%RingLen)*recSize
		b := s.b[i : i+recSize]
		r = Record{
			Status:   int(le.Uint16(b[0:])),
			Outcome:  b[2],
			Route:    int(le.Uint32(b[4:])),
			Conn:     int(le.Uint32(b[8:])),
			BytesOut: int64(le.Uint64(b[16:]) & (1<<62 - 1)),
			Wall:     time.Duration(le.Uint64(b[24:]) & (1<<62 - 1)),
			CPU:      time.Duration(le.Uint64(b[32:]) & (1<<62 - 1)),
		}
		p := recFixed
		r.ID, p = getStr(b, p, MaxID)
		r.Method, p = getStr(b, p, MaxMethod)
		r.Path, _ = getStr(b, p, MaxPath)
		if !validID([]byte(r.ID)) {
			r.ID = ""
		}
		if !f(&r) {
			s.read = head
			break
		}
	}
	return lost
}
