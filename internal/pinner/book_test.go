package pinner

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// testCID makes a valid CIDv1 (raw) from seed.
func testCID(t testing.TB, seed string) string {
	t.Helper()
	h, err := mh.Sum([]byte(seed), mh.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	return cid.NewCidV1(cid.Raw, h).String()
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestBookFile(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	good := "/ipfs/" + testCID(t, "good")
	tests := []struct {
		name string
		file string // "" = no file
		want []string
	}{
		{"a missing file is an empty book", "", nil},
		{"a file that does not parse is an empty book", "{not json", nil},
		{"a file larger than its bound is an empty book", `{"served":{"` + good + `":"2026-12-03T11:00:00Z"}, "pad":"` + strings.Repeat("x", maxBookFile) + `"}`, nil},
		{"valid entries are kept", `{"served":{"` + good + `":"2026-12-03T11:00:00Z"}}`, []string{good}},
		{"entries that are not /ipfs/ paths are dropped",
			`{"served":{"/ipns/x":"2026-12-03T11:00:00Z","/ipfs/not-a-cid":"2026-12-03T11:00:00Z","/ipfs/` + testCID(t, "x") + `/../etc":"2026-12-03T11:00:00Z","` + good + `":"2026-12-03T11:00:00Z"}}`,
			[]string{good}},
		{"entries served in the future are dropped", `{"served":{"` + good + `":"2027-01-01T00:00:00Z"}}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "pins-served.json")
			if tt.file != "" {
				if err := os.WriteFile(file, []byte(tt.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			b := OpenBook(file, now, quiet())
			got := b.snapshot(time.Time{})
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for _, p := range tt.want {
				if _, ok := got[p]; !ok {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestBookSurvivesARestart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pins-served.json")
	now := time.Now().Truncate(time.Second)
	p := "/ipfs/" + testCID(t, "a")
	b := OpenBook(file, now, quiet())
	b.note(p, now)
	if err := b.Save(); err != nil {
		t.Fatal(err)
	}
	got := OpenBook(file, now, quiet()).snapshot(time.Time{})
	if !got[p].Equal(now) {
		t.Fatalf("after a restart: %v, want %s at %v", got, p, now)
	}
}

func TestBookIsBounded(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pins-served.json")
	start := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	b := OpenBook(file, start, quiet())
	first := "/ipfs/" + testCID(t, "0")
	for i := range MaxServed + 10 {
		b.note("/ipfs/"+testCID(t, fmt.Sprint(i)), start.Add(time.Duration(i)*time.Second))
	}
	got := b.snapshot(time.Time{})
	if len(got) != MaxServed {
		t.Fatalf("%d entries, want at most %d", len(got), MaxServed)
	}
	if _, ok := got[first]; ok {
		t.Fatalf("the entry served longest ago was kept")
	}
	if err := b.Save(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var bf bookFile
	if err := json.Unmarshal(data, &bf); err != nil || len(data) > maxBookFile {
		t.Fatalf("the full book's file (%d bytes) does not read back within %d bytes: %v", len(data), maxBookFile, err)
	}
	if n := len(OpenBook(file, start.Add(time.Hour*24), quiet()).snapshot(time.Time{})); n != MaxServed {
		t.Fatalf("read back %d entries, want %d", n, MaxServed)
	}
}
