package cpuacct

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// The ledger is an append-only journal of text lines, one per charge:
//
//	<day> <module> <total> <crc>\n
//
//	day     start of the module's budget day, Unix seconds, decimal (may be negative)
//	module  the module's name: 1..200 bytes of UTF-8, no white space, no control characters
//	total   the module's whole spend for that day after this charge, nanoseconds, decimal
//	crc     CRC-32 (IEEE) of the bytes before the space that precedes it, 8 lower-case hex digits
//
// for example "1767225600 bafybeig... 12500000 9a3f0c21". Fields are separated
// by exactly one space.
//
// A record holds the running total rather than the increment, so replay keeps,
// per module, the largest total of its latest day: records may be replayed in
// any order, a lost or corrupt record in the middle costs nothing once a later
// record of the same module and day exists, and compaction is writing one
// record per module. A line that does not parse or whose checksum does not
// match (a torn write, garbage after a power loss) is skipped with a log line.
const (
	// MaxModuleLen is the longest module name the ledger accepts, in bytes.
	MaxModuleLen = 200

	defaultSyncInterval = time.Second
	defaultCompactSize  = 4 << 20
	maxRecordLen        = 20 + 1 + MaxModuleLen + 1 + 19 + 1 + 8 + 1
	maxLoggedSkips      = 10
)

// LedgerOptions tunes a Ledger. The zero value is ready to use.
type LedgerOptions struct {
	// SyncInterval is how often the journal is fsync'ed (group commit);
	// 0 or less means 1s. Up to this much of the latest charges can be lost
	// on a power loss (not on a crash of the process: see Ledger).
	SyncInterval time.Duration
	// CompactSize is the journal size in bytes past which it is rewritten
	// with one record per module; 0 or less means 4 MiB. The journal is
	// also compacted when opened.
	CompactSize int64
	// Logger receives skipped records and background errors; nil means
	// slog.Default().
	Logger *slog.Logger
	// Retain, when more than 0, is how long after the start of its budget
	// day a module's entry is kept. Older entries are dropped from memory
	// (checked at open and every minute) and from the journal at the next
	// compaction, so the ledger does not grow with every module it has
	// ever seen. A day is over long before: 48h is a safe value.
	Retain time.Duration
	// Now is the clock for Retain; nil means time.Now.
	Now func() time.Time
}

// Spend is one module's spend in its current budget day.
type Spend struct {
	Module string
	Day    time.Time // start of the budget day (UTC, whole seconds)
	CPU    time.Duration
}

// Ledger records the CPU time charged to modules per budget day, in a journal
// file. It is safe for concurrent use.
//
// Every Charge is written to the file with one write(2) before it returns, so
// a charge that has returned survives the manager being killed (the data is
// in the kernel's page cache); a goroutine owned by the Ledger fsyncs the
// file every SyncInterval and compacts it when it grows past CompactSize.
//
// Days are compared as Unix seconds: a day's sub-second part is ignored.
// Each module has its own current day, so modules may have different
// day_start settings. The file is locked (flock on path+".lock") while the
// Ledger is open: a second Ledger on the same path fails to open.
type Ledger struct {
	path        string
	retain      time.Duration
	now         func() time.Time
	syncEvery   time.Duration
	compactSize int64
	log         *slog.Logger
	lock        *os.File // holds the flock

	compactCh chan struct{} // Charge asks the background goroutine to compact
	stop      chan struct{}
	wg        sync.WaitGroup

	mu        sync.Mutex
	f         *os.File // the journal, O_WRONLY|O_APPEND
	state     map[string]entry
	buf       []byte // the record being written, reused
	size      int64  // bytes in the journal
	compactAt int64  // size that triggers a compaction
	dirty     bool   // written since the last fsync
	torn      bool   // the last write was partial: start the next with '\n'
	closed    bool
}

type entry struct {
	day   int64 // Unix seconds
	total int64 // nanoseconds
}

// OpenLedger opens the journal at path, creating it (mode 0600) and its
// directory if missing, restores every module's spend for its latest day,
// and rewrites the journal compacted. Malformed records are skipped and
// logged; only I/O errors fail the open.
func OpenLedger(path string, opts LedgerOptions) (*Ledger, error) {
	if path == "" {
		return nil, errors.New("ledger: empty path")
	}
	l := &Ledger{
		path:        path,
		retain:      opts.Retain,
		now:         opts.Now,
		syncEvery:   opts.SyncInterval,
		compactSize: opts.CompactSize,
		log:         opts.Logger,
		compactCh:   make(chan struct{}, 1),
		stop:        make(chan struct{}),
		state:       make(map[string]entry),
		buf:         make([]byte, 0, maxRecordLen+1),
	}
	if l.syncEvery <= 0 {
		l.syncEvery = defaultSyncInterval
	}
	if l.compactSize <= 0 {
		l.compactSize = defaultCompactSize
	}
	if l.log == nil {
		l.log = slog.Default()
	}
	if l.now == nil {
		l.now = time.Now
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, l.errorf(err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, l.errorf(err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("ledger %s: in use by another Ledger (%s is locked)", path, path+".lock")
		}
		return nil, l.errorf(fmt.Errorf("flock: %w", err))
	}
	l.lock = lock
	if err := l.replay(); err != nil {
		lock.Close()
		return nil, l.errorf(err)
	}
	l.prune()
	f, size, err := l.rewrite(l.state)
	if err == nil {
		err = l.install(f)
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		os.Remove(l.tempPath())
		lock.Close()
		return nil, l.errorf(err)
	}
	l.f, l.size, l.compactAt = f, size, l.nextCompactAt(size)
	l.wg.Add(1)
	go l.run()
	return l, nil
}

// Charge adds d to module's spend in the budget day that started at day (the
// manager passes DayStart.Start(now)). A charge for a day older than the
// module's current one is ignored and returns nil; a newer day starts the
// module afresh. d must not be negative.
//
// The charge is written to the journal before Charge returns. If that write
// fails the charge still counts in memory (the CPU was spent) and the error
// is returned; the next successful record, which carries the running total,
// makes it durable.
func (l *Ledger) Charge(module string, day time.Time, d time.Duration) error {
	if err := checkModule(module); err != nil {
		return l.errorf(err)
	}
	if d < 0 {
		return fmt.Errorf("ledger %s: charge %s: negative duration %v", l.path, module, d)
	}
	ds := day.Unix()

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return fmt.Errorf("ledger %s: charge %s: %w", l.path, module, os.ErrClosed)
	}
	e, ok := l.state[module]
	switch {
	case !ok:
		module = strings.Clone(module) // do not pin the caller's buffer
		e = entry{day: ds}
	case ds < e.day:
		return nil
	case ds > e.day:
		e = entry{day: ds}
	case d == 0:
		return nil // nothing changes
	}
	e.total = addSat(e.total, int64(d))
	l.state[module] = e

	b := l.buf[:0]
	if l.torn {
		b = append(b, '\n') // end the torn fragment: it becomes one malformed line
	}
	b = appendRecord(b, e.day, module, e.total)
	l.buf = b
	n, err := l.f.Write(b)
	l.size += int64(n)
	if n > 0 {
		l.dirty = true
	}
	if err != nil {
		l.torn = l.torn || (n > 0 && n < len(b))
		return fmt.Errorf("ledger %s: charge %s: %w", l.path, module, err)
	}
	l.torn = false
	if l.size > l.compactAt {
		select {
		case l.compactCh <- struct{}{}:
		default:
		}
	}
	return nil
}

// Spent returns what module has spent in the budget day that started at day:
// 0 if the ledger has nothing for that day (the module's current day is
// older, or newer).
func (l *Ledger) Spent(module string, day time.Time) time.Duration {
	ds := day.Unix()
	l.mu.Lock()
	e, ok := l.state[module]
	l.mu.Unlock()
	if !ok || e.day != ds {
		return 0
	}
	return time.Duration(e.total)
}

// Snapshot returns every module's current day and spend, sorted by module.
func (l *Ledger) Snapshot() []Spend {
	l.mu.Lock()
	out := make([]Spend, 0, len(l.state))
	for m, e := range l.state {
		out = append(out, Spend{Module: m, Day: time.Unix(e.day, 0).UTC(), CPU: time.Duration(e.total)})
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b Spend) int { return strings.Compare(a.Module, b.Module) })
	return out
}

// Close stops the background goroutine, fsyncs and closes the journal and
// releases the lock. Charge fails afterwards (with os.ErrClosed); Spent and
// Snapshot keep answering from memory.
func (l *Ledger) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return fmt.Errorf("ledger %s: %w", l.path, os.ErrClosed)
	}
	l.closed = true
	l.mu.Unlock()

	close(l.stop)
	l.wg.Wait() // no one else touches l.f now

	err := l.f.Sync()
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	if cerr := l.lock.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return l.errorf(err)
	}
	return nil
}

// run is the background goroutine: group commit and compaction.
func (l *Ledger) run() {
	defer l.wg.Done()
	t := time.NewTicker(l.syncEvery)
	defer t.Stop()
	lastPrune := time.Now()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.sync()
			if l.retain > 0 && time.Since(lastPrune) >= pruneEvery {
				lastPrune = time.Now()
				if l.prune() > 0 {
					l.compact()
				}
			}
		case <-l.compactCh:
			l.mu.Lock()
			due := l.size > l.compactAt
			l.mu.Unlock()
			if due {
				l.compact()
			}
		}
	}
}

// pruneEvery is how often entries older than Retain are looked for.
const pruneEvery = time.Minute

// prune drops the entries whose budget day started more than Retain ago,
// and returns how many it dropped.
func (l *Ledger) prune() int {
	if l.retain <= 0 {
		return 0
	}
	cutoff := l.now().Add(-l.retain).Unix()
	n := 0
	l.mu.Lock()
	for m, e := range l.state {
		if e.day < cutoff {
			delete(l.state, m)
			n++
		}
	}
	l.mu.Unlock()
	return n
}

// Len is the number of modules the ledger holds an entry for.
func (l *Ledger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.state)
}

// sync fsyncs the journal if it was written since the last fsync. Only the
// background goroutine calls it, and only that goroutine replaces l.f.
func (l *Ledger) sync() {
	l.mu.Lock()
	if !l.dirty {
		l.mu.Unlock()
		return
	}
	l.dirty = false
	f := l.f
	l.mu.Unlock()
	if err := f.Sync(); err != nil {
		l.log.Error("ledger: fsync failed", "path", l.path, "err", err)
		l.mu.Lock()
		l.dirty = true
		l.mu.Unlock()
	}
}

// compact rewrites the journal with one record per module while Charge goes
// on: it writes a snapshot of the state to a temporary file outside the
// lock, then under the lock appends the records of modules charged since
// the snapshot, renames the file over the journal and switches Charge to it.
func (l *Ledger) compact() {
	l.mu.Lock()
	snap := make(map[string]entry, len(l.state))
	for m, e := range l.state {
		snap[m] = e
	}
	l.mu.Unlock()

	f, size, err := l.rewrite(snap)
	if err != nil {
		l.compactFailed(err)
		return
	}

	l.mu.Lock()
	var delta []byte
	for m, e := range l.state {
		if snap[m] != e {
			delta = appendRecord(delta, e.day, m, e.total)
		}
	}
	if len(delta) > 0 {
		n, werr := f.Write(delta)
		size += int64(n)
		err = werr
	}
	if err == nil {
		err = os.Rename(l.tempPath(), l.path)
	}
	if err != nil {
		l.mu.Unlock()
		f.Close()
		os.Remove(l.tempPath())
		l.compactFailed(err)
		return
	}
	old, oldSize := l.f, l.size
	l.f, l.size, l.compactAt = f, size, l.nextCompactAt(size)
	l.dirty = l.dirty || len(delta) > 0
	l.torn = false
	l.mu.Unlock()

	old.Close() // its unsynced tail is in the new file
	if err := syncDir(filepath.Dir(l.path)); err != nil {
		l.log.Error("ledger: fsync of directory after compaction failed", "path", l.path, "err", err)
	}
	l.log.Debug("ledger: compacted", "path", l.path, "from", oldSize, "to", size, "modules", len(snap))
}

func (l *Ledger) compactFailed(err error) {
	l.log.Error("ledger: compaction failed", "path", l.path, "err", err)
	l.mu.Lock()
	l.compactAt = l.size + l.compactSize // retry after another CompactSize
	l.mu.Unlock()
}

// nextCompactAt is the size that triggers the next compaction after one that
// left size bytes: at least CompactSize, and at least twice the compacted
// size so that many modules do not make it compact again at once.
func (l *Ledger) nextCompactAt(size int64) int64 {
	return max(l.compactSize, 2*size)
}

func (l *Ledger) tempPath() string { return l.path + ".compact" }

// rewrite writes one record per module of state to the temporary file,
// fsyncs it and returns it open for appending, with its size.
func (l *Ledger) rewrite(state map[string]entry) (*os.File, int64, error) {
	f, err := os.OpenFile(l.tempPath(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, 0, err
	}
	modules := make([]string, 0, len(state))
	for m := range state {
		modules = append(modules, m)
	}
	slices.Sort(modules)
	w := bufio.NewWriterSize(f, 64<<10)
	var rec []byte
	var size int64
	for _, m := range modules {
		e := state[m]
		rec = appendRecord(rec[:0], e.day, m, e.total)
		w.Write(rec)
		size += int64(len(rec))
	}
	err = w.Flush()
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		f.Close()
		os.Remove(l.tempPath())
		return nil, 0, err
	}
	return f, size, nil
}

// install renames the rewritten temporary file over the journal and makes
// the rename durable.
func (l *Ledger) install(f *os.File) error {
	if err := os.Rename(l.tempPath(), l.path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(l.path))
}

// replay reads the journal into l.state.
func (l *Ledger) replay() error {
	f, err := os.Open(l.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()

	r := bufio.NewReaderSize(f, 64<<10)
	var (
		off, start int64 // offset read so far; start of the current line
		lineNo     int
		long       bool // inside a line longer than the buffer
		skipped    int
	)
	skip := func(reason string) {
		skipped++
		if skipped <= maxLoggedSkips {
			l.log.Warn("ledger: skipped malformed record", "path", l.path, "line", lineNo, "offset", start, "reason", reason)
		}
	}
	for {
		chunk, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if !long {
				long, start = true, off
				lineNo++
			}
			off += int64(len(chunk))
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		eof := err != nil
		if long {
			long = false
			skip("record too long")
			off += int64(len(chunk))
			if eof {
				break
			}
			continue
		}
		if eof && len(chunk) == 0 {
			break
		}
		lineNo++
		start = off
		off += int64(len(chunk))
		body := bytes.TrimSuffix(chunk, []byte{'\n'})
		if len(body) > 0 {
			// A last line without its newline is replayed if its
			// checksum holds: then the record is whole.
			day, module, total, reason := parseRecord(body)
			if reason != "" {
				if eof {
					reason = "torn last record: " + reason
				}
				skip(reason)
			} else {
				l.apply(module, day, total)
			}
		}
		if eof {
			break
		}
	}
	if skipped > maxLoggedSkips {
		l.log.Warn("ledger: skipped more malformed records", "path", l.path, "count", skipped-maxLoggedSkips)
	}
	return nil
}

// apply merges one replayed record: the latest day wins, and within a day
// the largest running total.
func (l *Ledger) apply(module string, day, total int64) {
	e, ok := l.state[module]
	if !ok || day > e.day || (day == e.day && total > e.total) {
		l.state[module] = entry{day: day, total: total}
	}
}

func (l *Ledger) errorf(err error) error {
	return fmt.Errorf("ledger %s: %w", l.path, err)
}

// appendRecord appends the journal line for (day, module, total).
func appendRecord(b []byte, day int64, module string, total int64) []byte {
	start := len(b)
	b = strconv.AppendInt(b, day, 10)
	b = append(b, ' ')
	b = append(b, module...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, total, 10)
	sum := crc32.ChecksumIEEE(b[start:])
	b = append(b, ' ')
	const hex = "0123456789abcdef"
	for shift := 28; shift >= 0; shift -= 4 {
		b = append(b, hex[sum>>uint(shift)&0xf])
	}
	return append(b, '\n')
}

// parseRecord parses one journal line without its newline. reason is empty
// if the record is valid.
func parseRecord(line []byte) (day int64, module string, total int64, reason string) {
	i := bytes.LastIndexByte(line, ' ')
	if i < 0 {
		return 0, "", 0, "no fields"
	}
	content, sumField := line[:i], line[i+1:]
	sum, ok := parseHex8(sumField)
	if !ok {
		return 0, "", 0, "bad checksum field"
	}
	if crc32.ChecksumIEEE(content) != sum {
		return 0, "", 0, "checksum mismatch"
	}
	f := bytes.Split(content, []byte{' '})
	if len(f) != 3 {
		return 0, "", 0, "want 4 fields"
	}
	day, err := strconv.ParseInt(string(f[0]), 10, 64)
	if err != nil {
		return 0, "", 0, "bad day"
	}
	module = string(f[1])
	if err := checkModule(module); err != nil {
		return 0, "", 0, err.Error()
	}
	total, err = strconv.ParseInt(string(f[2]), 10, 64)
	if err != nil || total < 0 {
		return 0, "", 0, "bad total"
	}
	return day, module, total, ""
}

func parseHex8(b []byte) (uint32, bool) {
	if len(b) != 8 {
		return 0, false
	}
	var v uint32
	for _, c := range b {
		switch {
		case '0' <= c && c <= '9':
			v = v<<4 | uint32(c-'0')
		case 'a' <= c && c <= 'f':
			v = v<<4 | uint32(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// checkModule accepts 1..MaxModuleLen bytes of UTF-8 without white space or
// control characters.
func checkModule(m string) error {
	if m == "" {
		return errors.New("empty module name")
	}
	if len(m) > MaxModuleLen {
		return fmt.Errorf("module name of %d bytes (max %d)", len(m), MaxModuleLen)
	}
	ascii := true
	for i := 0; i < len(m); i++ {
		c := m[i]
		if c >= utf8.RuneSelf {
			ascii = false
			continue
		}
		if c <= ' ' || c == 0x7f {
			return fmt.Errorf("module name %.40q contains white space or a control character", m)
		}
	}
	if ascii {
		return nil
	}
	if !utf8.ValidString(m) {
		return fmt.Errorf("module name %.40q is not UTF-8", m)
	}
	for _, r := range m {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("module name %.40q contains white space or a control character", m)
		}
	}
	return nil
}

func addSat(a, b int64) int64 {
	if b > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + b
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
