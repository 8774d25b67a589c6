package config

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// This file finds the line on which each key of a TOML document is
// defined. BurntSushi/toml v1.6.0 keeps key positions private, so the
// document is scanned again here, after toml has accepted it. The scanner
// understands exactly enough TOML to follow keys: table headers, arrays of
// tables, dotted and quoted keys, strings of all four kinds, inline tables
// and arrays (also across lines, as TOML 1.1 allows). Whenever it meets
// something it does not expect, it stops, so that keys after that point
// have no line rather than a wrong one.

// keyPath is a key's full path; elements of arrays (of tables) appear as
// "#0", "#1", ...
type keyPath []string

func (p keyPath) id() string { return strings.Join(p, "\x00") }

// child returns p + names in a new slice.
func (p keyPath) child(names ...string) keyPath {
	c := make(keyPath, 0, len(p)+len(names))
	return append(append(c, p...), names...)
}

func index(i int) string { return "#" + strconv.Itoa(i) }

// keyLines maps keyPath.id() to the 1-based line where the key is defined.
type keyLines map[string]int

// line returns the line of p, or 0 if unknown.
func (kl keyLines) line(p keyPath) int { return kl[p.id()] }

type scanner struct {
	src   string
	pos   int
	line  int
	lines keyLines
	// arrays counts the elements of each array of tables so far, by the
	// id of its resolved path.
	arrays map[string]int
}

// locateKeys returns the line of every key in src it could follow.
func locateKeys(src string) keyLines {
	s := &scanner{src: src, line: 1, lines: keyLines{}, arrays: map[string]int{}}
	s.document()
	return s.lines
}

func (s *scanner) record(p keyPath, line int) {
	if _, ok := s.lines[p.id()]; !ok {
		s.lines[p.id()] = line
	}
}

func (s *scanner) eof() bool { return s.pos >= len(s.src) }

func (s *scanner) peek() byte {
	if s.eof() {
		return 0
	}
	return s.src[s.pos]
}

// skipSpace skips spaces and tabs.
func (s *scanner) skipSpace() {
	for !s.eof() && (s.src[s.pos] == ' ' || s.src[s.pos] == '\t') {
		s.pos++
	}
}

// skipComment skips a comment up to (not including) the newline.
func (s *scanner) skipComment() {
	if s.peek() == '#' {
		for !s.eof() && s.src[s.pos] != '\n' {
			s.pos++
		}
	}
}

// skipBlank skips white space, newlines and comments.
func (s *scanner) skipBlank() {
	for !s.eof() {
		switch s.src[s.pos] {
		case ' ', '\t', '\r':
			s.pos++
		case '\n':
			s.pos++
			s.line++
		case '#':
			s.skipComment()
		default:
			return
		}
	}
}

// document scans top-level statements until EOF or confusion.
func (s *scanner) document() {
	var table keyPath // current table, resolved
	for {
		s.skipBlank()
		if s.eof() {
			return
		}
		line := s.line
		if s.peek() == '[' {
			s.pos++
			array := s.peek() == '['
			if array {
				s.pos++
			}
			s.skipSpace()
			key, ok := s.key()
			if !ok {
				return
			}
			s.skipSpace()
			closing := "]"
			if array {
				closing = "]]"
			}
			if !strings.HasPrefix(s.src[s.pos:], closing) {
				return
			}
			s.pos += len(closing)
			table = s.resolve(key)
			if array {
				s.record(table, line)
				n := s.arrays[table.id()]
				s.arrays[table.id()] = n + 1
				table = table.child(index(n))
			}
			s.record(table, line)
		} else {
			key, ok := s.key()
			if !ok {
				return
			}
			full := table.child(key...)
			for i := len(table) + 1; i <= len(full); i++ {
				s.record(full[:i], line)
			}
			s.skipSpace()
			if s.peek() != '=' {
				return
			}
			s.pos++
			s.skipSpace()
			if !s.value(full) {
				return
			}
		}
		// Only a comment may follow on the line.
		s.skipSpace()
		s.skipComment()
		if !s.eof() && s.peek() != '\n' && s.peek() != '\r' {
			return
		}
	}
}

// resolve turns a header key into a path, entering the last element of
// every array of tables on the way ("[module.x]" after "[[module]]" means
// the last module's x).
func (s *scanner) resolve(key []string) keyPath {
	var p keyPath
	for _, k := range key {
		p = p.child(k)
		if n, ok := s.arrays[p.id()]; ok && len(p) < len(key) {
			p = p.child(index(n - 1))
		}
	}
	return p
}

// key scans a possibly dotted key and returns its parts.
func (s *scanner) key() ([]string, bool) {
	var parts []string
	for {
		part, ok := s.simpleKey()
		if !ok {
			return nil, false
		}
		parts = append(parts, part)
		save := s.pos
		s.skipSpace()
		if s.peek() != '.' {
			s.pos = save
			return parts, true
		}
		s.pos++
		s.skipSpace()
	}
}

func (s *scanner) simpleKey() (string, bool) {
	switch c := s.peek(); {
	case c == '"':
		if strings.HasPrefix(s.src[s.pos:], `"""`) {
			return "", false
		}
		return s.basicString()
	case c == '\'':
		if strings.HasPrefix(s.src[s.pos:], `'''`) {
			return "", false
		}
		return s.literalString()
	case isBareKeyChar(c):
		start := s.pos
		for !s.eof() && isBareKeyChar(s.src[s.pos]) {
			s.pos++
		}
		return s.src[start:s.pos], true
	}
	return "", false
}

func isBareKeyChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

// basicString scans a one-line "..." string and returns it unescaped.
func (s *scanner) basicString() (string, bool) {
	s.pos++ // opening quote
	var b strings.Builder
	for !s.eof() {
		c := s.src[s.pos]
		switch c {
		case '"':
			s.pos++
			return b.String(), true
		case '\n':
			return "", false
		case '\\':
			r, ok := s.escape()
			if !ok {
				return "", false
			}
			b.WriteRune(r)
		default:
			b.WriteByte(c)
			s.pos++
		}
	}
	return "", false
}

// escape scans a backslash escape and returns the character it stands for.
func (s *scanner) escape() (rune, bool) {
	s.pos++ // backslash
	if s.eof() {
		return 0, false
	}
	c := s.src[s.pos]
	s.pos++
	hex := 0
	switch c {
	case 'b':
		return '\b', true
	case 't':
		return '\t', true
	case 'n':
		return '\n', true
	case 'f':
		return '\f', true
	case 'r':
		return '\r', true
	case 'e':
		return 0x1b, true
	case '"':
		return '"', true
	case '\\':
		return '\\', true
	case 'x':
		hex = 2
	case 'u':
		hex = 4
	case 'U':
		hex = 8
	default:
		return 0, false
	}
	if s.pos+hex > len(s.src) {
		return 0, false
	}
	n, err := strconv.ParseUint(s.src[s.pos:s.pos+hex], 16, 32)
	if err != nil || !utf8.ValidRune(rune(n)) {
		return 0, false
	}
	s.pos += hex
	return rune(n), true
}

// literalString scans a one-line '...' string.
func (s *scanner) literalString() (string, bool) {
	s.pos++
	end := strings.IndexAny(s.src[s.pos:], "'\n")
	if end < 0 || s.src[s.pos+end] != '\'' {
		return "", false
	}
	str := s.src[s.pos : s.pos+end]
	s.pos += end + 1
	return str, true
}

// multiline skips a multi-line string (delim is three double or three
// single quotes), counting its lines.
func (s *scanner) multiline(delim string) bool {
	s.pos += 3
	for !s.eof() {
		if strings.HasPrefix(s.src[s.pos:], delim) {
			s.pos += 3
			// Up to two more quotes may belong to the content.
			for i := 0; i < 2 && strings.HasPrefix(s.src[s.pos:], delim[:1]); i++ {
				s.pos++
			}
			return true
		}
		switch s.src[s.pos] {
		case '\n':
			s.line++
		case '\\':
			if delim == `"""` {
				s.pos++ // skip the escaped character, whatever it is
				if !s.eof() && s.src[s.pos] == '\n' {
					s.line++
				}
			}
		}
		s.pos++
	}
	return false
}

// value scans a value whose key is p.
func (s *scanner) value(p keyPath) bool {
	switch c := s.peek(); c {
	case '"':
		if strings.HasPrefix(s.src[s.pos:], `"""`) {
			return s.multiline(`"""`)
		}
		_, ok := s.basicString()
		return ok
	case '\'':
		if strings.HasPrefix(s.src[s.pos:], `'''`) {
			return s.multiline(`'''`)
		}
		_, ok := s.literalString()
		return ok
	case '{':
		return s.inlineTable(p)
	case '[':
		return s.array(p)
	case 0, '\n', '\r', ',', ']', '}', '#':
		return false
	}
	// A number, boolean or date: runs to a delimiter.
	for !s.eof() && strings.IndexByte(",]}#\n\r", s.src[s.pos]) < 0 {
		s.pos++
	}
	return true
}

func (s *scanner) inlineTable(p keyPath) bool {
	s.pos++ // {
	for {
		s.skipBlank()
		if s.peek() == '}' {
			s.pos++
			return true
		}
		line := s.line
		key, ok := s.key()
		if !ok {
			return false
		}
		full := p.child(key...)
		for i := len(p) + 1; i <= len(full); i++ {
			s.record(full[:i], line)
		}
		s.skipSpace()
		if s.peek() != '=' {
			return false
		}
		s.pos++
		s.skipSpace()
		if !s.value(full) {
			return false
		}
		s.skipBlank()
		switch s.peek() {
		case ',':
			s.pos++
		case '}':
		default:
			return false
		}
	}
}

func (s *scanner) array(p keyPath) bool {
	s.pos++ // [
	for i := 0; ; i++ {
		s.skipBlank()
		if s.peek() == ']' {
			s.pos++
			return true
		}
		elem := p.child(index(i))
		s.record(elem, s.line)
		if !s.value(elem) {
			return false
		}
		s.skipBlank()
		switch s.peek() {
		case ',':
			s.pos++
		case ']':
		default:
			return false
		}
	}
}
