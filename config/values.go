package config

import (
	"fmt"
	"math"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ParseSize parses a byte size: a plain integer is bytes; a suffix B, KiB,
// MiB, GiB or TiB counts in powers of 1024, and KB (or kB), MB, GB or TB
// in powers of 1000. Examples: "128MiB", "512KiB", "64MB", "1GiB",
// "4096". One space between number and unit is allowed. Negative numbers,
// fractions, unknown units and sizes beyond int64 are errors.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && '0' <= t[i] && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("invalid size %q: want a whole number of bytes with an optional unit, like \"128MiB\"", s)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	unit := strings.TrimPrefix(t[i:], " ")
	if strings.HasPrefix(unit, ".") || strings.HasPrefix(unit, ",") {
		return 0, fmt.Errorf("invalid size %q: fractions are not allowed; use a smaller unit (1536MiB, not 1.5GiB)", s)
	}
	var mult int64
	switch unit {
	case "", "B":
		mult = 1
	case "KiB":
		mult = 1 << 10
	case "MiB":
		mult = 1 << 20
	case "GiB":
		mult = 1 << 30
	case "TiB":
		mult = 1 << 40
	case "KB", "kB":
		mult = 1e3
	case "MB":
		mult = 1e6
	case "GB":
		mult = 1e9
	case "TB":
		mult = 1e12
	default:
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)", s, unit)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return n * mult, nil
}

// FormatSize formats a byte count with the largest binary unit that
// divides it exactly ("128MiB", "1000B"), so that ParseSize gives it back.
func FormatSize(n int64) string {
	units := [...]string{"B", "KiB", "MiB", "GiB", "TiB"}
	u := 0
	for u < len(units)-1 && n != 0 && n%1024 == 0 {
		n /= 1024
		u++
	}
	return strconv.FormatInt(n, 10) + units[u]
}

// DayStart is the time of day at which daily CPU budgets reset, in a
// fixed UTC offset (no time zones, so no DST: every day is 24 hours). The
// zero value is midnight UTC, "00:00Z".
type DayStart struct {
	// Minute is minutes after midnight in the offset's local time, 0-1439.
	Minute int
	// Offset is the UTC offset in seconds east of UTC.
	Offset int
}

// ParseDayStart parses "HH:MM" followed by "Z" or a UTC offset "+HH:MM" or
// "-HH:MM": "00:00Z", "06:30+02:00", "23:00-05:00".
func ParseDayStart(s string) (DayStart, error) {
	bad := func(why string) (DayStart, error) {
		return DayStart{}, fmt.Errorf("invalid day start %q: %s (want HH:MM followed by Z or a UTC offset, like \"00:00Z\" or \"06:30+02:00\")", s, why)
	}
	if len(s) < 6 {
		return bad("too short")
	}
	hh, mm, ok := parseHHMM(s[:5])
	if !ok || hh > 23 || mm > 59 {
		return bad("bad time of day")
	}
	d := DayStart{Minute: hh*60 + mm}
	switch zone := s[5:]; {
	case zone == "Z" || zone == "z":
	case len(zone) == 6 && (zone[0] == '+' || zone[0] == '-'):
		oh, om, ok := parseHHMM(zone[1:])
		if !ok || oh > 23 || om > 59 {
			return bad("bad UTC offset")
		}
		d.Offset = (oh*60 + om) * 60
		if zone[0] == '-' {
			d.Offset = -d.Offset
		}
	default:
		return bad("missing or bad UTC offset")
	}
	return d, nil
}

// parseHHMM parses exactly "HH:MM".
func parseHHMM(s string) (hh, mm int, ok bool) {
	if len(s) != 5 || s[2] != ':' {
		return 0, 0, false
	}
	for _, i := range [...]int{0, 1, 3, 4} {
		if s[i] < '0' || s[i] > '9' {
			return 0, 0, false
		}
	}
	return int(s[0]-'0')*10 + int(s[1]-'0'), int(s[3]-'0')*10 + int(s[4]-'0'), true
}

// String formats d as ParseDayStart reads it.
func (d DayStart) String() string {
	s := fmt.Sprintf("%02d:%02d", d.Minute/60, d.Minute%60)
	if d.Offset == 0 {
		return s + "Z"
	}
	sign, off := byte('+'), d.Offset
	if off < 0 {
		sign, off = '-', -off
	}
	return fmt.Sprintf("%s%c%02d:%02d", s, sign, off/3600, off/60%60)
}

const secondsPerDay = 24 * 60 * 60

// Start returns the start of the budget day that contains now: the latest
// reset instant not after now.
func (d DayStart) Start(now time.Time) time.Time {
	// Reset instants are k*day + shift in Unix seconds.
	shift := int64(d.Minute*60 - d.Offset)
	sec := now.Unix() - shift
	k := sec / secondsPerDay
	if sec%secondsPerDay < 0 {
		k-- // floor for instants before the epoch
	}
	return time.Unix(k*secondsPerDay+shift, 0).In(now.Location())
}

// Next returns the next reset instant strictly after now.
func (d DayStart) Next(now time.Time) time.Time {
	return d.Start(now).Add(secondsPerDay * time.Second)
}

// Listen is a parsed listen address.
type Listen struct {
	// Network is "unix" or "tcp".
	Network string
	// Address is the socket path (absolute, or "@name" for a Linux
	// abstract socket) or "host:port".
	Address string
}

// String gives back the "unix:/path" or "tcp:host:port" form.
func (l Listen) String() string { return l.Network + ":" + l.Address }

// ParseListen parses "unix:/path" or "tcp:host:port". A relative unix
// socket path is resolved against baseDir.
func ParseListen(s, baseDir string) (Listen, error) {
	network, addr, ok := strings.Cut(s, ":")
	if !ok {
		return Listen{}, fmt.Errorf("invalid listen address %q: want \"unix:/path\" or \"tcp:host:port\"", s)
	}
	switch network {
	case "unix":
		if addr == "" {
			return Listen{}, fmt.Errorf("invalid listen address %q: empty socket path", s)
		}
		if !strings.HasPrefix(addr, "@") && !filepath.IsAbs(addr) {
			addr = filepath.Join(baseDir, addr)
		}
		return Listen{Network: "unix", Address: addr}, nil
	case "tcp":
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			return Listen{}, fmt.Errorf("invalid listen address %q: %v", s, err)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || port == "" || p > 65535 {
			return Listen{}, fmt.Errorf("invalid listen address %q: port %q is not a number 0-65535", s, port)
		}
		return Listen{Network: "tcp", Address: addr}, nil
	}
	return Listen{}, fmt.Errorf("invalid listen address %q: unknown network %q, want \"unix:/path\" or \"tcp:host:port\"", s, network)
}
