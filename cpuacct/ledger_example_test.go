package cpuacct_test

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/cpuacct"
)

// Charge each request's CPU to its module and refuse requests once the
// module's daily budget is spent, as the manager does.
func ExampleLedger() {
	dir, err := os.MkdirTemp("", "ledger")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	l, err := cpuacct.OpenLedger(filepath.Join(dir, "cpu.ledger"), cpuacct.LedgerOptions{})
	if err != nil {
		panic(err)
	}
	// The manager computes the day from the module's day_start:
	// config.DayStart.Start(time.Now()).
	day := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const budget = 10 * time.Millisecond
	for range 3 {
		if l.Spent("hello", day) >= budget {
			fmt.Println("503: daily CPU budget spent")
			continue
		}
		if err := l.Charge("hello", day, 6*time.Millisecond); err != nil {
			panic(err)
		}
	}
	fmt.Println(l.Snapshot())
	if err := l.Close(); err != nil {
		panic(err)
	}
	// Output:
	// 503: daily CPU budget spent
	// [{hello 2026-01-01 00:00:00 +0000 UTC 12ms}]
}
