package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int64
		wantErr string
	}{
		{name: "a plain integer is bytes", in: "4096", want: 4096},
		{name: "zero is zero", in: "0", want: 0},
		{name: "B is bytes", in: "100B", want: 100},
		{name: "KiB is 1024 bytes", in: "512KiB", want: 512 << 10},
		{name: "MiB is 1024 KiB", in: "128MiB", want: 128 << 20},
		{name: "16MiB is what max_body defaults to", in: "16MiB", want: 16 << 20},
		{name: "GiB is 1024 MiB", in: "1GiB", want: 1 << 30},
		{name: "TiB is 1024 GiB", in: "2TiB", want: 2 << 40},
		{name: "KB is 1000 bytes", in: "3KB", want: 3000},
		{name: "kB is 1000 bytes too", in: "3kB", want: 3000},
		{name: "MB is a million bytes", in: "64MB", want: 64_000_000},
		{name: "GB is a billion bytes", in: "2GB", want: 2_000_000_000},
		{name: "TB is a trillion bytes", in: "1TB", want: 1_000_000_000_000},
		{name: "one space before the unit is allowed", in: "128 MiB", want: 128 << 20},
		{name: "surrounding white space is ignored", in: " 1GiB ", want: 1 << 30},
		{name: "the largest int64 is accepted", in: "9223372036854775807", want: 1<<63 - 1},
		{name: "an empty string is rejected", in: "", wantErr: "want a whole number"},
		{name: "a negative size is rejected", in: "-1MiB", wantErr: "want a whole number"},
		{name: "a fraction is rejected", in: "1.5GiB", wantErr: "fractions are not allowed"},
		{name: "a unit alone is rejected", in: "MiB", wantErr: "want a whole number"},
		{name: "an ambiguous single-letter unit is rejected", in: "128M", wantErr: `unknown unit "M"`},
		{name: "a lower-case binary unit is rejected", in: "128mib", wantErr: `unknown unit "mib"`},
		{name: "junk after the unit is rejected", in: "128MiBs", wantErr: `unknown unit "MiBs"`},
		{name: "two spaces before the unit are rejected", in: "128  MiB", wantErr: "unknown unit"},
		{name: "an overflowing number is rejected", in: "9223372036854775808", wantErr: "too large"},
		{name: "an overflowing product is rejected", in: "9000000TiB", wantErr: "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSize(%q) = %d, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFormatSizeRoundTrips(t *testing.T) {
	tests := []struct {
		name string
		n    int64
		want string
	}{
		{"zero is 0B", 0, "0B"},
		{"an odd size stays in bytes", 1000, "1000B"},
		{"a whole number of KiB uses KiB", 3 << 10, "3KiB"},
		{"a whole number of MiB uses MiB", 128 << 20, "128MiB"},
		{"a whole number of TiB uses TiB", 5 << 40, "5TiB"},
		{"beyond TiB stays in TiB", 2048 << 40, "2048TiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := FormatSize(tt.n)
			if s != tt.want {
				t.Errorf("FormatSize(%d) = %q, want %q", tt.n, s, tt.want)
			}
			if back, err := ParseSize(s); err != nil || back != tt.n {
				t.Errorf("ParseSize(%q) = %d, %v; want %d", s, back, err, tt.n)
			}
		})
	}
}

func TestMemoryPages(t *testing.T) {
	tests := []struct {
		name   string
		memory int64
		want   uint32
	}{
		{"no memory is no pages", 0, 0},
		{"one byte needs a page", 1, 1},
		{"one page is one page", 64 << 10, 1},
		{"a byte over a page needs two", 64<<10 + 1, 2},
		{"128MiB is 2048 pages", 128 << 20, 2048},
		{"4GiB is 65536 pages", 4 << 30, 65536},
		{"beyond 4GiB is capped at 65536 pages", 8 << 30, 65536},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (Limits{Memory: tt.memory}).MemoryPages(); got != tt.want {
				t.Errorf("MemoryPages() = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestParseDayStart(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    DayStart
		wantErr string
	}{
		{name: "midnight UTC", in: "00:00Z", want: DayStart{}},
		{name: "a lower-case z is UTC too", in: "12:00z", want: DayStart{Minute: 720}},
		{name: "a positive offset", in: "06:30+02:00", want: DayStart{Minute: 390, Offset: 7200}},
		{name: "a negative offset", in: "23:00-05:00", want: DayStart{Minute: 1380, Offset: -18000}},
		{name: "an offset with minutes", in: "00:00+05:45", want: DayStart{Offset: 5*3600 + 45*60}},
		{name: "a zero offset written out", in: "01:00+00:00", want: DayStart{Minute: 60}},
		{name: "a missing zone is rejected", in: "06:30", wantErr: "too short"},
		{name: "a named zone is rejected", in: "06:30 CET", wantErr: "missing or bad UTC offset"},
		{name: "hour 24 is rejected", in: "24:00Z", wantErr: "bad time of day"},
		{name: "minute 60 is rejected", in: "10:60Z", wantErr: "bad time of day"},
		{name: "a one-digit hour is rejected", in: "6:30+02:00", wantErr: "bad time of day"},
		{name: "a too short time is rejected", in: "6:30Z", wantErr: "too short"},
		{name: "seconds are rejected", in: "06:30:00Z", wantErr: "bad"},
		{name: "an offset without a colon is rejected", in: "06:30+0200", wantErr: "missing or bad UTC offset"},
		{name: "an out-of-range offset is rejected", in: "06:30+24:00", wantErr: "bad UTC offset"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDayStart(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseDayStart(%q) = %v, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseDayStart(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if s := got.String(); !strings.EqualFold(s, tt.in) && !(tt.in == "01:00+00:00" && s == "01:00Z") {
				t.Errorf("String() = %q, want %q", s, tt.in)
			}
		})
	}
}

func TestDayStartStartAndNext(t *testing.T) {
	utc := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	tests := []struct {
		name      string
		dayStart  string
		now       string
		wantStart string
		wantNext  string
	}{
		{name: "midnight UTC in the middle of the day", dayStart: "00:00Z", now: "2024-03-10T15:04:05Z",
			wantStart: "2024-03-10T00:00:00Z", wantNext: "2024-03-11T00:00:00Z"},
		{name: "exactly at the reset the day starts now and the next is tomorrow", dayStart: "00:00Z", now: "2024-03-10T00:00:00Z",
			wantStart: "2024-03-10T00:00:00Z", wantNext: "2024-03-11T00:00:00Z"},
		{name: "just before the reset belongs to the previous day", dayStart: "00:00Z", now: "2024-03-09T23:59:59.999999999Z",
			wantStart: "2024-03-09T00:00:00Z", wantNext: "2024-03-10T00:00:00Z"},
		{name: "a positive offset resets earlier in UTC", dayStart: "06:30+02:00", now: "2024-03-10T05:00:00Z",
			wantStart: "2024-03-10T04:30:00Z", wantNext: "2024-03-11T04:30:00Z"},
		{name: "before a positive-offset reset is still yesterday", dayStart: "06:30+02:00", now: "2024-03-10T04:29:59Z",
			wantStart: "2024-03-09T04:30:00Z", wantNext: "2024-03-10T04:30:00Z"},
		{name: "a negative offset resets later in UTC, across the UTC date", dayStart: "23:00-05:00", now: "2024-03-10T03:00:00Z",
			wantStart: "2024-03-09T04:00:00Z", wantNext: "2024-03-10T04:00:00Z"},
		{name: "a negative offset after its reset", dayStart: "23:00-05:00", now: "2024-03-10T04:00:01Z",
			wantStart: "2024-03-10T04:00:00Z", wantNext: "2024-03-11T04:00:00Z"},
		{name: "a US DST change date is still a 24 hour day", dayStart: "00:00-05:00", now: "2024-03-10T12:00:00Z",
			wantStart: "2024-03-10T05:00:00Z", wantNext: "2024-03-11T05:00:00Z"},
		{name: "a leap day is an ordinary day", dayStart: "12:00Z", now: "2024-02-29T18:00:00Z",
			wantStart: "2024-02-29T12:00:00Z", wantNext: "2024-03-01T12:00:00Z"},
		{name: "an instant before 1970 rounds down, not toward zero", dayStart: "00:00Z", now: "1969-12-31T12:00:00Z",
			wantStart: "1969-12-31T00:00:00Z", wantNext: "1970-01-01T00:00:00Z"},
		{name: "a time given in another zone gives the same instants", dayStart: "00:00Z", now: "2024-03-10T01:00:00+05:00",
			wantStart: "2024-03-09T00:00:00Z", wantNext: "2024-03-10T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds, err := ParseDayStart(tt.dayStart)
			if err != nil {
				t.Fatal(err)
			}
			now := utc(tt.now)
			start, next := ds.Start(now), ds.Next(now)
			if !start.Equal(utc(tt.wantStart)) {
				t.Errorf("Start(%s) = %s, want %s", tt.now, start.UTC(), tt.wantStart)
			}
			if !next.Equal(utc(tt.wantNext)) {
				t.Errorf("Next(%s) = %s, want %s", tt.now, next.UTC(), tt.wantNext)
			}
			if start.After(now) || !next.After(now) {
				t.Errorf("want Start <= now < Next, got %s <= %s < %s", start, now, next)
			}
		})
	}
}

func TestParseListen(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Listen
		wantErr string
	}{
		{name: "an absolute unix socket", in: "unix:/run/wagi.sock", want: Listen{"unix", "/run/wagi.sock"}},
		{name: "a relative unix socket is resolved", in: "unix:wagi.sock", want: Listen{"unix", "/etc/wagi/wagi.sock"}},
		{name: "an abstract unix socket is kept", in: "unix:@wagi", want: Listen{"unix", "@wagi"}},
		{name: "a tcp address", in: "tcp:127.0.0.1:9000", want: Listen{"tcp", "127.0.0.1:9000"}},
		{name: "a tcp address on every interface", in: "tcp::9000", want: Listen{"tcp", ":9000"}},
		{name: "an IPv6 tcp address", in: "tcp:[::1]:9000", want: Listen{"tcp", "[::1]:9000"}},
		{name: "a tcp port chosen by the kernel", in: "tcp:127.0.0.1:0", want: Listen{"tcp", "127.0.0.1:0"}},
		{name: "no network is rejected", in: "127.0.0.1:9000", wantErr: "unknown network"},
		{name: "an empty socket path is rejected", in: "unix:", wantErr: "empty socket path"},
		{name: "a named port is rejected", in: "tcp:localhost:http", wantErr: "not a number"},
		{name: "a port out of range is rejected", in: "tcp:localhost:70000", wantErr: "not a number"},
		{name: "an empty port is rejected", in: "tcp:localhost:", wantErr: "not a number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseListen(tt.in, "/etc/wagi")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseListen(%q) = %v, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseListen(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			if got.String() != tt.want.Network+":"+tt.want.Address {
				t.Errorf("String() = %q", got.String())
			}
		})
	}
}
