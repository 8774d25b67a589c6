package mfspublish

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// fakeNode is an MFS directory whose CID the test sets, and a record of
// the publications.
type fakeNode struct {
	mu        sync.Mutex
	cid       string // "" = the directory does not exist
	statErr   error
	pubErr    error
	published []string // CIDs, in order
}

func (f *fakeNode) MFSDirCID(_ context.Context, p string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.statErr != nil {
		return "", f.statErr
	}
	if f.cid == "" {
		return "", fmt.Errorf("%w: %s", ipfs.ErrNotFound, p)
	}
	return f.cid, nil
}

func (f *fakeNode) PublishName(_ context.Context, key, cid string, _ time.Duration) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pubErr != nil {
		return "", f.pubErr
	}
	f.published = append(f.published, cid)
	return "k51-" + key, nil
}

func (f *fakeNode) set(fn func(f *fakeNode)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeNode) publications() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.published...)
}

// syncBuf is a log sink safe for the publisher's goroutine.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond for up to 10 s (generous: these are wall-time
// behaviours on a possibly loaded machine).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s after 10 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPublisher(t *testing.T) {
	const tick = 10 * time.Millisecond
	tests := []struct {
		name string
		run  func(t *testing.T, f *fakeNode, p *Publisher, log *syncBuf)
	}{
		{"publishes nothing while the directory does not exist, then its first version", func(t *testing.T, f *fakeNode, p *Publisher, _ *syncBuf) {
			time.Sleep(5 * tick)
			if got := f.publications(); len(got) != 0 {
				t.Fatalf("published %v before the directory existed", got)
			}
			f.set(func(f *fakeNode) { f.cid = "bafy1" })
			waitFor(t, "the first publication", func() bool { return len(f.publications()) == 1 })
			st := p.States()[0]
			if st.CID != "bafy1" || st.Name != "k51-book" || st.Published.IsZero() || st.Err != "" {
				t.Fatalf("state %+v", st)
			}
		}},
		{"publishes an unchanged directory once", func(t *testing.T, f *fakeNode, _ *Publisher, _ *syncBuf) {
			f.set(func(f *fakeNode) { f.cid = "bafy1" })
			waitFor(t, "the first publication", func() bool { return len(f.publications()) == 1 })
			time.Sleep(10 * tick)
			if got := f.publications(); len(got) != 1 {
				t.Fatalf("published %v, want bafy1 once", got)
			}
		}},
		{"publishes a change only once its interval has passed", func(t *testing.T, f *fakeNode, p *Publisher, _ *syncBuf) {
			f.set(func(f *fakeNode) { f.cid = "bafy1" })
			waitFor(t, "the first publication", func() bool { return len(f.publications()) == 1 })
			first := p.States()[0].Published
			f.set(func(f *fakeNode) { f.cid = "bafy2" })
			waitFor(t, "the second publication", func() bool { return len(f.publications()) == 2 })
			if gap := p.States()[0].Published.Sub(first); gap < p.vols[0].Every {
				t.Fatalf("published again after %v, want at least %v", gap, p.vols[0].Every)
			}
		}},
		{"logs a failure once, retries, and logs the recovery", func(t *testing.T, f *fakeNode, p *Publisher, log *syncBuf) {
			f.set(func(f *fakeNode) { f.cid, f.pubErr = "bafy1", errors.New("no key named book") })
			waitFor(t, "the error in the state", func() bool { return strings.Contains(p.States()[0].Err, "no key named book") })
			time.Sleep(10 * tick)
			if n := strings.Count(log.String(), "MFS volume not published"); n != 1 {
				t.Fatalf("the failure was logged %d times, want once:\n%s", n, log)
			}
			f.set(func(f *fakeNode) { f.pubErr = nil })
			waitFor(t, "the publication after the failure", func() bool { return len(f.publications()) == 1 })
			if st := p.States()[0]; st.Err != "" || st.CID != "bafy1" {
				t.Fatalf("state %+v after the recovery", st)
			}
		}},
		{"publishes at Close what changed within the interval", func(t *testing.T, f *fakeNode, p *Publisher, _ *syncBuf) {
			f.set(func(f *fakeNode) { f.cid = "bafy1" })
			waitFor(t, "the first publication", func() bool { return len(f.publications()) == 1 })
			f.set(func(f *fakeNode) { f.cid = "bafy2" })
			p.Close()
			if got := f.publications(); len(got) != 2 || got[1] != "bafy2" {
				t.Fatalf("published %v, want bafy1 then bafy2 at Close", got)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeNode{}
			var log syncBuf
			p := start(f, []Volume{{Path: "/wagi/book", Key: "book", Every: 20 * tick}, {Path: "/unpublished"}},
				slog.New(slog.NewTextHandler(&log, nil)), tick)
			defer p.Close() // a second Close is harmless
			if len(p.States()) != 1 {
				t.Fatalf("states %+v: a volume without a key must be skipped", p.States())
			}
			tt.run(t, f, p, &log)
		})
	}
}
