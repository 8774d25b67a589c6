package pinner

import (
	"slices"
	"testing"
	"time"
)

func TestWanted(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	cfgA := map[string][]Named{"A": {{Path: "/ipfs/A", Route: "/a"}}}
	tests := []struct {
		name   string
		named  map[string][]Named
		served map[string]time.Time
		window time.Duration
		max    int
		want   []string
	}{
		{"a CID the config names is pinned though never served", cfgA, nil, time.Hour, 4, []string{"A"}},
		{"a CID the config names is pinned with the window off", cfgA, nil, 0, 4, []string{"A"}},
		{"a CID served within the window is pinned", nil, map[string]time.Time{"S": ago(time.Minute)}, time.Hour, 4, []string{"S"}},
		{"a CID served before the window is not", nil, map[string]time.Time{"S": ago(2 * time.Hour)}, time.Hour, 4, nil},
		{"a served CID is not pinned with the window off", nil, map[string]time.Time{"S": ago(time.Second)}, 0, 4, nil},
		{"a served CID is not pinned with pin_max 0", nil, map[string]time.Time{"S": ago(time.Second)}, time.Hour, 0, nil},
		{"past pin_max the most recently served win", nil,
			map[string]time.Time{"S1": ago(3 * time.Minute), "S2": ago(time.Minute), "S3": ago(2 * time.Minute)}, time.Hour, 2, []string{"S2", "S3"}},
		{"CIDs the config names do not count against pin_max", cfgA,
			map[string]time.Time{"A": ago(time.Second), "S1": ago(time.Minute)}, time.Hour, 1, []string{"A", "S1"}},
		{"a CID the config names stays pinned however long ago it was served", cfgA,
			map[string]time.Time{"A": ago(48 * time.Hour)}, time.Hour, 4, []string{"A"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			served := map[string]servedCID{}
			for c, at := range tt.served {
				served[c] = servedCID{path: "/ipfs/" + c, at: at}
			}
			got := wanted(tt.named, served, now, tt.window, tt.max)
			keys := []string{}
			for c := range got {
				keys = append(keys, c)
			}
			slices.Sort(keys)
			if !slices.Equal(keys, tt.want) && !(len(keys) == 0 && len(tt.want) == 0) {
				t.Errorf("got %v, want %v", keys, tt.want)
			}
		})
	}
}

func TestDiff(t *testing.T) {
	cfg := want{cid: "C", named: []Named{{Route: "/c"}}}
	recent := want{cid: "R", served: time.Unix(200, 0)}
	older := want{cid: "O", served: time.Unix(100, 0)}
	tests := []struct {
		name    string
		wants   []want
		ours    map[string]string
		wantAdd []string
		wantRm  []string
	}{
		{"what is wanted and not pinned by us is added, the config's first, then the most recent",
			[]want{older, recent, cfg}, nil, []string{"C", "R", "O"}, nil},
		{"what we pinned and is still wanted is left as it is",
			[]want{cfg}, map[string]string{"C": "wagi-fcgi:/c"}, nil, nil},
		{"what we pinned and is no longer wanted is removed",
			nil, map[string]string{"X": "wagi-fcgi:served", "Y": "wagi-fcgi:/old", "Z": "wagi-fcgi"}, nil, []string{"X", "Y", "Z"}},
		{"a pin named by someone else is never removed",
			nil, map[string]string{"X": "wagi-fcgi-publish", "Y": "", "Z": "my-wagi-fcgi:x"}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wants := map[string]want{}
			for _, w := range tt.wants {
				wants[w.cid] = w
			}
			add, rm := diff(wants, tt.ours)
			var addCIDs []string
			for _, w := range add {
				addCIDs = append(addCIDs, w.cid)
			}
			if !slices.Equal(addCIDs, tt.wantAdd) || !slices.Equal(rm, tt.wantRm) {
				t.Errorf("add %v rm %v, want add %v rm %v", addCIDs, rm, tt.wantAdd, tt.wantRm)
			}
		})
	}
}

func TestPinNames(t *testing.T) {
	tests := []struct {
		name string
		w    want
		pin  string
	}{
		{"a configured module's pin is named after its route", want{named: []Named{{Route: "/hello/..."}}}, "wagi-fcgi:/hello/..."},
		{"a served CID's pin says so", want{}, "wagi-fcgi:served"},
		{"a long route is cut", want{named: []Named{{Route: "/" + string(make([]byte, 300))}}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.w.pinName()
			if len(got) > maxNameLen || !Owns(got) || (tt.pin != "" && got != tt.pin) {
				t.Errorf("got %q (%d bytes), want %q, at most %d bytes, owned", got, len(got), tt.pin, maxNameLen)
			}
		})
	}
}
