package fleetbudget

import (
	"errors"
	"strings"
	"testing"
)

func TestTheGuardPassesWhatRedisSends(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"a status", "+OK\r\n"},
		{"an error", "-NOSCRIPT No matching script\r\n"},
		{"an integer", ":42\r\n"},
		{"a bulk string with CRLF inside", "$4\r\na\r\nb\r\n"},
		{"a null bulk string", "$-1\r\n"},
		{"a null array", "*-1\r\n"},
		{"an array of integers", "*4\r\n:1\r\n:2\r\n:3\r\n:4\r\n"},
		{"nested arrays", "*2\r\n*1\r\n$3\r\nabc\r\n*0\r\n"},
		{"a RESP3 map", "%1\r\n+proto\r\n:3\r\n"},
		{"an empty bulk string", "$0\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Whole, and one byte at a time (reads split anywhere).
			var g respGuard
			if err := g.scan([]byte(tt.in)); err != nil {
				t.Errorf("whole: %v", err)
			}
			var g1 respGuard
			for i := range len(tt.in) {
				if err := g1.scan([]byte{tt.in[i]}); err != nil {
					t.Fatalf("byte %d: %v", i, err)
				}
			}
			if g.state != atType || g1.state != atType {
				t.Errorf("state after a whole reply = %d, %d; want at the next frame", g.state, g1.state)
			}
		})
	}
}

func TestTheGuardStopsHostileReplies(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"an array length past int64", "*99999999999999999999\r\n"},
		{"an array of a hundred million elements", "*100000000\r\n"},
		{"a bulk string of 2 GB", "$2000000000\r\n"},
		{"a negative length other than -1", "$-5\r\n"},
		{"a length without digits", "*\r\n"},
		{"an unknown frame type", "@hello\r\n"},
		{"a CR without LF", "+OK\rX"},
		{"a line that never ends", "+" + strings.Repeat("A", maxLine+1)},
		{"many arrays that add up past the budget", strings.Repeat("*4096\r\n", maxReplyCost/(4096*elemCost)+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var g respGuard
			if err := g.scan([]byte(tt.in)); !errors.Is(err, errHostileReply) {
				t.Errorf("scan = %v, want errHostileReply", err)
			}
		})
	}
}
