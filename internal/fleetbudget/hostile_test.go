package fleetbudget

import (
	"context"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// hostileServer accepts connections and answers every command with reply
// (or, with reply "", never answers). It stands for a compromised or
// broken store.
func hostileServer(t *testing.T, reply string, drip bool) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 64<<10)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
					if reply == "" {
						continue // hang: read, never answer
					}
					if !drip {
						if _, err := c.Write([]byte(reply)); err != nil {
							return
						}
						continue
					}
					for i := range len(reply) {
						if _, err := c.Write([]byte{reply[i]}); err != nil {
							return
						}
						time.Sleep(50 * time.Millisecond)
					}
				}
			}()
		}
	}()
	return "redis://" + l.Addr().String() + "/0"
}

func TestAHostileStoreNeitherCrashesNorBlocksNorBloats(t *testing.T) {
	tests := []struct {
		name  string
		reply string
		drip  bool
	}{
		{name: "an array length of 2^63-1", reply: "*9223372036854775807\r\n"},
		{name: "an array of a hundred million elements", reply: "*100000000\r\n"},
		{name: "a 2 GB bulk string", reply: "$2000000000\r\n"},
		{name: "garbage", reply: "HTTP/1.1 400 Bad Request\r\n\r\n"},
		{name: "huge and negative totals", reply: "*2\r\n:9223372036854775807\r\n:-5\r\n"},
		{name: "a total below what was pushed", reply: "*3\r\n:0\r\n:0\r\n:0\r\n"},
		{name: "fewer numbers than accounts", reply: "*2\r\n:5000\r\n:5000\r\n"},
		{name: "a string where numbers belong", reply: "$5\r\nhello\r\n"},
		{name: "an error", reply: "-ERR unknown command 'EVALSHA'\r\n"},
		{name: "no answer at all", reply: ""},
		{name: "an answer one byte at a time", reply: "*3\r\n:0\r\n:5000\r\n:5000\r\n", drip: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := hostileServer(t, tt.reply, tt.drip)
			acct := Account{Key: "abc", Day: time.Now().Truncate(24 * time.Hour).Unix()}
			f, err := New(Options{URL: url, Node: "n1", Sync: 20 * time.Millisecond, LocalShare: 0.25, Logger: slog.New(slog.DiscardHandler),
				Totals: func() []Total { return []Total{{Account: acct, CPU: 5 * time.Millisecond}} }})
			if err != nil {
				t.Fatal(err)
			}
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			round := make(chan struct{})
			go func() {
				defer close(round)
				f.round(context.Background())
			}()
			// Decisions come from the cached view while the round is
			// stuck: here, none, so the local share.
			if f.Exhausted(acct, time.Second, 200*time.Millisecond) || !f.Exhausted(acct, time.Second, 250*time.Millisecond) {
				t.Error("without a view, not held to the local share")
			}
			select {
			case <-round:
			case <-time.After(30 * time.Second): // the round's timeout is 150ms
				t.Fatal("a round against a hostile store did not end")
			}
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<20 {
				t.Errorf("a round allocated %d MiB", grew>>20)
			}
			if st := f.Status(); st.Connected || st.LastError == "" {
				t.Errorf("Status = %+v, want unreachable with an error", st)
			}
			if _, ok := f.FleetSpent(acct); ok {
				t.Error("a hostile answer became the view")
			}
			f.Start()
			closed := make(chan error)
			go func() { closed <- f.Close() }()
			select {
			case <-closed:
			case <-time.After(30 * time.Second):
				t.Fatal("Close did not return")
			}
		})
	}
}
