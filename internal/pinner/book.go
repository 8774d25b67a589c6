package pinner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
)

// MaxServed bounds the CIDs a Book remembers (config.MaxPinMax, the
// largest pin_max): past it, the one served longest ago is forgotten. A
// gateway client that gets many modules served cannot make the book, or its
// file, grow without end.
const MaxServed = 4096

// maxBookFile bounds the file a Book is read from: MaxServed entries of
// ~120 bytes each fit in well under it.
const maxBookFile = 1 << 20

// maxPathLen bounds one remembered path ("/ipfs/CID[/sub]").
const maxPathLen = 1024

// Book is when each CID was last served: shared by the generations of a
// reloading server (like the CPU ledger, it belongs to the process), and
// kept in a small file so that a restart neither unpins what was served
// nor forgets it.
type Book struct {
	file string
	log  *slog.Logger

	saveMu sync.Mutex // one Save at a time: generations share the book

	mu     sync.Mutex
	served map[string]time.Time // by path, "/ipfs/CID[/sub]"
	dirty  bool
}

// bookFile is the file's form.
type bookFile struct {
	Served map[string]time.Time `json:"served"`
}

// OpenBook reads the book kept in file. A missing file is an empty book; a
// file that is too large or does not parse is logged and ignored (the node
// then only pins what the config names until CIDs are served again), and
// entries that are not valid paths, or that claim a time in the future, are
// dropped: the file is the node's own, but a bad one must not stop it.
func OpenBook(file string, now time.Time, log *slog.Logger) *Book {
	b := &Book{file: file, log: log, served: map[string]time.Time{}}
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return b
	}
	if err != nil {
		log.Warn("pinning: served CIDs not read; starting with none", "file", file, "err", err)
		return b
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxBookFile+1))
	if err == nil && len(data) > maxBookFile {
		err = fmt.Errorf("larger than %d bytes", maxBookFile)
	}
	var bf bookFile
	if err == nil {
		err = json.Unmarshal(data, &bf)
	}
	if err != nil {
		log.Warn("pinning: served CIDs not read; starting with none", "file", file, "err", err)
		return b
	}
	bad := 0
	for p, t := range bf.Served {
		if CheckPath(p) != nil || t.IsZero() || t.After(now.Add(time.Minute)) {
			bad++
			continue
		}
		b.served[p] = t
	}
	for len(b.served) > MaxServed {
		b.forgetOldestLocked()
		bad++
	}
	if bad > 0 {
		log.Warn("pinning: entries of the served CIDs file dropped", "file", file, "dropped", bad)
		b.dirty = true
	}
	return b
}

// CheckPath checks a path the pinner is given: "/ipfs/" and a CID,
// optionally followed by a clean sub-path.
func CheckPath(p string) error {
	rest, ok := strings.CutPrefix(p, "/ipfs/")
	if !ok || len(p) > maxPathLen {
		return fmt.Errorf("pinner: %q is not an /ipfs/ path", p)
	}
	c, sub, _ := strings.Cut(rest, "/")
	if _, err := cid.Decode(c); err != nil {
		return fmt.Errorf("pinner: %q: %w", p, err)
	}
	if sub != "" && (filepath.Clean("/"+sub) != "/"+sub || strings.ContainsAny(sub, "\x00\\")) {
		return fmt.Errorf("pinner: %q: unclean sub-path", p)
	}
	return nil
}

// checkNamed checks a path the config names: an /ipfs/ path (CheckPath),
// or "/ipns/NAME[/sub]", which the pinner resolves at every pass.
func checkNamed(p string) error {
	rest, ok := strings.CutPrefix(p, "/ipns/")
	if !ok {
		return CheckPath(p)
	}
	if rest == "" || len(p) > maxPathLen || strings.HasPrefix(rest, "/") ||
		filepath.Clean("/"+rest) != "/"+rest || strings.ContainsAny(rest, "\x00\\") {
		return fmt.Errorf("pinner: %q is not a clean /ipns/ path", p)
	}
	return nil
}

// note records that path was served at t, and says whether the book did
// not know it yet.
func (b *Book) note(path string, t time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	prev, known := b.served[path]
	if known && !t.After(prev) {
		return false
	}
	if !known && len(b.served) >= MaxServed {
		b.forgetOldestLocked()
	}
	b.served[path] = t
	b.dirty = true
	return !known
}

func (b *Book) forgetOldestLocked() {
	var oldest string
	var at time.Time
	for p, t := range b.served {
		if oldest == "" || t.Before(at) {
			oldest, at = p, t
		}
	}
	delete(b.served, oldest)
}

// snapshot copies the book, forgetting entries served before since (they
// can never be pinned again for it).
func (b *Book) snapshot(since time.Time) map[string]time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]time.Time, len(b.served))
	for p, t := range b.served {
		if t.Before(since) {
			delete(b.served, p)
			b.dirty = true
			continue
		}
		out[p] = t
	}
	return out
}

// Save writes the book to its file if it changed (through a temporary file
// and a rename, so a crash leaves the old file or the new one).
func (b *Book) Save() error {
	b.saveMu.Lock()
	defer b.saveMu.Unlock()
	b.mu.Lock()
	if !b.dirty {
		b.mu.Unlock()
		return nil
	}
	data, err := json.Marshal(bookFile{Served: b.served})
	b.dirty = false
	b.mu.Unlock()
	if err != nil {
		return err
	}
	tmp := b.file + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		b.markDirty()
		return fmt.Errorf("pinning: save served CIDs: %w", err)
	}
	if err := os.Rename(tmp, b.file); err != nil {
		b.markDirty()
		return fmt.Errorf("pinning: save served CIDs: %w", err)
	}
	return nil
}

func (b *Book) markDirty() {
	b.mu.Lock()
	b.dirty = true
	b.mu.Unlock()
}
