package ipfs

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/boxo/files"
)

// TestAddPinnedAgainstAHostileNode: whatever a process pretending to be
// kubo answers, AddPinned returns a bounded, clear error in bounded time.
func TestAddPinnedAgainstAHostileNode(t *testing.T) {
	var stop chan struct{}
	endless := func(w http.ResponseWriter) {
		w.WriteHeader(200)
		chunk := []byte(strings.Repeat(`{"Hash":"x"}`, 1000))
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}
	cases := []struct {
		name   string
		answer func(w http.ResponseWriter, r *http.Request)
		want   string
		is     error
	}{
		{"garbage is not kubo's answer", func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Write([]byte("<html>hello</html>"))
		}, "add answered", ErrBadAnswer},
		{"an answer without a CID is refused", func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Write([]byte(`{"Name":"x"}`))
		}, "no root CID", ErrBadAnswer},
		{"a CIDv0 is refused: publish asked for v1", func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Write([]byte(`{"Name":"","Hash":"QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"}`))
		}, "not a CIDv1", ErrBadAnswer},
		{"an endless answer is cut at its bound", func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			endless(w)
		}, "answered more than", ErrBadAnswer},
		{"an endless error is read to 4 KiB", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(500)
			chunk := []byte(strings.Repeat("e", 1<<16))
			for {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}, "500 Internal Server Error: eeee", nil},
		{"kubo's error message is passed on", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(500)
			w.Write([]byte(`{"Message":"pin: out of space","Code":0,"Type":"error"}`))
		}, "add: 500 Internal Server Error: pin: out of space", nil},
		{"a node that never answers times out", func(w http.ResponseWriter, r *http.Request) {
			// It reads nothing, so it learns nothing of the client
			// leaving; the test's end lets it go.
			<-stop
		}, "timed out", ErrTimeout},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stop = make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(tc.answer))
			defer srv.Close()
			defer close(stop)
			c, err := New(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, err = c.AddPinned(ctx, files.NewBytesFile([]byte("x")), AddOptions{PinName: "t", Entries: 1})
			if err == nil || !strings.Contains(err.Error(), tc.want) || tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if len(err.Error()) > 600 {
				t.Fatalf("error of %d bytes: %.100s...", len(err.Error()), err)
			}
		})
	}
}

func TestPublishNameChecksTheAnswer(t *testing.T) {
	cases := []struct {
		name   string
		answer string
		status int
		want   string
		is     error
	}{
		{"a name for another path is refused", `{"Name":"k51qzi5uqu5dexample","Value":"/ipfs/other"}`, 200, "name/publish answered", ErrBadAnswer},
		{"a name that is not one is refused", `{"Name":"../../etc","Value":"/ipfs/bafkqaaa"}`, 200, "name/publish answered", ErrBadAnswer},
		{"an offline node says so", `{"Message":"can't publish while offline: pass allow-offline to override","Code":0,"Type":"error"}`, 500, "offline", ErrOffline},
		{"a good answer gives the name", `{"Name":"k51qzi5uqu5dexample","Value":"/ipfs/bafkqaaa"}`, 200, "", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				w.Write([]byte(tc.answer))
			}))
			defer srv.Close()
			c, err := New(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			name, err := c.PublishRecord(context.Background(), "k", "/ipfs/bafkqaaa", NameOptions{})
			if tc.want == "" {
				if err != nil || name != "k51qzi5uqu5dexample" {
					t.Fatalf("got %q, %v", name, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, tc.is) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
