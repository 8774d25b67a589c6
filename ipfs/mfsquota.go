package ipfs

// Quotas of MFS volumes (MFSOptions.QuotaBytes, QuotaFiles).
//
// MFS has no lock that several processes could share, so the figure is not
// kept in one place as for local volumes. Instead:
//
//   - Each FS (one per request in wagi-fcgi) learns the volume's usage by
//     walking it (files/ls --long, one call per directory) the first time an
//     operation needs it, and then adds its own growth: its open buffers,
//     the files it creates, the directories it makes. write, pwrite,
//     truncate, open with O_CREAT and mkdir are refused past a quota
//     (quota.Exceeded, ENOSPC for the guest) against that figure.
//   - Since the data reaches MFS only at the write-back (Close, Sync), a
//     write-back that makes the volume larger walks it again after its
//     files/write: if the volume is then over a quota, other requests wrote
//     back since this one's figure was taken, and this write-back is undone
//     (the old version put back by CID, or the new file removed) and fails
//     with ENOSPC (the guest's close or fsync gets it).
//   - Removing anything (unlink, rmdir, rename over an entry) forgets the
//     figure, so the next check walks again and sees the room it freed.
//
// Of two requests writing back at the same moment, one whose walk comes
// after both files/writes sees both and undoes its own (both may, so near
// the limit concurrent writers can all be refused). So the volume is over
// its quota only transiently, between a files/write and its undo: by at
// most (k-1) write-backs (each at most min(quota, MaxFileSize) bytes and
// one file) for k requests writing back at once. It stays over only if a
// request is killed (or the node fails) between its files/write and its
// undo: by that one write-back, until files are removed.
//
// mkdir is checked against the request's figure only (no walk after it):
// k requests making directories at once can leave the volume k-1 entries
// over volume_files.
//
// An undo puts back the version this request saw when it wrote back; if
// another request wrote the same file in between, that write is lost too
// (as with two concurrent writers of one file anyway: the last one wins).
// Between the files/rm and the files/cp of an undo, readers see no file.

import (
	"path"

	esys "github.com/tetratelabs/wazero/experimental/sys"

	"github.com/wagi-fcgi/wagi-fcgi/internal/quota"
)

// mfsUsage is an FS's figure of its volume.
type mfsUsage struct {
	known        bool
	bytes, files int64
}

// quotaOn reports whether the FS has a quota.
func (m *mfsFS) quotaOn() bool { return m.quotaBytes > 0 || m.quotaFiles > 0 }

// walk computes the usage of the volume from MFS: every entry counts as one
// file, a file's size as its bytes. It stops early once the count is past
// the file quota (the answer is "full" then, however far past).
func (m *mfsFS) walk() (mfsUsage, esys.Errno) {
	u := mfsUsage{known: true}
	dirs := []string{m.root}
	for len(dirs) > 0 {
		dir := dirs[len(dirs)-1]
		dirs = dirs[:len(dirs)-1]
		var ls struct {
			Entries []struct {
				Name string
				Type int
				Size int64
			}
		}
		errno := m.do(m.api.Request("files/ls", dir).Option("long", true).Option("U", true), &ls, dir)
		if errno == esys.ENOENT && dir != m.root {
			continue // removed meanwhile
		}
		if errno != 0 {
			return mfsUsage{}, errno
		}
		for _, e := range ls.Entries {
			u.files++
			if e.Type == 1 {
				dirs = append(dirs, path.Join(dir, e.Name))
			} else {
				u.bytes += max(e.Size, 0)
			}
		}
		if m.quotaFiles > 0 && u.files > m.quotaFiles {
			break
		}
	}
	return u, 0
}

// charge checks growth (bytes, files; negative values shrink) against the
// quotas and adds it to the figure, walking first if the figure is not
// known. Shrinking is never refused.
func (m *mfsFS) charge(bytes, files int64) esys.Errno {
	if !m.quotaOn() || (bytes == 0 && files == 0) {
		return 0
	}
	m.qmu.Lock()
	defer m.qmu.Unlock()
	if !m.usage.known {
		u, errno := m.walk()
		if errno != 0 {
			return errno
		}
		m.usage = u
	}
	if bytes > 0 && m.quotaBytes > 0 && m.usage.bytes+bytes > m.quotaBytes ||
		files > 0 && m.quotaFiles > 0 && m.usage.files+files > m.quotaFiles {
		return quota.Exceeded()
	}
	m.usage.bytes += bytes
	m.usage.files += files
	return 0
}

// forget drops the figure: the next charge walks again.
func (m *mfsFS) forget() {
	if m.quotaOn() {
		m.qmu.Lock()
		m.usage.known = false
		m.qmu.Unlock()
	}
}

// writeBack runs write, the files/write of size bytes to abs, within the
// quotas: if the volume grows, it is walked before (and the write-back
// refused if it would not fit) and after; if the second walk finds the
// volume over a quota (another request wrote back meanwhile), this
// write-back is undone (the old version put back, a new file removed) and
// refused. Concurrent write-backs near the limit may so all be refused.
func (m *mfsFS) writeBack(abs string, size int64, write func() esys.Errno) esys.Errno {
	if !m.quotaOn() {
		return write()
	}
	var old mfsStat
	var newFile bool
	switch st, errno := m.stat(abs); errno {
	case 0:
		old = st
	case esys.ENOENT:
		newFile = true
	default:
		return errno
	}
	growBytes := m.quotaBytes > 0 && size > old.Size
	growFiles := m.quotaFiles > 0 && newFile
	if !growBytes && !growFiles {
		return write()
	}
	// No walk before the write: the writes into the buffer were checked
	// against this request's figure already, and the walk after the write
	// catches what other requests added meanwhile (a walk of 1,000
	// entries is tens of milliseconds).
	if errno := write(); errno != 0 {
		return errno
	}
	u, errno := m.walk()
	if errno != 0 {
		return errno
	}
	if growBytes && u.bytes > m.quotaBytes || growFiles && u.files > m.quotaFiles {
		m.undo(abs, old.Hash, newFile)
		return quota.Exceeded()
	}
	m.qmu.Lock()
	m.usage = u
	m.qmu.Unlock()
	return 0
}

// undo puts back what was at abs before a write-back: the file with CID
// hash, or nothing. Best effort: if it fails, the volume stays over its
// quota until something is removed.
func (m *mfsFS) undo(abs, hash string, newFile bool) {
	if m.do(m.api.Request("files/rm", abs).Option("force", true), nil, abs) != 0 || newFile || hash == "" {
		return
	}
	_ = m.do(m.api.Request("files/cp", "/ipfs/"+hash, abs), nil, abs)
}
