package fcgi

import (
	"bytes"
	"errors"
	"maps"
	"strings"
	"testing"
)

func TestParseHeaderAcceptsVersion1AndAnyLengths(t *testing.T) {
	tests := []struct {
		name string
		raw  []byte
		want header
	}{
		{"a padded PARAMS record", []byte{1, 4, 0, 1, 0, 13, 3, 0}, header{1, 4, 1, 13, 3}},
		{"maximal content and padding together", []byte{1, 5, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, header{1, 5, 0xffff, 0xffff, 0xff}},
		{"a non-zero reserved byte", []byte{1, 9, 0, 0, 0, 0, 0, 7}, header{1, 9, 0, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := parseHeader(tt.raw)
			if err != nil || h != tt.want {
				t.Errorf("got %+v, %v; want %+v", h, err, tt.want)
			}
		})
	}
}

func TestParseHeaderRejectsOtherVersions(t *testing.T) {
	for _, v := range []byte{0, 2, 255} {
		_, err := parseHeader([]byte{v, 1, 0, 1, 0, 8, 0, 0})
		var perr *protocolError
		if !errors.As(err, &perr) || !strings.Contains(err.Error(), "want 1") {
			t.Errorf("version %d: err = %v, want a protocol error", v, err)
		}
	}
}

func TestAppendRecordPadsTo8Bytes(t *testing.T) {
	for n := range 20 {
		b := appendRecord(nil, typeStdout, 1, bytes.Repeat([]byte{'x'}, n))
		h, _ := parseHeader(b)
		if len(b)%8 != 0 || int(h.contentLength) != n || len(b) != 8+n+int(h.paddingLength) {
			t.Errorf("content %d: record of %d bytes, header %+v", n, len(b), h)
		}
	}
}

func TestDecodeParams(t *testing.T) {
	tests := []struct {
		name string
		raw  []byte
		want map[string]string
	}{
		{"nothing", nil, map[string]string{}},
		{"one short pair", []byte{1, 2, 'A', 'b', 'c'}, map[string]string{"A": "bc"}},
		{"an empty value", []byte{1, 0, 'A'}, map[string]string{"A": ""}},
		{"an empty name", []byte{0, 1, 'v'}, map[string]string{"": "v"}},
		{"a 4-byte length for a short value", []byte{1, 0x80, 0, 0, 2, 'A', 'h', 'i'}, map[string]string{"A": "hi"}},
		{"a repeated name, last wins", encodePairs([]pair{{"X", "1"}, {"Y", "2"}, {"X", "3"}}), map[string]string{"X": "3", "Y": "2"}},
		{"long names and values", encodePairs([]pair{{strings.Repeat("n", 128), strings.Repeat("v", 70000)}}),
			map[string]string{strings.Repeat("n", 128): strings.Repeat("v", 70000)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := decodeParams(tt.raw)
			if err != nil || !maps.Equal(m, tt.want) {
				t.Errorf("got %v, %v; want %v", m, err, tt.want)
			}
		})
	}
}

func TestDecodeParamsRejectsMalformedPairs(t *testing.T) {
	tests := []struct {
		name string
		raw  []byte
	}{
		{"a missing value length", []byte{1}},
		{"a truncated 4-byte name length", []byte{0x80, 0, 0}},
		{"a truncated 4-byte value length", []byte{1, 0x80, 0}},
		{"a name longer than the data", []byte{5, 0, 'a'}},
		{"a value longer than the data", []byte{1, 5, 'a', 'b'}},
		{"a huge 4-byte length", []byte{0xff, 0xff, 0xff, 0xff, 0, 'a'}},
		{"a good pair then garbage", []byte{1, 1, 'a', 'b', 9}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var perr *protocolError
			if _, err := decodeParams(tt.raw); !errors.As(err, &perr) {
				t.Errorf("err = %v, want a protocol error", err)
			}
		})
	}
}

func TestAppendPairMatchesTheSpecEncoding(t *testing.T) {
	pairs := []pair{{"A", "b"}, {strings.Repeat("n", 127), strings.Repeat("v", 128)}, {"", ""}, {"K", strings.Repeat("x", 1<<20)}}
	var got []byte
	for _, p := range pairs {
		got = appendPair(got, p.name, p.value)
	}
	if want := encodePairs(pairs); !bytes.Equal(got, want) {
		t.Errorf("appendPair encoding differs from the reference encoder")
	}
}
