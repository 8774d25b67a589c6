package child

// Quotas of writable volumes.
//
// A writable volume may be bounded in bytes (the sizes of its regular
// files, st_size, so a sparse file counts at its length) and in entries
// (files, directories and anything else below the root). The figure is kept
// in a file in the volume's root, usageFile, that the guest can neither see
// nor name (see jailPath and volumeFile.Readdir), shared by every child that
// mounts the directory:
//
//   - Every operation that can change the figure (open with O_CREAT or
//     O_TRUNC, write, pwrite, truncate, mkdir, rmdir, unlink, rename over an
//     entry, link) runs with an exclusive flock(2) on usageFile, reads the
//     figure, checks the quota, does the operation and writes the figure
//     back, all under the lock: children writing the same directory are
//     serialised per operation, and the figure is exact between them.
//   - Growth is added to the figure and saved before the operation, and
//     corrected after it, so a child killed in between (SIGKILL, which also
//     drops the lock) leaves the figure too high, never too low.
//   - The figure is recomputed by walking the directory when usageFile is
//     missing or unreadable, and when it is older than usageRescan: that
//     bounds how long changes made behind the volume's back (the host
//     administrator, a kill's over-count, a file unlinked while still open)
//     stay wrong.
//   - A refusal returns quota.Exceeded() (ENOSPC for the guest). Operations
//     that free room are never refused; a volume already over its quota (it
//     held more when mounted) stays readable and can be cleaned up.
//   - Entries are counted per name, like the walk sees them: a hard link
//     counts as one more entry and its file's bytes once more.

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	esys "github.com/tetratelabs/wazero/experimental/sys"
	"golang.org/x/sys/unix"

	"github.com/wagi-fcgi/wagi-fcgi/internal/quota"
)

// Quota bounds a writable volume; a zero field is no bound.
type Quota struct {
	Bytes int64 // bytes of regular files (st_size)
	Files int64 // entries below the root: files, directories, others
}

// clampQuota converts a quota from the IPC message.
func clampQuota(n uint64) int64 {
	if n > 1<<62 {
		return 1 << 62
	}
	return int64(n)
}

// usageFile holds a volume's figure, in its root; the guest cannot see or
// name it.
const usageFile = ".wagi-usage"

// usageRescan is how old a figure may be before the next size-changing
// operation recomputes it by walking the directory.
const usageRescan = time.Minute

// usageFormat is the figure on disk, fixed width so that it is always
// rewritten whole by one pwrite: bytes, entries, walk time (Unix ns).
const usageFormat = "wagi-usage v1 %019d %019d %019d\n"

// usage is a volume's figure.
type usage struct {
	bytes, files int64
	walked       int64 // when it was last recomputed, Unix ns
}

// usageLock is a volume's figure, read and locked.
type usageLock struct {
	v  *volumeFS
	e  *usageFD
	fd int
	u  usage
}

// usageFD is the open figure file of one volume root, kept for the life of
// the process: opening it (with openat2, jailed) for every write cost more
// than the write. mu serialises the goroutines of this process (flock locks
// an open file description, which they share); flock, other processes.
type usageFD struct {
	mu sync.Mutex
	fd int // -1 until opened
	// raw and u are the last figure read or written, so that an unchanged
	// figure is not parsed again.
	raw []byte
	u   usage
}

// usageFDs maps a volume root to its usageFD.
var usageFDs struct {
	sync.Mutex
	m map[string]*usageFD
}

func usageFDOf(root string) *usageFD {
	usageFDs.Lock()
	defer usageFDs.Unlock()
	if usageFDs.m == nil {
		usageFDs.m = map[string]*usageFD{}
	}
	e := usageFDs.m[root]
	if e == nil {
		e = &usageFD{fd: -1}
		usageFDs.m[root] = e
	}
	return e
}

// current reports whether fd is still the file named usageFile in root
// (the administrator may have removed or replaced it).
func current(fd int, root string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(fd, &a) != nil || a.Nlink == 0 {
		return false
	}
	if unix.Fstatat(unix.AT_FDCWD, filepath.Join(root, usageFile), &b, unix.AT_SYMLINK_NOFOLLOW) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// accounted reports whether v keeps a figure.
func (v *volumeFS) accounted() bool {
	return !v.readOnly && (v.quota.Bytes > 0 || v.quota.Files > 0)
}

// lockUsage opens usageFile (creating it), takes the lock and reads the
// figure, walking the directory if it is missing or stale.
func (v *volumeFS) lockUsage() (*usageLock, esys.Errno) {
	e := usageFDOf(v.root)
	e.mu.Lock()
	if e.fd >= 0 && !v.checkedFD && !current(e.fd, v.root) { // once per mount
		unix.Close(e.fd)
		e.fd, e.raw = -1, nil
	}
	v.checkedFD = true
	if e.fd < 0 {
		fd, errno := v.openJailed(usageFile, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW, 0o600)
		if errno != 0 {
			e.mu.Unlock()
			return nil, errno
		}
		e.fd = fd
	}
	fd := e.fd
	for {
		err := unix.Flock(fd, unix.LOCK_EX)
		if err == nil {
			break
		}
		if err != unix.EINTR {
			e.mu.Unlock()
			return nil, esys.UnwrapOSError(err)
		}
	}
	l := &usageLock{v: v, e: e, fd: fd}
	var buf [len(usageFormat) + 64]byte
	n, _ := unix.Pread(fd, buf[:], 0)
	var u usage
	ok := true
	if raw := buf[:max(n, 0)]; n > 0 && bytes.Equal(raw, e.raw) {
		u = e.u
	} else if ok = n > 0 && parseUsage(string(raw), &u); ok {
		e.raw, e.u = append(e.raw[:0], raw...), u
	}
	if !ok || time.Since(time.Unix(0, u.walked)) > usageRescan || u.walked > time.Now().UnixNano() {
		var errno esys.Errno
		if u, errno = v.walkUsage(); errno != 0 {
			l.unlock()
			return nil, errno
		}
		l.u = u
		l.save()
		_ = unix.Ftruncate(fd, int64(len(fmt.Sprintf(usageFormat, 0, 0, 0)))) // drop any longer garbage
		return l, 0
	}
	l.u = u
	return l, 0
}

func parseUsage(s string, u *usage) bool {
	f := strings.Fields(s)
	if len(f) != 5 || f[0] != "wagi-usage" || f[1] != "v1" {
		return false
	}
	var err [3]error
	u.bytes, err[0] = strconv.ParseInt(f[2], 10, 64)
	u.files, err[1] = strconv.ParseInt(f[3], 10, 64)
	u.walked, err[2] = strconv.ParseInt(f[4], 10, 64)
	return err[0] == nil && err[1] == nil && err[2] == nil && u.bytes >= 0 && u.files >= 0
}

// walkUsage computes the figure from the directory itself. It follows no
// symlink (a symlink counts as an entry of 0 bytes).
func (v *volumeFS) walkUsage() (usage, esys.Errno) {
	u := usage{walked: time.Now().UnixNano()}
	err := filepath.WalkDir(v.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == v.root {
				return err
			}
			return nil // vanished or unreadable: not counted
		}
		if p == v.root || p == filepath.Join(v.root, usageFile) {
			return nil
		}
		u.files++
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				u.bytes += fi.Size()
			}
		}
		return nil
	})
	if err != nil {
		return usage{}, esys.UnwrapOSError(err)
	}
	return u, 0
}

// save writes the figure back.
func (l *usageLock) save() {
	s := fmt.Appendf(l.e.raw[:0], usageFormat, max(l.u.bytes, 0), max(l.u.files, 0), l.u.walked)
	if _, err := unix.Pwrite(l.fd, s, 0); err != nil {
		s = s[:0]
	}
	l.e.raw, l.e.u = s, l.u
}

// unlock drops the lock. (A process that dies holding it drops it too.)
func (l *usageLock) unlock() {
	if l.fd >= 0 {
		_ = unix.Flock(l.fd, unix.LOCK_UN)
		l.fd = -1
		l.e.mu.Unlock()
	}
}

// reserve adds growth to the figure and saves it, or refuses with
// quota.Exceeded if that would pass a quota. Shrinking (negative deltas)
// is never refused.
func (l *usageLock) reserve(bytes, files int64) esys.Errno {
	q := l.v.quota
	if bytes > 0 && q.Bytes > 0 && l.u.bytes+bytes > q.Bytes {
		return quota.Exceeded()
	}
	if files > 0 && q.Files > 0 && l.u.files+files > q.Files {
		return quota.Exceeded()
	}
	l.adjust(bytes, files)
	return 0
}

// adjust adds to the figure (never below zero) and saves it.
func (l *usageLock) adjust(bytes, files int64) {
	if bytes == 0 && files == 0 {
		return
	}
	l.u.bytes = max(l.u.bytes+bytes, 0)
	l.u.files = max(l.u.files+files, 0)
	l.save()
}

// entryUsage is what the entry base of dirFD counts for: its bytes (a
// regular file's size) and whether it exists, with its inode.
func entryUsage(dirFD int, base string) (bytes int64, exists bool, dev, ino uint64) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirFD, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return 0, false, 0, 0
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		bytes = st.Size
	}
	return bytes, true, uint64(st.Dev), st.Ino
}

// regularSize is fd's size if it is a regular file.
func regularSize(fd int) (int64, bool) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, false
	}
	return st.Size, true
}

// openAccounted is OpenFile's pin for O_CREAT or O_TRUNC on an accounted
// volume: the creation of an entry and the truncation of a file change the
// figure.
func (v *volumeFS) openAccounted(rel string, slash bool, flags int, perm uint32) (int, esys.Errno) {
	l, errno := v.lockUsage()
	if errno != 0 {
		return -1, errno
	}
	defer l.unlock()
	var oldBytes int64
	var existed bool
	if dirFD, base, errno := v.openParent(rel); errno == 0 {
		oldBytes, existed, _, _ = entryUsage(dirFD, base)
		unix.Close(dirFD)
	}
	var newEntry int64
	if !existed && flags&unix.O_CREAT != 0 {
		newEntry = 1
		if errno := l.reserve(0, 1); errno != 0 {
			return -1, errno
		}
	}
	pin, errno := v.openJailed(withSlash(rel, slash), flags, perm)
	if errno != 0 {
		l.adjust(0, -newEntry)
		return -1, errno
	}
	if size, ok := regularSize(pin); ok && existed {
		l.adjust(size-oldBytes, 0)
	}
	return pin, 0
}

// grow runs op, which may make the file f larger: the growth at most
// (want, computed from the size before) is reserved first, the figure
// corrected by the size after.
func (f *volumeFile) grow(want func(size int64) int64, op func() esys.Errno) esys.Errno {
	if _, ok := regularSize(f.pin); !ok {
		return op() // not a regular file: its bytes are not counted
	}
	l, errno := f.vol.lockUsage()
	if errno != 0 {
		return errno
	}
	defer l.unlock()
	before, _ := regularSize(f.pin)
	reserved := max(want(before)-before, 0)
	if errno := l.reserve(reserved, 0); errno != 0 {
		return errno
	}
	errno = op()
	after, _ := regularSize(f.pin)
	l.adjust(after-before-reserved, 0)
	return errno
}

// offset is where the next Write of f goes.
func (f *volumeFile) offset(size int64) int64 {
	if f.File.IsAppend() {
		return size
	}
	off, errno := f.File.Seek(0, io.SeekCurrent)
	if errno != 0 {
		return size
	}
	return off
}
