package scoreboard

import (
	"strings"
	"testing"
	"time"
)

func newPair(t *testing.T) (*Page, *View, *Slot, *Slot) {
	t.Helper()
	p, err := NewPage()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	v, err := MapView(int(p.File.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := NewSlot()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	kid, err := MapSlot(int(mgr.File.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return p, v, mgr, kid
}

func TestWhatAChildWritesIsReadBounded(t *testing.T) {
	_, _, mgr, kid := newPair(t)
	tests := []struct {
		name  string
		write func()
		check func(Snapshot) bool
	}{
		{"a connection past the table reads as none", func() {
			kid.Hold(MaxConns+5, 1, &View{b: make([]byte, mgrSize)})
		}, func(s Snapshot) bool { return s.Conn == -1 && s.State == Holding }},
		{"an unknown state reads as running", func() {
			u32(kid.b, offState).Store(77)
		}, func(s Snapshot) bool { return s.State == Running }},
		{"an id with other characters reads as none", func() {
			kid.Begin(1, 0, "Bad Id!", "GET", "/", 0)
		}, func(s Snapshot) bool { return s.ID == "" }},
		{"an id length past its field reads as none", func() {
			kid.Begin(1, 0, "abc", "GET", "/", 0)
			kid.b[offID] = 200
		}, func(s Snapshot) bool { return s.ID == "" }},
		{"lengths past the method and path fields are cut", func() {
			kid.Begin(1, 0, "a-1", "GET", "/x", 0)
			kid.b[offMethod], kid.b[offPath] = 255, 255
		}, func(s Snapshot) bool { return len(s.Method) == 15 && len(s.Path) == 159 }},
		{"an unknown ask reads as nothing asked", func() {
			u32(kid.b, offAsk).Store(9)
		}, func(s Snapshot) bool { return s.Ask == AskNothing }},
		{"a known ask is read", func() {
			kid.AskKill(AskMaxOutput)
		}, func(s Snapshot) bool { return s.Ask == AskMaxOutput }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.write()
			if s := mgr.Read(); !tt.check(s) {
				t.Fatalf("read %+v", s)
			}
		})
	}
}

func TestTheRingGivesEveryRecordOnceAndCountsWhatWasOverwritten(t *testing.T) {
	_, _, mgr, kid := newPair(t)
	for i := range 10 {
		kid.Append(&Record{ID: "a-" + string(rune('a'+i)), Method: "GET", Path: "/p", Status: 200, CPU: time.Millisecond})
	}
	var got []string
	if lost := mgr.Drain(func(r *Record) bool { got = append(got, r.ID); return true }); lost != 0 || len(got) != 10 {
		t.Fatalf("lost %d, got %v", lost, got)
	}
	if lost := mgr.Drain(func(*Record) bool { t.Fatal("a record twice"); return true }); lost != 0 {
		t.Fatalf("lost %d on an empty drain", lost)
	}
	for range RingLen + 7 {
		kid.Append(&Record{ID: "b-1", Path: strings.Repeat("x", 1000)})
	}
	n := 0
	lost := mgr.Drain(func(r *Record) bool {
		n++
		if len(r.Path) != MaxPath {
			t.Fatalf("a path of %d bytes, want it cut to %d", len(r.Path), MaxPath)
		}
		return true
	})
	if lost != 7 || n != RingLen {
		t.Fatalf("lost %d, read %d; want 7 and %d", lost, n, RingLen)
	}
}

func TestARingOfGarbageIsReadWithinItsBounds(t *testing.T) {
	_, _, mgr, kid := newPair(t)
	for i := ringStart; i < len(kid.b); i++ {
		kid.b[i] = 0xff
	}
	u64(kid.b, offHead).Store(1 << 40)
	n := 0
	mgr.Drain(func(r *Record) bool {
		n++
		if r.ID != "" || len(r.Method) > MaxMethod || len(r.Path) > MaxPath || r.CPU < 0 || r.Wall < 0 || r.BytesOut < 0 {
			t.Fatalf("unbounded record %+v", r)
		}
		return n < 3 // the caller may stop at the first lie
	})
	if n != 3 {
		t.Fatalf("read %d records, want the caller to stop it at 3", n)
	}
	if mgr.Drain(func(*Record) bool { return true }) != 0 {
		t.Fatal("records after the caller stopped")
	}
}

func TestAConnectionBeingTakenIsLetGoByAChild(t *testing.T) {
	p, v, mgr, kid := newPair(t)
	if !kid.Hold(3, 1, v) {
		t.Fatal("a child could not hold a connection no one takes")
	}
	kid.Release()
	p.SetTaking(3, true)
	if kid.Hold(3, 2, v) {
		t.Fatal("a child held a connection the manager is taking")
	}
	if s := mgr.Read(); s.State != Holding || s.Conn != 3 {
		t.Fatalf("the manager did not see the child's claim: %+v", s)
	}
	p.SetTaking(3, false)
	if !kid.Hold(3, 2, v) {
		t.Fatal("a child could not hold it once the manager let go")
	}
}

func TestSpentRoutesAreSeenAndOutOfRangeOnesAreSpent(t *testing.T) {
	p, v, _, _ := newPair(t)
	p.SetSpent(5, true)
	p.SetSpent(6, false)
	if !v.Spent(5) || v.Spent(6) || v.Spent(4) {
		t.Fatalf("spent 4,5,6: %v %v %v", v.Spent(4), v.Spent(5), v.Spent(6))
	}
	p.SetSpent(5, false)
	if v.Spent(5) {
		t.Fatal("a route stayed spent")
	}
	if !v.Spent(-1) || !v.Spent(MaxRoutes) {
		t.Fatal("an out-of-range route must hand its requests to the manager")
	}
}
