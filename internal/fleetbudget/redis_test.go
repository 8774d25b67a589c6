package fleetbudget

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// startStore starts a redis-server and a store on it.
func startStore(t testing.TB, timeout time.Duration) (*testenv.Redis, *redisStore) {
	t.Helper()
	r := testenv.StartRedis(t)
	s, err := openRedis(r.URL, timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return r, s
}

// pushOK pushes and fails the test on an error.
func pushOK(t *testing.T, s *redisStore, node string, totals ...Total) []Stored {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := s.Push(ctx, node, totals)
	if err != nil {
		t.Fatalf("push %s: %v", node, err)
	}
	return got
}

func TestARealRedisKeepsEachNodesLargestTotalAndSumsThem(t *testing.T) {
	r, s := startStore(t, 5*time.Second)
	day := time.Now().Truncate(24 * time.Hour).Unix()
	a := Account{Key: "abcdef", Day: day}

	steps := []struct {
		name  string
		node  string
		cpu   time.Duration
		own   time.Duration
		fleet time.Duration
	}{
		{"the first node's total is the fleet's", "n1", 300 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond},
		{"a second node's total adds to it", "n2", 200 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond},
		{"the same total pushed again (a retry) counts once", "n1", 300 * time.Millisecond, 300 * time.Millisecond, 500 * time.Millisecond},
		{"a lower total (a running request that ended) never lowers the stored one", "n1", 250 * time.Millisecond, 300 * time.Millisecond, 500 * time.Millisecond},
		{"a higher total replaces the node's own", "n1", time.Second, time.Second, 1200 * time.Millisecond},
		{"a node that only reads pushes zero and learns the sum", "n3", 0, 0, 1200 * time.Millisecond},
	}
	for _, st := range steps {
		got := pushOK(t, s, st.node, Total{Account: a, CPU: st.cpu})
		if got[0].Own != st.own || got[0].Fleet != st.fleet {
			t.Fatalf("%s: got %+v, want own %v fleet %v", st.name, got[0], st.own, st.fleet)
		}
	}
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer c.Close()
	ctx := context.Background()
	if n, _ := c.HLen(ctx, key(a)).Result(); n != 2 {
		t.Errorf("the hash has %d fields, want 2 (a node that only reads writes none)", n)
	}
	if exp, err := c.ExpireTime(ctx, key(a)).Result(); err != nil || exp != time.Duration(day+48*3600)*time.Second {
		t.Errorf("expires at %v (%v), want 48h after the day's start", exp, err)
	}
	// Junk from another client counts as nothing; the script still runs.
	c.HSet(ctx, key(a), "junk", "not a number", "huge", "1e400", "negative", "-5")
	got := pushOK(t, s, "n1", Total{Account: a, CPU: time.Second})
	if got[0].Fleet < 1200*time.Millisecond || got[0].Fleet > time.Duration(maxMicros)*time.Microsecond {
		t.Errorf("fleet after junk = %v, want at least 1.2s and at most the cap", got[0].Fleet)
	}
}

func TestARedisRestartedEmptyIsRefilledByTheNextPushes(t *testing.T) {
	r, s := startStore(t, 2*time.Second)
	day := time.Now().Truncate(24 * time.Hour).Unix()
	// More accounts than one script call takes.
	var totals []Total
	for i := range maxBatch + 10 {
		totals = append(totals, Total{Account: Account{Key: fmt.Sprintf("mod%03d", i), Day: day}, CPU: time.Duration(i+1) * time.Millisecond})
	}
	pushOK(t, s, "n1", totals...)
	pushOK(t, s, "n2", totals...)

	r.Kill(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := s.Push(ctx, "n1", totals)
	cancel()
	if err == nil {
		t.Fatal("push to a killed server succeeded")
	}
	r.Restart(t) // empty, and without the script: NOSCRIPT is handled
	for i, g := range pushOK(t, s, "n1", totals...) {
		if g.Prev != 0 {
			t.Fatalf("account %d: the restarted store held %v before the push, want nothing (how a node sees the loss)", i, g.Prev)
		}
	}
	got := pushOK(t, s, "n2", totals...)
	for i, g := range got {
		if want := 2 * totals[i].CPU; g.Fleet != want {
			t.Fatalf("account %d after the restart: fleet %v, want %v (both nodes' totals, once each)", i, g.Fleet, want)
		}
	}
}
