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
//   - Since the data reaches MFS only at the write-back (Close, Sync), the
//     write-back that makes the volume larger walks it again first and is
//     refused (the Close or Sync fails with ENOSPC, the file is left as it
//     was) if the fresh figure, which includes what other requests have
//     written back meanwhile, plus this file's growth would pass a quota.
//   - Removing anything (unlink, rmdir, rename over an entry) forgets the
//     figure, so the next check walks again and sees the room it freed.
//
// Two requests writing back at the same moment can both pass their check
// against the same walk: the overshoot is bounded by what the other
// concurrent write-backs add, at most (k-1) files and (k-1) × min(quota,
// MaxFileSize) bytes for k requests writing back to the volume at once.

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

// checkWriteBack is the check before a write-back of size bytes to abs:
// against a fresh walk, if the volume grows.
func (m *mfsFS) checkWriteBack(abs string, size int64) esys.Errno {
	if !m.quotaOn() {
		return 0
	}
	var old int64
	var newFile int64
	switch st, errno := m.stat(abs); errno {
	case 0:
		old = st.Size
	case esys.ENOENT:
		newFile = 1
	default:
		return errno
	}
	if size <= old && newFile == 0 {
		return 0
	}
	u, errno := m.walk()
	if errno != 0 {
		return errno
	}
	if m.quotaBytes > 0 && size > old && u.bytes+size-old > m.quotaBytes ||
		m.quotaFiles > 0 && newFile > 0 && u.files+1 > m.quotaFiles {
		return quota.Exceeded()
	}
	return 0
}
