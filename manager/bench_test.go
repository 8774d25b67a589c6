package manager_test

import (
	"slices"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/cpuacct"
)

const benchConfig = `
[pool]
children = 2
queue = 16

[limits]
timeout = "10s"

[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"

[[module]]
route = "/sleep"
module = "{{mods}}/sleep.wasm"
timeout = "100ms"

[[module]]
route = "/loop"
module = "{{mods}}/loop.wasm"
cpu = "100ms"
`

// BenchmarkLimitKill measures, over 20 kills each, how long after its limit
// a request gets its 504 (limit-to-504) and how long the pool takes to be
// full again (refill), for a wall-clock limit on a sleeping guest and a
// CPU limit on a spinning one. Figures are reported as metrics.
func BenchmarkLimitKill(b *testing.B) {
	for _, tc := range []struct {
		name, path string
		limit      time.Duration
	}{
		{"wall-clock", "/sleep?60000", 100 * time.Millisecond},
		{"cpu", "/loop", 100 * time.Millisecond},
	} {
		b.Run(tc.name, func(b *testing.B) {
			f := newFixture(b, benchConfig)
			var late, refill []time.Duration
			for i := 0; i < b.N; i++ {
				for k := 0; k < 20; k++ {
					before := f.m.ChildPIDs()
					start := time.Now()
					rec := f.do(b, "GET", tc.path, nil)
					answered := time.Since(start)
					if rec.Code != 504 {
						b.Fatalf("got %d", rec.Code)
					}
					late = append(late, answered-tc.limit)
					waitPool(b, f.m, 2, nil, 5*time.Second)
					refill = append(refill, time.Since(start)-answered)
					_ = before
				}
			}
			slices.Sort(late)
			slices.Sort(refill)
			b.ReportMetric(float64(late[len(late)/2].Microseconds())/1000, "ms-limit-to-504-p50")
			b.ReportMetric(float64(late[len(late)-1].Microseconds())/1000, "ms-limit-to-504-max")
			b.ReportMetric(float64(refill[len(refill)/2].Microseconds())/1000, "ms-refill-p50")
			b.ReportMetric(float64(refill[len(refill)-1].Microseconds())/1000, "ms-refill-max")
		})
	}
}

// BenchmarkCPUAccounting runs 1,000 requests and compares the CPU charged to
// them with the CPU the children used over the same time. The difference
// is what no request was charged for: the children's idle work (Go runtime,
// waiting for the next request) and the rounding of the clocks.
func BenchmarkCPUAccounting(b *testing.B) {
	f := newFixture(b, benchConfig)
	for i := 0; i < b.N; i++ {
		f.do(b, "GET", "/hello", nil) // warm every child's module cache
		f.do(b, "GET", "/hello", nil)
		pids := f.m.ChildPIDs()
		cpu := func() time.Duration {
			var sum time.Duration
			for _, p := range pids {
				d, err := cpuacct.ProcessCPU(p)
				if err != nil {
					b.Fatalf("child %d: %v", p, err)
				}
				sum += d
			}
			return sum
		}
		childrenBefore, chargedBefore := cpu(), f.m.Stats().ChargedCPU
		for k := 0; k < 1000; k++ {
			if rec := f.do(b, "GET", "/hello", nil); rec.Code != 200 {
				b.Fatalf("got %d", rec.Code)
			}
		}
		used := cpu() - childrenBefore
		charged := f.m.Stats().ChargedCPU - chargedBefore
		if !slices.Equal(pids, f.m.ChildPIDs()) {
			b.Fatal("a child was replaced during the run")
		}
		b.ReportMetric(float64(used.Microseconds())/1000, "ms-children-cpu")
		b.ReportMetric(float64(charged.Microseconds())/1000, "ms-charged")
		b.ReportMetric(100*float64(used-charged)/float64(used), "%-uncharged")
	}
}

// BenchmarkServeHello is one FastCGI request through the manager to a
// child and back (the gofast client included), the hot path of a page.
func BenchmarkServeHello(b *testing.B) {
	f := newFixture(b, benchConfig)
	f.do(b, "GET", "/hello", nil)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if rec := f.do(b, "GET", "/hello", nil); rec.Code != 200 {
				b.Fatalf("got %d", rec.Code)
			}
		}
	})
}
