// Package scoreboard is the memory the manager and its children share on
// the fast path (manager/RATIONALE.md, "Taking the manager out of the
// per-request path"): one page that only the manager writes and children
// map read-only, and one slot per child that only that child writes.
//
// Everything a child writes is a claim, not a fact: readers on the
// manager's side get values through accessors that bound them (a
// connection number below the table size, a record's lengths within the
// record), and the manager trusts the kernel (CPU clocks, process exits)
// over any slot.
package scoreboard

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Sizes.
const (
	// MaxConns is how many connections the fast path tracks.
	MaxConns = 4096
	// MaxChildren is how many children one manager page serves.
	MaxChildren = 256
	// MaxRoutes is how many routes the page's budget table covers.
	MaxRoutes = 4096

	pageSize  = 4096
	mgrSize   = 4 * pageSize // header, sent counters, taking bitmap, spent table
	slotSize  = 1 << 20      // header page + record ring (4,080 records: 250 ms of a child at 16,000 req/s)
	recSize   = 256
	ringStart = pageSize
	// RingLen is how many finished-request records a slot holds; the
	// manager drains them every tick.
	RingLen = (slotSize - ringStart) / recSize
)

// Manager page layout.
const (
	offSleep  = 0            // uint64: odd while the manager's tick sleeps
	offTaking = pageSize     // uint32 × MaxConns: manager is taking this connection over
	offSpent  = 3 * pageSize // byte × MaxRoutes: this route's daily budget is spent
)

// Slot layout (header page).
const (
	offState  = 0   // uint32 State
	offConn   = 4   // uint32 connection the child holds
	offGen    = 8   // uint32 its generation
	offFCGIID = 12  // uint32 FastCGI request id of the request it runs
	offRoute  = 16  // uint32 route index
	offOut    = 20  // uint32: 1 once output reached the web server
	offSeq    = 24  // uint64 requests begun
	offHead   = 32  // uint64 records written
	offStart  = 40  // int64 child's CLOCK_MONOTONIC at begin (information only)
	offAsk    = 48  // uint32 Ask: the child asks to be killed for this
	offRead   = 52  // uint32 bytes of the held connection read so far
	offID     = 64  // [32]byte request id
	offMethod = 96  // [16]byte request method
	offPath   = 112 // [160]byte request path (cut)
)

// Ask is a limit a child found its request past: it asks the manager to
// kill it for that (and waits), so that the request ends exactly as on the
// manager's own path.
type Ask uint32

// Asks.
const (
	AskNothing   Ask = iota
	AskMaxOutput     // stdout past max_output
	AskInvalid       // stdout is not a valid CGI response
)

// State is what a child says it is doing.
type State uint32

// States.
const (
	Idle    State = iota // waiting for work
	Holding              // took a connection's event, reading the request
	Running              // running a request from a connection
	Held                 // serving the manager over IPC (a borrowed child)
)

func u32(b []byte, off int) *atomic.Uint32 { return (*atomic.Uint32)(unsafe.Pointer(&b[off])) }
func u64(b []byte, off int) *atomic.Uint64 { return (*atomic.Uint64)(unsafe.Pointer(&b[off])) }

func mapFile(name string, size int) (*os.File, []byte, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("memfd: %w", err)
	}
	b, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("mmap: %w", err)
	}
	return f, b, nil
}

// Page is the manager's page, on the manager's side.
type Page struct {
	File *os.File // given to every child (mapped read-only there)
	b    []byte
}

// NewPage makes a manager page.
func NewPage() (*Page, error) {
	f, b, err := mapFile("wagi-scoreboard", mgrSize)
	if err != nil {
		return nil, err
	}
	return &Page{File: f, b: b}, nil
}

// Close unmaps the page and closes its file.
func (p *Page) Close() error {
	_ = unix.Munmap(p.b)
	return p.File.Close()
}

// Sleep marks the tick asleep (odd) or awake (even) and returns the epoch.
func (p *Page) Sleep() uint64 { return u64(p.b, offSleep).Add(1) }

// SetTaking marks connection c as being taken over by the manager (or
// not), before the manager checks the slots (see Slot.Hold).
func (p *Page) SetTaking(c int, on bool) {
	v := uint32(0)
	if on {
		v = 1
	}
	u32(p.b, offTaking+4*(c%MaxConns)).Store(v)
}

// SetSpent says whether route r's daily budget is spent.
func (p *Page) SetSpent(r int, spent bool) {
	if r < 0 || r >= MaxRoutes {
		return
	}
	v := byte(0)
	if spent {
		v = 1
	}
	(*atomic.Uint32)(unsafe.Pointer(&p.b[offSpent+r&^3])).Store(setByte(u32(p.b, offSpent+r&^3).Load(), r&3, v))
}

func setByte(w uint32, i int, v byte) uint32 {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], w)
	b[i] = v
	return binary.LittleEndian.Uint32(b[:])
}

// View is the manager's page as a child sees it (read-only).
type View struct{ b []byte }

// MapView maps the manager page from fd read-only.
func MapView(fd int) (*View, error) {
	b, err := unix.Mmap(fd, 0, mgrSize, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map scoreboard page: %w", err)
	}
	return &View{b: b}, nil
}

// SleepEpoch is odd while the manager's tick sleeps.
func (v *View) SleepEpoch() uint64 { return u64(v.b, offSleep).Load() }

// Taking reports whether the manager is taking connection c over.
func (v *View) Taking(c int) bool { return u32(v.b, offTaking+4*(c%MaxConns)).Load() != 0 }

// Spent reports whether route r's daily budget is spent.
func (v *View) Spent(r int) bool {
	if r < 0 || r >= MaxRoutes {
		return true
	}
	w := u32(v.b, offSpent+r&^3).Load()
	return byte(w>>(8*(r&3))) != 0
}

// Slot is one child's slot. The child writes it (NewSlot maps it
// read-write in the child, from the file the manager made); the manager
// reads it through the bounded accessors.
type Slot struct {
	File *os.File
	b    []byte
	read uint64 // manager side: records drained so far
}

// NewSlot makes a slot (manager side).
func NewSlot() (*Slot, error) {
	f, b, err := mapFile("wagi-slot", slotSize)
	if err != nil {
		return nil, err
	}
	return &Slot{File: f, b: b}, nil
}

// MapSlot maps a slot from fd read-write (child side).
func MapSlot(fd int) (*Slot, error) {
	b, err := unix.Mmap(fd, 0, slotSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map scoreboard slot: %w", err)
	}
	return &Slot{b: b}, nil
}

// Close unmaps the slot and closes its file, if any.
func (s *Slot) Close() error {
	_ = unix.Munmap(s.b)
	if s.File != nil {
		return s.File.Close()
	}
	return nil
}

// Hold publishes that the child took connection c's event and then
// checks whether the manager is taking c over; if it is, the child must
// let c go (Release) without touching it. Together with Page.SetTaking
// followed by Slot.Holds this is Dekker's handshake: the manager and a
// child never both act on c, and if both back off the manager retries.
func (s *Slot) Hold(c int, gen uint32, v *View) bool {
	u32(s.b, offRead).Store(0)
	u32(s.b, offConn).Store(uint32(c))
	u32(s.b, offGen).Store(gen)
	u32(s.b, offOut).Store(0)
	u32(s.b, offState).Store(uint32(Holding))
	return !v.Taking(c)
}

// Begin marks the start of request id (FastCGI id fcgiID) on route r.
func (s *Slot) Begin(fcgiID uint16, r int, id, method, path string, mono int64) {
	u32(s.b, offAsk).Store(uint32(AskNothing))
	s.b[offMethod] = byte(copy(s.b[offMethod+1:offMethod+16], method))
	s.b[offPath] = byte(copy(s.b[offPath+1:offPath+160], path))
	u32(s.b, offFCGIID).Store(uint32(fcgiID))
	u32(s.b, offRoute).Store(uint32(r))
	n := copy(s.b[offID+1:offID+32], id)
	s.b[offID] = byte(n)
	(*atomic.Int64)(unsafe.Pointer(&s.b[offStart])).Store(mono)
	u64(s.b, offSeq).Add(1)
	u32(s.b, offState).Store(uint32(Running))
}

// Read records that the child has read n bytes of the held connection
// (before it reads them: a kill in between must count them as read).
func (s *Slot) Reading(n int) { u32(s.b, offRead).Store(uint32(min(n, 1<<30))) }

// AskKill asks the manager to kill the child for a.
func (s *Slot) AskKill(a Ask) { u32(s.b, offAsk).Store(uint32(a)) }

// Committed records that output reached the web server: a kill can no
// longer become a clean 5xx.
func (s *Slot) Committed() { u32(s.b, offOut).Store(1) }

// Answered records that the whole answer, END_REQUEST included, reached
// the web server: a kill now costs that request nothing.
func (s *Slot) Answered() { u32(s.b, offOut).Store(2) }

// Release marks the child idle.
func (s *Slot) Release() { u32(s.b, offState).Store(uint32(Idle)) }

// SetHeld marks the child borrowed (or back to idle).
func (s *Slot) SetHeld(on bool) {
	if on {
		u32(s.b, offState).Store(uint32(Held))
	} else {
		u32(s.b, offState).Store(uint32(Idle))
	}
}

// Snapshot is a slot's header as the manager reads it, bounded.
type Snapshot struct {
	State     State
	Conn      int // -1 if out of range
	Gen       uint32
	FCGIID    uint16
	Route     int
	Committed bool // output reached the web server
	Answered  bool // all of it, END_REQUEST included
	Seq       uint64
	ID        string // "" unless it is a well-formed request id
	Method    string // as the child wrote them, cut; to be logged quoted
	Path      string
	Ask       Ask  // AskNothing unless a known ask
	Read      bool // the child may have read bytes of the held connection
}

// Read returns the slot's header, every field bounded.
func (s *Slot) Read() Snapshot {
	st := State(u32(s.b, offState).Load())
	if st > Held {
		st = Running // garbage: treat as busy, the clocks decide
	}
	c := int(u32(s.b, offConn).Load())
	if c < 0 || c >= MaxConns {
		c = -1
	}
	n := int(s.b[offID])
	id := ""
	if n <= 31 && validID(s.b[offID+1:offID+1+n]) {
		id = string(s.b[offID+1 : offID+1+n])
	}
	return Snapshot{
		State:     st,
		Conn:      c,
		Gen:       u32(s.b, offGen).Load(),
		FCGIID:    uint16(u32(s.b, offFCGIID).Load()),
		Route:     int(u32(s.b, offRoute).Load()),
		Committed: u32(s.b, offOut).Load() != 0,
		Answered:  u32(s.b, offOut).Load() == 2,
		Seq:       u64(s.b, offSeq).Load(),
		ID:        id,
		Method:    string(s.b[offMethod+1 : offMethod+1+min(int(s.b[offMethod]), 15)]),
		Path:      string(s.b[offPath+1 : offPath+1+min(int(s.b[offPath]), 159)]),
		Ask:       min(Ask(u32(s.b, offAsk).Load()), AskInvalid+1) % (AskInvalid + 1),
		Read:      u32(s.b, offRead).Load() != 0,
	}
}

// ValidID reports whether id is what a child may call a request.
func ValidID(id string) bool { return validID([]byte(id)) }

// validID accepts what a child may call a request: [0-9a-z-], 1 to 31 bytes.
func validID(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || c == '-') {
			return false
		}
	}
	return true
}
