package cpuacct_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/cpuacct"
)

var (
	day0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	day1 = day0.Add(24 * time.Hour)
	day2 = day1.Add(24 * time.Hour)
)

const (
	sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	cid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
)

// record is the journal line for (day, module, total), built independently
// of the implementation from the documented format.
func record(day time.Time, module string, total time.Duration) string {
	content := fmt.Sprintf("%d %s %d", day.Unix(), module, int64(total))
	return fmt.Sprintf("%s %08x\n", content, crc32.ChecksumIEEE([]byte(content)))
}

// syncBuffer is a log destination the background goroutine may write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) count(substr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), substr)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func captureLog() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// open opens a ledger that the test closes at its end if it has not.
func open(t testing.TB, path string, opts cpuacct.LedgerOptions) *cpuacct.Ledger {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger, _ = captureLog()
	}
	l, err := cpuacct.OpenLedger(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			t.Error(err)
		}
	})
	return l
}

func mustClose(t testing.TB, l *cpuacct.Ledger) {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func mustCharge(t testing.TB, l *cpuacct.Ledger, module string, day time.Time, d time.Duration) {
	t.Helper()
	if err := l.Charge(module, day, d); err != nil {
		t.Fatal(err)
	}
}

func ledgerPath(t testing.TB) string {
	return filepath.Join(t.TempDir(), "cpu.ledger")
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type charge struct {
	module string
	day    time.Time
	d      time.Duration
}

type spent struct {
	module string
	day    time.Time
	want   time.Duration
}

func TestChargesAddUpPerModuleAndPerDay(t *testing.T) {
	tests := []struct {
		name    string
		charges []charge
		want    []spent
	}{
		{
			name:    "charges to one module add up",
			charges: []charge{{"a", day0, time.Second}, {"a", day0, 2 * time.Millisecond}, {"a", day0, 3}},
			want:    []spent{{"a", day0, time.Second + 2*time.Millisecond + 3}},
		},
		{
			name:    "each module is charged separately",
			charges: []charge{{"a", day0, time.Second}, {"b", day0, time.Minute}, {"a", day0, time.Second}},
			want:    []spent{{"a", day0, 2 * time.Second}, {"b", day0, time.Minute}, {"c", day0, 0}},
		},
		{
			name:    "a newer day starts the module afresh",
			charges: []charge{{"a", day0, time.Hour}, {"a", day1, time.Second}},
			want:    []spent{{"a", day1, time.Second}, {"a", day0, 0}},
		},
		{
			name:    "a charge for an older day is ignored",
			charges: []charge{{"a", day1, time.Second}, {"a", day0, time.Hour}, {"a", day1, time.Second}},
			want:    []spent{{"a", day1, 2 * time.Second}, {"a", day0, 0}},
		},
		{
			name: "each module keeps its own day",
			charges: []charge{
				{"a", day1, time.Second},
				{"b", day0.Add(6 * time.Hour), time.Minute}, // a day_start of 06:00Z
				{"b", day0.Add(6 * time.Hour), time.Minute},
			},
			want: []spent{{"a", day1, time.Second}, {"b", day0.Add(6 * time.Hour), 2 * time.Minute}},
		},
		{
			name:    "a day is the same instant whatever its location",
			charges: []charge{{"a", day0, time.Second}, {"a", day0.In(time.FixedZone("X", 5*3600+45*60)), time.Second}},
			want:    []spent{{"a", day0.In(time.FixedZone("Y", -5*3600)), 2 * time.Second}},
		},
		{
			name:    "a zero charge on a newer day moves the module to it",
			charges: []charge{{"a", day0, time.Second}, {"a", day1, 0}},
			want:    []spent{{"a", day0, 0}, {"a", day1, 0}},
		},
		{
			name:    "a spend saturates instead of overflowing",
			charges: []charge{{"a", day0, 1<<63 - 10}, {"a", day0, 100}},
			want:    []spent{{"a", day0, 1<<63 - 1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := ledgerPath(t)
			l := open(t, path, cpuacct.LedgerOptions{})
			for _, c := range tt.charges {
				mustCharge(t, l, c.module, c.day, c.d)
			}
			check := func(when string, l *cpuacct.Ledger) {
				for _, w := range tt.want {
					if got := l.Spent(w.module, w.day); got != w.want {
						t.Errorf("%s: Spent(%q, %v) = %v, want %v", when, w.module, w.day, got, w.want)
					}
				}
			}
			check("before reopening", l)
			mustClose(t, l)
			check("after reopening", open(t, path, cpuacct.LedgerOptions{}))
		})
	}
}

func TestReopenRestoresEveryModulesLatestDay(t *testing.T) {
	path := ledgerPath(t)
	l := open(t, path, cpuacct.LedgerOptions{})
	mustCharge(t, l, sha, day0, time.Hour)
	mustCharge(t, l, sha, day1, 3*time.Second)
	mustCharge(t, l, sha, day1, 4*time.Second)
	mustCharge(t, l, cid, day0, time.Minute)
	mustCharge(t, l, "b", day2, time.Millisecond)
	before := l.Snapshot()
	mustClose(t, l)

	want := []cpuacct.Spend{
		{Module: sha, Day: day1, CPU: 7 * time.Second},
		{Module: "b", Day: day2, CPU: time.Millisecond},
		{Module: cid, Day: day0, CPU: time.Minute},
	}
	// Sorted by module: "9f86…" < "b" < "bafy…".
	if fmt.Sprint(before) != fmt.Sprint(want) {
		t.Errorf("Snapshot before closing = %v, want %v", before, want)
	}
	l = open(t, path, cpuacct.LedgerOptions{})
	if got := l.Snapshot(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Snapshot after reopening = %v, want %v", got, want)
	}
	if got := l.Spent(sha, day1); got != 7*time.Second {
		t.Errorf("Spent after reopening = %v, want 7s: a restart must not hand out a fresh day", got)
	}
	// Charging goes on from the restored spend.
	mustCharge(t, l, sha, day1, time.Second)
	if got := l.Spent(sha, day1); got != 8*time.Second {
		t.Errorf("Spent = %v, want 8s", got)
	}
}

func TestAChargeIsOneDocumentedLineInTheJournal(t *testing.T) {
	path := ledgerPath(t)
	l := open(t, path, cpuacct.LedgerOptions{})
	mustCharge(t, l, cid, day0, 1500*time.Microsecond)
	mustCharge(t, l, cid, day0, 1500*time.Microsecond)
	// Written before Charge returned, without Close or fsync.
	want := record(day0, cid, 1500*time.Microsecond) + record(day0, cid, 3*time.Millisecond)
	if got := readFile(t, path); got != want {
		t.Errorf("journal = %q, want %q", got, want)
	}
	if !strings.HasPrefix(want, "1767225600 "+cid+" 1500000 ") || len(want) != 2*(len("1767225600 ")+len(cid)+len(" 1500000 ")+8+1) {
		t.Errorf("unexpected record layout %q", want)
	}
}

const (
	helperPathEnv = "CPUACCT_LEDGER_HELPER_PATH"
	helperModule  = "killed"
	helperStep    = 1234567 * time.Nanosecond
)

// TestLedgerHelperProcess is not a test: it is the process that
// TestChargesThatReturnedSurviveKill9 kills. It charges forever, printing
// the running total after each Charge returns; it never fsyncs on its own
// (SyncInterval of an hour) and compacts often.
func TestLedgerHelperProcess(t *testing.T) {
	path := os.Getenv(helperPathEnv)
	if path == "" {
		t.Skip("helper process, run by TestChargesThatReturnedSurviveKill9")
	}
	l, err := cpuacct.OpenLedger(path, cpuacct.LedgerOptions{SyncInterval: time.Hour, CompactSize: 2048})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var total time.Duration
	for {
		if err := l.Charge(helperModule, day0, helperStep); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		total += helperStep
		fmt.Printf("charged %d\n", total)
	}
}

func TestChargesThatReturnedSurviveKill9(t *testing.T) {
	path := ledgerPath(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestLedgerHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperPathEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var last time.Duration
	lines, killed := 0, false
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		n, ok := strings.CutPrefix(sc.Text(), "charged ")
		if !ok {
			continue
		}
		v, err := strconv.ParseInt(n, 10, 64)
		if err != nil {
			t.Fatalf("helper printed %q", sc.Text())
		}
		last = time.Duration(v)
		if lines++; lines == 2000 && !killed {
			// Mid-stream: the helper is charging as fast as it can.
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("helper stopped by itself after %d charges: %v\n%s", lines, err, stderr.String())
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("helper did not die of SIGKILL: %v\n%s", err, stderr.String())
	}

	l := open(t, path, cpuacct.LedgerOptions{})
	got := l.Spent(helperModule, day0)
	// Each reported charge returned before it was reported, and the helper
	// starts the next charge only after reporting: the journal holds every
	// reported charge and at most one more that returned unreported.
	if got < last {
		t.Fatalf("restored %v after SIGKILL, but %v was reported charged (%d charges)", got, last, lines)
	}
	if got%helperStep != 0 || got > last+helperStep {
		t.Fatalf("restored %v after SIGKILL, want %v or %v (whole charges only)", got, last, last+helperStep)
	}
	t.Logf("%d charges reported, %d restored", lines, got/helperStep)
}

func TestMalformedRecordsAreSkippedWithOneLogLineEach(t *testing.T) {
	tornRecord := record(day0, "a", 20)
	badSum := []byte(record(day0, "a", 30))
	badSum[len(badSum)-2] ^= 1 // a flipped bit in the checksum
	badTotal := []byte(record(day0, "a", 40))
	badTotal[len(badTotal)-11] = '9' // a changed digit in the total
	tabContent := fmt.Sprintf("%d a\tb 5", day0.Unix())
	tabRecord := fmt.Sprintf("%s %08x\n", tabContent, crc32.ChecksumIEEE([]byte(tabContent)))

	tests := []struct {
		name    string
		journal string
		want    []spent
		skipped int
	}{
		{
			name:    "a torn last line",
			journal: record(day0, "a", 10) + tornRecord[:len(tornRecord)/2],
			want:    []spent{{"a", day0, 10}},
			skipped: 1,
		},
		{
			name:    "a corrupted checksum and a corrupted total",
			journal: record(day0, "a", 10) + string(badSum) + string(badTotal) + record(day0, "b", 3),
			want:    []spent{{"a", day0, 10}, {"b", day0, 3}},
			skipped: 2,
		},
		{
			name:    "NUL bytes left by a power loss",
			journal: record(day0, "a", 10) + "\x00\x00\x00\x00\x00\x00",
			want:    []spent{{"a", day0, 10}},
			skipped: 1,
		},
		{
			name:    "a line far longer than any record",
			journal: record(day0, "a", 10) + strings.Repeat("x", 200000) + "\n" + record(day0, "b", 3),
			want:    []spent{{"a", day0, 10}, {"b", day0, 3}},
			skipped: 1,
		},
		{
			name:    "a record whose checksum holds but whose module is invalid",
			journal: tabRecord + record(day0, "a", 10),
			want:    []spent{{"a", day0, 10}},
			skipped: 1,
		},
		{
			name:    "garbage lines and empty lines",
			journal: "hello\n\n" + record(day0, "a", 10) + "1 2 3 4\n" + "\n",
			want:    []spent{{"a", day0, 10}},
			skipped: 2,
		},
		{
			name:    "a whole last record without its newline is kept",
			journal: record(day0, "a", 10) + strings.TrimSuffix(record(day0, "a", 25), "\n"),
			want:    []spent{{"a", day0, 25}},
			skipped: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := ledgerPath(t)
			if err := os.WriteFile(path, []byte(tt.journal), 0o600); err != nil {
				t.Fatal(err)
			}
			logger, logs := captureLog()
			l := open(t, path, cpuacct.LedgerOptions{Logger: logger})
			if got := logs.count("skipped malformed record"); got != tt.skipped {
				t.Errorf("%d records logged as skipped, want %d; log:\n%s", got, tt.skipped, logs)
			}
			for _, w := range tt.want {
				if got := l.Spent(w.module, w.day); got != w.want {
					t.Errorf("Spent(%q) = %v, want %v", w.module, got, w.want)
				}
			}
			// The journal was rewritten without the bad lines, so the
			// next charge is not glued to a torn fragment.
			for _, line := range strings.SplitAfter(readFile(t, path), "\n") {
				if line != "" && line != record(day0, "a", l.Spent("a", day0)) && line != record(day0, "b", l.Spent("b", day0)) {
					t.Errorf("journal after open has line %q", line)
				}
			}
			mustCharge(t, l, "a", day0, 1)
			want := l.Spent("a", day0)
			mustClose(t, l)
			logger, logs = captureLog()
			l = open(t, path, cpuacct.LedgerOptions{Logger: logger})
			if got := l.Spent("a", day0); got != want {
				t.Errorf("after a charge and a reopen Spent = %v, want %v", got, want)
			}
			if logs.count("skipped") != 0 {
				t.Errorf("the rewritten journal has malformed records:\n%s", logs)
			}
		})
	}
}

func TestManyMalformedRecordsAreLoggedWithASummary(t *testing.T) {
	path := ledgerPath(t)
	if err := os.WriteFile(path, []byte(strings.Repeat("junk\n", 1000)+record(day0, "a", 7)), 0o600); err != nil {
		t.Fatal(err)
	}
	logger, logs := captureLog()
	l := open(t, path, cpuacct.LedgerOptions{Logger: logger})
	if n := strings.Count(logs.String(), "\n"); n > 11 {
		t.Errorf("%d log lines for 1000 malformed records, want at most 11", n)
	}
	if !strings.Contains(logs.String(), "count=990") {
		t.Errorf("no summary of the records not logged one by one:\n%s", logs)
	}
	if got := l.Spent("a", day0); got != 7 {
		t.Errorf("Spent = %v, want 7ns", got)
	}
}

func TestOpenCompactsTheJournalToTheLatestDayOfEachModule(t *testing.T) {
	path := ledgerPath(t)
	var journal strings.Builder
	for _, day := range []time.Time{day0, day1, day2} {
		for i := 1; i <= 100; i++ {
			journal.WriteString(record(day, "a", time.Duration(i)*time.Millisecond))
			if day != day2 {
				journal.WriteString(record(day, "b", time.Duration(i)*time.Second))
			}
		}
	}
	// An older day after the latest one (records are not ordered by day
	// when modules have different day starts) does not win.
	journal.WriteString(record(day0, "a", time.Hour))
	if err := os.WriteFile(path, []byte(journal.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	l := open(t, path, cpuacct.LedgerOptions{})
	want := record(day2, "a", 100*time.Millisecond) + record(day1, "b", 100*time.Second)
	if got := readFile(t, path); got != want {
		t.Errorf("compacted journal = %q, want %q", got, want)
	}
	if len(want) >= journal.Len()/100 {
		t.Errorf("compaction left %d of %d bytes", len(want), journal.Len())
	}
	mustCharge(t, l, "b", day1, time.Second)
	if got := readFile(t, path); got != want+record(day1, "b", 101*time.Second) {
		t.Errorf("journal after a charge = %q", got)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), "compact") {
			t.Errorf("compaction left %s behind", e.Name())
		}
	}
}

func TestAGrowingJournalIsCompactedWithoutLosingConcurrentCharges(t *testing.T) {
	path := ledgerPath(t)
	const compactSize = 4096
	logger, logs := captureLog()
	l := open(t, path, cpuacct.LedgerOptions{SyncInterval: 5 * time.Millisecond, CompactSize: compactSize, Logger: logger})
	modules := []string{sha, cid, "a", "b"}
	const goroutines, charges = 8, 1500
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range charges {
				m := modules[(g+i)%len(modules)]
				if err := l.Charge(m, day0, time.Duration(i+1)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	// Every goroutine charged 1+2+…+charges ns, spread over the modules.
	want := make(map[string]time.Duration)
	for g := range goroutines {
		for i := range charges {
			want[modules[(g+i)%len(modules)]] += time.Duration(i + 1)
		}
	}
	for m, w := range want {
		if got := l.Spent(m, day0); got != w {
			t.Errorf("Spent(%s) = %v, want %v", m, got, w)
		}
	}
	// The last charge past CompactSize triggers one more compaction.
	deadline := time.Now().Add(5 * time.Second)
	for {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() <= compactSize {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal still %d bytes, CompactSize %d", fi.Size(), compactSize)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := logs.count("ledger: compacted"); n == 0 {
		t.Errorf("no compaction logged; log:\n%s", logs)
	}
	if logs.count("level=ERROR") != 0 {
		t.Errorf("errors logged:\n%s", logs)
	}
	mustClose(t, l)
	l = open(t, path, cpuacct.LedgerOptions{})
	for m, w := range want {
		if got := l.Spent(m, day0); got != w {
			t.Errorf("after reopening Spent(%s) = %v, want %v", m, got, w)
		}
	}
}

func TestConcurrentChargesFrom8GoroutinesSumExactly(t *testing.T) {
	path := ledgerPath(t)
	l := open(t, path, cpuacct.LedgerOptions{SyncInterval: time.Millisecond})
	const goroutines, charges = 8, 1000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range charges {
				if err := l.Charge("shared", day0, time.Duration(g+1)*time.Microsecond); err != nil {
					t.Error(err)
					return
				}
				if err := l.Charge(fmt.Sprintf("own-%d", g), day0, time.Duration(i)); err != nil {
					t.Error(err)
					return
				}
				_ = l.Spent("shared", day0)
			}
		})
	}
	wg.Wait()
	check := func(when string, l *cpuacct.Ledger) {
		if got, want := l.Spent("shared", day0), charges*36*time.Microsecond; got != want {
			t.Errorf("%s: shared spend = %v, want %v", when, got, want)
		}
		for g := range goroutines {
			if got, want := l.Spent(fmt.Sprintf("own-%d", g), day0), time.Duration(charges*(charges-1)/2); got != want {
				t.Errorf("%s: own-%d spend = %v, want %v", when, g, got, want)
			}
		}
	}
	check("before reopening", l)
	if n := len(l.Snapshot()); n != goroutines+1 {
		t.Errorf("Snapshot has %d modules, want %d", n, goroutines+1)
	}
	mustClose(t, l)
	check("after reopening", open(t, path, cpuacct.LedgerOptions{}))
}

func TestChargeAfterCloseFails(t *testing.T) {
	l := open(t, ledgerPath(t), cpuacct.LedgerOptions{})
	mustCharge(t, l, "a", day0, time.Second)
	mustClose(t, l)
	err := l.Charge("a", day0, time.Second)
	if !errors.Is(err, os.ErrClosed) {
		t.Errorf("Charge after Close = %v, want os.ErrClosed", err)
	}
	if err := l.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close = %v, want os.ErrClosed", err)
	}
	if got := l.Spent("a", day0); got != time.Second {
		t.Errorf("Spent after Close = %v, want 1s", got)
	}
}

func TestCloseStopsTheBackgroundGoroutine(t *testing.T) {
	// Counted by its stack, not by runtime.NumGoroutine; and waited for,
	// since on a loaded machine ledgers of earlier tests may still be
	// ending while this one runs.
	running := func() int {
		buf := make([]byte, 1<<20)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "cpuacct.(*Ledger).run(")
	}
	settle := func(want func(int) bool) int {
		n := running()
		for deadline := time.Now().Add(10 * time.Second); !want(n) && time.Now().Before(deadline); n = running() {
			time.Sleep(time.Millisecond)
		}
		return n
	}
	before := settle(func(n int) bool { return n == 0 })
	if before != 0 {
		t.Fatalf("%d ledger goroutines of earlier tests still run after 10s", before)
	}
	l := open(t, ledgerPath(t), cpuacct.LedgerOptions{SyncInterval: time.Millisecond})
	mustCharge(t, l, "a", day0, time.Second)
	if n := settle(func(n int) bool { return n == 1 }); n != 1 {
		t.Fatalf("%d ledger goroutines after Open, want 1", n)
	}
	mustClose(t, l)
	if n := running(); n != 0 {
		t.Errorf("%d ledger goroutines after Close, want 0", n)
	}
}

func TestInvalidModuleNamesAreRejected(t *testing.T) {
	path := ledgerPath(t)
	l := open(t, path, cpuacct.LedgerOptions{})
	tests := []struct {
		name   string
		module string
		d      time.Duration
		ok     bool
	}{
		{"a sha256 in hex is accepted", sha, 1, true},
		{"a CID is accepted", cid, 1, true},
		{"a name of 200 bytes is accepted", strings.Repeat("m", 200), 1, true},
		{"a non-ASCII name is accepted", "modulé", 1, true},
		{"an empty name is rejected", "", 1, false},
		{"a name of 201 bytes is rejected", strings.Repeat("m", 201), 1, false},
		{"a space is rejected", "a b", 1, false},
		{"a newline is rejected", "a\nb", 1, false},
		{"a tab is rejected", "a\tb", 1, false},
		{"a NUL is rejected", "a\x00b", 1, false},
		{"a DEL is rejected", "a\x7fb", 1, false},
		{"a no-break space is rejected", "a\u00a0b", 1, false},
		{"a line separator is rejected", "a\u2028b", 1, false},
		{"invalid UTF-8 is rejected", "a\xffb", 1, false},
		{"a negative duration is rejected", "a", -1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := readFile(t, path)
			err := l.Charge(tt.module, day0, tt.d)
			if tt.ok != (err == nil) {
				t.Fatalf("Charge(%q) = %v", tt.module, err)
			}
			if err != nil {
				if !strings.Contains(err.Error(), "ledger "+path+": ") {
					t.Errorf("error %q does not name the ledger", err)
				}
				if after := readFile(t, path); after != before {
					t.Errorf("a rejected charge wrote %q", after[len(before):])
				}
			}
		})
	}
}

func TestTheJournalIsPrivateAndItsDirectoryIsCreated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "ledger", "cpu.ledger")
	l := open(t, path, cpuacct.LedgerOptions{})
	mustCharge(t, l, "a", day0, time.Second)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("journal mode %v, want 0600", fi.Mode().Perm())
	}
	// Also after a reopen, which rewrites the file.
	mustClose(t, l)
	open(t, path, cpuacct.LedgerOptions{})
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("journal after reopening: %v, %v", fi.Mode().Perm(), err)
	}
}

func TestASecondLedgerOnTheSamePathIsRefused(t *testing.T) {
	path := ledgerPath(t)
	l := open(t, path, cpuacct.LedgerOptions{})
	if l2, err := cpuacct.OpenLedger(path, cpuacct.LedgerOptions{}); err == nil {
		l2.Close()
		t.Fatal("a second Ledger opened the same journal")
	}
	mustClose(t, l)
	open(t, path, cpuacct.LedgerOptions{}) // free again
}

func TestOpenFailsWithContextWhenTheDirectoryCannotBeCreated(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(file, "cpu.ledger")
	_, err := cpuacct.OpenLedger(path, cpuacct.LedgerOptions{})
	if err == nil || !strings.HasPrefix(err.Error(), "ledger "+path+": ") {
		t.Errorf("OpenLedger under a file = %v", err)
	}
}

func BenchmarkLedgerCharge(b *testing.B) {
	l := open(b, ledgerPath(b), cpuacct.LedgerOptions{})
	b.ReportAllocs()
	for b.Loop() {
		if err := l.Charge(sha, day0, 1500*time.Microsecond); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLedgerChargeParallel(b *testing.B) {
	l := open(b, ledgerPath(b), cpuacct.LedgerOptions{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := l.Charge(sha, day0, 1500*time.Microsecond); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func TestEntriesOlderThanRetainAreForgottenAtReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger")
	l := open(t, path, cpuacct.LedgerOptions{})
	for i := 0; i < 100; i++ {
		mustCharge(t, l, fmt.Sprintf("old%03d", i), day0, time.Second)
	}
	mustCharge(t, l, "recent", day2, time.Second)
	mustClose(t, l)

	now := func() time.Time { return day2.Add(time.Hour) }
	l = open(t, path, cpuacct.LedgerOptions{Retain: 48 * time.Hour, Now: now})
	if n := l.Len(); n != 1 {
		t.Fatalf("%d entries after reopening with Retain 48h two days later, want 1", n)
	}
	if got := l.Spent("recent", day2); got != time.Second {
		t.Fatalf("the recent entry: %v", got)
	}
	mustClose(t, l)
	// The compaction at open wrote only what was kept.
	l = open(t, path, cpuacct.LedgerOptions{})
	if n := l.Len(); n != 1 {
		t.Fatalf("the journal still holds %d entries", n)
	}
}
