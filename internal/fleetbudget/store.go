package fleetbudget

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Store is where the fleet's totals meet. Push records this node's total
// for each account (the store keeps the largest total a node ever pushed)
// and returns, in the same order, what the store holds for this node and
// the sum over every node. Ping checks that the store answers, for a round
// with nothing to push.
type Store interface {
	Push(ctx context.Context, node string, totals []Total) ([]Stored, error)
	Ping(ctx context.Context) error
	Close() error
}

// Total is this node's spend on one account-day, for Push.
type Total struct {
	Account
	CPU time.Duration
}

// Stored is what the store holds for one account-day after a Push.
type Stored struct {
	Prev  time.Duration // this node's total before the push
	Own   time.Duration // this node's total, as stored
	Fleet time.Duration // every node's total, summed
}

// Totals travel in microseconds: Lua numbers are doubles, exact up to
// 2^53, which is 285 years of CPU in µs (but only 104 days in ns).
const maxMicros = 1 << 53

// pushScript keeps, per account-day hash, each node's largest total, and
// returns this node's total before and after the push and the sum of all
// fields. Junk in a
// field (another client's HSET) counts as 0, and an absurd value as the
// maximum, so the sum stays a number Redis can return.
//
//	KEYS[i]          the hash of one account-day
//	ARGV[1]          this node's id (the field)
//	ARGV[2i], [2i+1] this node's total (µs) and the key's expiry (Unix s)
var pushScript = redis.NewScript(`
local node = ARGV[1]
local cap = 9007199254740992
local out = {}
for i, key in ipairs(KEYS) do
  local mine = tonumber(ARGV[2*i])
  local cur = tonumber(redis.call('HGET', key, node)) or 0
  if cur ~= cur or cur < 0 then cur = 0 end
  if cur > cap then cur = cap end
  local prev = cur
  if mine > cur then
    redis.call('HSET', key, node, ARGV[2*i])
    cur = mine
  end
  if cur > 0 then redis.call('EXPIREAT', key, ARGV[2*i+1]) end
  local sum = 0
  for _, v in ipairs(redis.call('HVALS', key)) do
    local n = tonumber(v)
    if n and n == n and n > 0 then sum = sum + math.min(n, cap) end
  end
  out[3*i-2] = prev
  out[3*i-1] = cur
  out[3*i] = math.min(sum, cap)
end
return out
`)

// maxBatch bounds the keys of one script call: the script runs atomically,
// so a call over many accounts would hold the server for long.
const maxBatch = 256

// keepAfterDay is how long an account-day's hash lives after the day
// started: its day (up to 25 h with a DST change) and one more.
const keepAfterDay = 48 * time.Hour

// redisStore is a Store on any server that speaks the Redis protocol and
// runs Lua scripts (Redis, Valkey, KeyDB, Dragonfly). Redis Cluster is not
// supported: a script's keys would have to share a slot.
type redisStore struct {
	c *redis.Client
}

// openRedis makes a client for url. It does not connect: the sync
// goroutine does, within timeout per call.
func openRedis(url string, timeout time.Duration) (*redisStore, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		// go-redis's messages can quote the URL, password included.
		return nil, errors.New("invalid [budget] shared URL")
	}
	tlsConfig := opt.TLSConfig
	opt.TLSConfig = nil // the dialer below does TLS, under the guard
	opt.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if tlsConfig != nil {
			tc := tls.Client(c, tlsConfig)
			hctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			if err := tc.HandshakeContext(hctx); err != nil {
				c.Close()
				return nil, err
			}
			c = tc
		}
		return guard(c), nil
	}
	opt.Protocol = 2 // RESP2: every Redis-protocol server speaks it, no HELLO
	opt.DisableIdentity = true
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = timeout, timeout, timeout
	opt.ContextTimeoutEnabled = true
	opt.PoolTimeout = timeout
	opt.MaxRetries = -1 // the next round is the retry; pushes are idempotent
	opt.PoolSize, opt.MinIdleConns, opt.MaxIdleConns = 2, 0, 1
	return &redisStore{c: redis.NewClient(opt)}, nil
}

// key is the hash of one account-day.
func key(a Account) string {
	return "wagi-fcgi:cpu:" + strconv.FormatInt(a.Day, 10) + ":" + a.Key
}

func (s *redisStore) Push(ctx context.Context, node string, totals []Total) ([]Stored, error) {
	out := make([]Stored, 0, len(totals))
	for len(totals) > 0 {
		n := min(len(totals), maxBatch)
		got, err := s.push(ctx, node, totals[:n])
		if err != nil {
			return nil, err
		}
		out = append(out, got...)
		totals = totals[n:]
	}
	return out, nil
}

func (s *redisStore) push(ctx context.Context, node string, totals []Total) ([]Stored, error) {
	keys := make([]string, len(totals))
	args := make([]any, 1, 1+2*len(totals))
	args[0] = node
	for i, t := range totals {
		keys[i] = key(t.Account)
		args = append(args, min(t.CPU.Microseconds(), maxMicros), t.Day+int64(keepAfterDay/time.Second))
	}
	res, err := pushScript.Run(ctx, s.c, keys, args...).Int64Slice()
	if err != nil {
		return nil, err
	}
	if len(res) != 3*len(totals) {
		return nil, fmt.Errorf("store answered %d numbers for %d accounts", len(res), len(totals))
	}
	out := make([]Stored, len(totals))
	for i, t := range totals {
		prev, own, fleet := res[3*i], res[3*i+1], res[3*i+2]
		mine := min(t.CPU.Microseconds(), maxMicros)
		// What the script guarantees; anything else is a broken or
		// hostile store, and its figures are not used at all.
		if prev < 0 || prev > own || own < mine || own > maxMicros || fleet < own || fleet > maxMicros {
			return nil, fmt.Errorf("store answered inconsistent totals for %s (own %d µs, %d before, after pushing %d; fleet %d)", t.Key, own, prev, mine, fleet)
		}
		us := func(n int64) time.Duration { return time.Duration(n) * time.Microsecond }
		out[i] = Stored{Prev: us(prev), Own: us(own), Fleet: us(fleet)}
	}
	return out, nil
}

func (s *redisStore) Ping(ctx context.Context) error { return s.c.Ping(ctx).Err() }

func (s *redisStore) Close() error { return s.c.Close() }
