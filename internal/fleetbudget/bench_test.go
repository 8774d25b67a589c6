package fleetbudget

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// BenchmarkPush is one sync round's cost against a local redis-server, by
// the number of accounts a node pushes (RATIONALE.md, "Cost").
func BenchmarkPush(b *testing.B) {
	r := testenv.StartRedis(b)
	s, err := openRedis(r.URL, 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
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
