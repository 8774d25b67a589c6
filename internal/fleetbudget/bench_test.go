package fleetbudget

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkPush is one sync round's cost against a local redis-server, by
// the number of accounts a node pushes (RATIONALE.md, "Cost").
func BenchmarkPush(b *testing.B) {
	_, s := startStore(b, 5*time.Second)
	day := time.Now().Truncate(24 * time.Hour).Unix()
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("accounts=%d", n), func(b *testing.B) {
			totals := make([]Total, n)
			for i := range totals {
				totals[i] = Total{Account: Account{Key: fmt.Sprintf("%064x", i), Day: day}}
			}
			ctx := context.Background()
			for i := 0; b.Loop(); i++ {
				for j := range totals {
					totals[j].CPU = time.Duration(i) * time.Millisecond
				}
				if _, err := s.Push(ctx, "n1", totals); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
