package ipfs

// MFS volumes: a directory of the kubo node's mutable file system mounted
// read-write into a guest, as a wazero experimental sys.FS.
//
// # Consistency model
//
// Every operation is one or a few kubo RPC calls (files/stat, files/read,
// files/write, files/ls, files/mkdir, files/rm, files/mv, files/touch,
// files/chmod), each with its own timeout (MFSOptions.Timeout). There is no
// cache shared between handles: every open stats the path again.
//
//   - A file opened for writing is buffered in memory: its content is loaded
//     from MFS (files/read) at the first operation that needs it, unless it
//     is new or opened with O_TRUNC, and written back whole at Close (and at
//     Sync/Datasync) with ONE files/write call (create, truncate, parents,
//     flush). Kubo serialises writers of one MFS file, so each write-back
//     replaces the file atomically as MFS readers see it: two requests writing
//     one file never interleave bytes; the last Close wins. The flip side:
//     concurrent read-modify-write (O_APPEND included) from two requests can
//     lose one of the updates.
//   - Until its write-back, a new or changed file is invisible to other
//     handles and to other operations on its path (Stat, Readdir, Rename…),
//     also in the same request. A new file appears at Close; while kubo
//     runs the files/write that creates it, readers may see it empty (kubo
//     links the empty file before writing it), never partly written. O_EXCL
//     is checked at open, not atomically with the creation.
//   - A handle writes back to the path it was opened with: renaming or
//     unlinking a file while it is open for writing does not follow it (the
//     file reappears at its old path at Close if it was written).
//   - A file opened read-only is stat'ed at open and its content fetched
//     whole (files/read) at the first Read and cached for the life of the
//     handle: a snapshot. Files too large to cache (see below) are read with
//     one ranged files/read per Read call instead.
//   - Data written by a request is in MFS (`ipfs files read`) once the guest
//     closes its files. Files it leaves open are written back when wazero
//     closes the module instance: wazero's ModuleInstance.Close (also on
//     proc_exit) closes every file still open in the instance, which calls
//     File.Close here. A failure of that late write-back surfaces only as
//     the error of api.Module.Close (not at all after proc_exit, which
//     closes the instance itself), so a host closes the instance before it
//     answers the request.
//   - Memory: one file held in memory is capped at MFSOptions.MaxFileSize
//     (writes beyond it fail with ERANGE, WASI has no EFBIG); all handles of
//     one FS together hold at most 4×MaxFileSize (approximately: by file
//     length, not capacity).
//   - Directory listings (Readdir) are read once per open/rewind.
//   - O_SYNC, O_DSYNC, O_RSYNC, O_NOFOLLOW and O_NONBLOCK are ignored; Sync
//     writes back at once.
//   - Modes and times: Stat reports the UnixFS mode and mtime if set
//     (defaults 0644 for files, 0755 for directories, mtime 0 for an entry
//     nobody set one on); Chmod and Utimens set them (files/chmod,
//     files/touch, each changes the file's CID); perm arguments of OpenFile
//     and Mkdir are ignored. files/write keeps a file's mtime (none for a
//     new file), so every write-back is followed by a files/touch with the
//     time of the write-back; a new file's handle reports the time it was
//     opened until then. Utimens on a handle also updates what that
//     handle's Stat reports. Inode numbers are a hash of the MFS path
//     (stable while the file is not renamed).
//   - Quotas (MFSOptions.QuotaBytes, QuotaFiles): see mfsquota.go.
//   - Symlink and Link fail with EPERM (MFS volumes have no links); Readlink
//     fails with EINVAL (nothing is a link) or ENOENT.
//
// # Paths
//
// Paths are relative to the mount ("x.txt", "sub/y", "."), a leading slash
// meaning the mount too (wazero passes "/x" for "x" under a directory opened
// as "."); they are cleaned, and any that would leave the mount ("..",
// "a/../../x", "/../x") fail with EPERM before any RPC.
//
// # Errors
//
// Kubo reports errors as text; they are mapped onto errno by their message
// (with the paths taken out first, so that file names cannot fake a reason):
// "file does not exist" → ENOENT, "already exists"/"already has entry" →
// EEXIST, "not a directory" → ENOTDIR, "was not a file"/"is a directory" →
// EISDIR, "directory not empty" → ENOTEMPTY, anything else, including an
// unreachable node or a timeout, → EIO. Operations whose POSIX result MFS
// would not give (rmdir of a non-empty directory, rename over a directory or
// into itself, open of a directory for writing) are checked here first.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"mime/multipart"
	"net/textproto"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/kubo/client/rpc"
	esys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/sys"
)

// Defaults of MFSOptions.
const (
	DefaultMFSTimeout     = 30 * time.Second
	DefaultMFSMaxFileSize = 64 << 20
)

// mfsBudgetFactor times MaxFileSize is what all handles of one FS may hold.
const mfsBudgetFactor = 4

// mfsMaxErrBody bounds how much of an erring response's body is kept.
const mfsMaxErrBody = 4 << 10

// MFSOptions tunes NewMFS. Zero fields take the defaults.
type MFSOptions struct {
	// Timeout bounds each RPC call to the node (default 30 s).
	Timeout time.Duration
	// MaxFileSize is the largest file a handle holds in memory (default
	// 64 MiB): files opened for writing cannot grow past it (ERANGE).
	MaxFileSize int64
	// QuotaBytes and QuotaFiles bound the volume: the bytes of its files
	// and its number of entries (files and directories); 0 = no bound.
	// Past them, writes fail with ENOSPC (see mfsquota.go).
	QuotaBytes, QuotaFiles int64
}

// NewMFS returns a filesystem for wazero serving the MFS directory root (an
// absolute MFS path such as "/wagi/app") of the node c talks to, creating
// it and its parents if missing. It fails if root exists and is not a
// directory (ErrNotFile), or if the node cannot be reached (ErrUnavailable,
// ErrTimeout). At most one MFSOptions may be given. The FS is safe for
// concurrent use by several module instances; see the comment at the top of
// mfs.go for its consistency model.
func NewMFS(c *Client, root string, opts ...MFSOptions) (esys.FS, error) {
	if c == nil {
		return nil, errors.New("ipfs: NewMFS: nil client")
	}
	if len(opts) > 1 {
		return nil, errors.New("ipfs: NewMFS: more than one MFSOptions")
	}
	var o MFSOptions
	if len(opts) == 1 {
		o = opts[0]
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultMFSTimeout
	}
	if o.MaxFileSize <= 0 {
		o.MaxFileSize = DefaultMFSMaxFileSize
	}
	if !path.IsAbs(root) || strings.IndexByte(root, 0) >= 0 {
		return nil, fmt.Errorf("ipfs: MFS root %q is not an absolute path", root)
	}
	m := &mfsFS{
		api:     c.API(),
		root:    path.Clean(root),
		timeout: o.Timeout,
		maxFile: o.MaxFileSize,
		budget:  mfsBudgetFactor * o.MaxFileSize,

		quotaBytes: max(o.QuotaBytes, 0),
		quotaFiles: max(o.QuotaFiles, 0),
	}
	// mkdir -p succeeds on an existing directory and fails with "file
	// already exists" on a file: one call for all cases.
	ctx, cancel := context.WithTimeout(context.Background(), m.timeout)
	defer cancel()
	err := m.call(ctx, m.api.Request("files/mkdir", m.root).Option("parents", true), nil)
	switch m.errno(ctx, err, m.root) {
	case 0:
		return m, nil
	case esys.EEXIST, esys.ENOTDIR:
		return nil, fmt.Errorf("%w: MFS root %s exists and is not a directory: %v", ErrNotFile, m.root, err)
	}
	return nil, fmt.Errorf("ipfs: creating MFS root %s: %w", m.root, classify(ctx, err))
}

// mfsFS is the esys.FS of NewMFS. Apart from the memory accounting it is
// stateless, so instances may share it.
type mfsFS struct {
	esys.UnimplementedFS

	api     *rpc.HttpApi
	root    string // clean absolute MFS path
	timeout time.Duration
	maxFile int64
	budget  int64
	used    atomic.Int64 // bytes held by all open handles

	quotaBytes, quotaFiles int64 // see mfsquota.go
	qmu                    sync.Mutex
	usage                  mfsUsage
}

// mfsStat is the JSON of files/stat.
type mfsStat struct {
	Size       int64
	Blocks     int
	Type       string // "file", "directory", "symlink"
	Mode       json.RawMessage
	Mtime      int64
	MtimeNsecs int64
	Hash       string
}

func (s *mfsStat) isDir() bool { return s.Type == "directory" }

// resolve turns a path relative to the mount into an MFS path. wantDir is
// true if it ends with a slash (it must then name a directory).
func (m *mfsFS) resolve(name string) (abs, rel string, wantDir bool, errno esys.Errno) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", "", false, esys.EINVAL
	}
	// A leading slash means the mount's root: wazero joins paths under a
	// directory opened as "." (not the preopen) to "" + "/" + name, and its
	// own sysfs.DirFS and AdaptFS read them so.
	name = strings.TrimLeft(name, "/")
	rel = path.Clean(name)
	if rel == ".." || strings.HasPrefix(rel, "../") {
		return "", "", false, esys.EPERM
	}
	return path.Join(m.root, rel), rel, rel != "." && strings.HasSuffix(name, "/"), 0
}

// ctx returns the context of one RPC call.
func (m *mfsFS) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), m.timeout)
}

// call sends req, decodes the JSON answer into out (unless nil) and reads
// the rest of the body: commands like files/rm report their reasons there,
// with only a generic error in the trailer, so an erring body is folded into
// the error.
func (m *mfsFS) call(ctx context.Context, req rpc.RequestBuilder, out any) error {
	resp, err := req.Send(ctx)
	if err != nil {
		return err
	}
	if resp.Error != nil {
		return resp.Error
	}
	defer resp.Cancel()
	if out != nil {
		if err := json.NewDecoder(resp.Output).Decode(out); err != nil {
			return err
		}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Output, mfsMaxErrBody))
	if err != nil {
		if len(bytes.TrimSpace(body)) > 0 {
			return fmt.Errorf("%w: %s", err, bytes.TrimSpace(body))
		}
		return err
	}
	return nil
}

// do runs one RPC call with its own timeout and maps the result to errno;
// paths are the MFS paths the call names (see errno).
func (m *mfsFS) do(req rpc.RequestBuilder, out any, paths ...string) esys.Errno {
	ctx, cancel := m.ctx()
	defer cancel()
	return m.errno(ctx, m.call(ctx, req, out), paths...)
}

// stat runs files/stat.
func (m *mfsFS) stat(abs string) (mfsStat, esys.Errno) {
	var st mfsStat
	errno := m.do(m.api.Request("files/stat", abs), &st, abs)
	return st, errno
}

// errno maps an error of a call about paths onto errno. The paths and their
// ancestors are cut out of the message first, so that a file named "is a
// directory" does not turn ENOENT into EISDIR.
func (m *mfsFS) errno(ctx context.Context, err error, paths ...string) esys.Errno {
	if err == nil {
		return 0
	}
	if cerr := classify(ctx, err); errors.Is(cerr, ErrUnavailable) || errors.Is(cerr, ErrTimeout) {
		return esys.EIO
	}
	msg := err.Error()
	var cut []string
	for _, p := range paths {
		for p != "/" && p != "." && p != "" {
			cut = append(cut, p, strings.TrimPrefix(p, "/"))
			p = path.Dir(p)
		}
	}
	sort.Slice(cut, func(i, j int) bool { return len(cut[i]) > len(cut[j]) })
	for _, c := range cut {
		if strings.Contains(c, "/") { // not a bare top-level name like "w"
			msg = strings.ReplaceAll(msg, c, "")
		}
	}
	msg = strings.ToLower(msg)
	has := func(subs ...string) bool {
		for _, s := range subs {
			if strings.Contains(msg, s) {
				return true
			}
		}
		return false
	}
	switch {
	case has("directory not empty"):
		return esys.ENOTEMPTY
	case has("not a directory", "expected *mfs.directory"):
		return esys.ENOTDIR
	case has("is a directory", "was not a file", "not a file"):
		return esys.EISDIR
	case has("does not exist", "no such file"):
		return esys.ENOENT
	case has("already exists", "already has entry", "file exists"):
		return esys.EEXIST
	}
	return esys.EIO
}

// inode is a stable number for an MFS path.
func inode(abs string) sys.Inode {
	h := fnv.New64a()
	_, _ = h.Write([]byte(abs))
	return h.Sum64()
}

// toStat converts files/stat output.
func toStat(abs string, s *mfsStat) sys.Stat_t {
	perm := fs.FileMode(0o644)
	var typ fs.FileMode
	switch s.Type {
	case "directory":
		typ, perm = fs.ModeDir, 0o755
	case "symlink":
		typ = fs.ModeSymlink
	}
	if mode, ok := parseMode(s.Mode); ok {
		perm = mode & fs.ModePerm
	}
	size := s.Size
	if typ == fs.ModeDir {
		size = 0
	}
	t := s.Mtime*int64(time.Second) + s.MtimeNsecs
	return sys.Stat_t{Ino: inode(abs), Mode: typ | perm, Nlink: 1, Size: size, Atim: t, Mtim: t, Ctim: t}
}

// parseMode reads the Mode of files/stat: an octal string ("0644") or a
// number.
func parseMode(raw json.RawMessage) (fs.FileMode, bool) {
	if len(raw) == 0 {
		return 0, false
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		v, err := strconv.ParseUint(s, 8, 32)
		return fs.FileMode(v), err == nil && v != 0
	}
	var n uint32
	if json.Unmarshal(raw, &n) == nil {
		return fs.FileMode(n), n != 0
	}
	return 0, false
}

// reserve takes n bytes of the FS's memory budget.
func (m *mfsFS) reserve(n int64) bool {
	if m.used.Add(n) > m.budget {
		m.used.Add(-n)
		return false
	}
	return true
}

// OpenFile implements esys.FS.
func (m *mfsFS) OpenFile(name string, flag esys.Oflag, _ fs.FileMode) (esys.File, esys.Errno) {
	abs, rel, wantDir, errno := m.resolve(name)
	if errno != 0 {
		return nil, errno
	}
	access := flag & (esys.O_RDONLY | esys.O_WRONLY | esys.O_RDWR)
	writable := access == esys.O_WRONLY || access == esys.O_RDWR
	creat := flag&esys.O_CREAT != 0
	if rel == "." {
		// The preopen: wazero opens it lazily and panics on any errno but
		// ENOENT, so no RPC here; the root exists since NewMFS.
		switch {
		case creat && flag&esys.O_EXCL != 0:
			return nil, esys.EEXIST
		case writable || creat:
			return nil, esys.EISDIR
		}
		return newDir(m, abs, nil), 0
	}

	st, errno := m.stat(abs)
	exists := errno == 0
	switch {
	case errno == esys.ENOENT && creat && !wantDir:
		if errno := m.checkParent(abs, rel); errno != 0 {
			return nil, errno
		}
		if errno := m.charge(0, 1); errno != 0 {
			return nil, errno
		}
	case errno != 0:
		return nil, errno
	case creat && flag&esys.O_EXCL != 0:
		return nil, esys.EEXIST
	case st.isDir():
		if writable || creat || flag&esys.O_TRUNC != 0 {
			return nil, esys.EISDIR
		}
		s := toStat(abs, &st)
		return newDir(m, abs, &s), 0
	case wantDir || flag&esys.O_DIRECTORY != 0:
		return nil, esys.ENOTDIR
	}

	f := &mfsFile{
		fs:       m,
		path:     abs,
		readable: access != esys.O_WRONLY,
		writable: writable,
		append:   flag&esys.O_APPEND != 0,
	}
	f.seekFunc = f.seek
	if exists {
		f.st = toStat(abs, &st)
	} else {
		// Created now (in MFS at the write-back, which stamps the same
		// kind of time): not the epoch.
		now := time.Now().UnixNano()
		f.st = sys.Stat_t{Ino: inode(abs), Mode: 0o644, Nlink: 1, Atim: now, Mtim: now, Ctim: now}
	}
	f.size = f.st.Size
	if exists && flag&esys.O_TRUNC != 0 && f.size > 0 && writable {
		_ = m.charge(-f.size, 0)
	}
	if !exists || flag&esys.O_TRUNC != 0 {
		// New or truncated: nothing to load; written back at Close even if
		// never written (creation, or truncation of a non-empty file).
		f.loaded = true
		f.dirty = !exists || f.size > 0
		f.size = 0
	}
	return f, 0
}

// checkParent reports why a new file at abs cannot be created: its parent
// is missing (ENOENT) or a file (ENOTDIR). files/write would create parents.
func (m *mfsFS) checkParent(abs, rel string) esys.Errno {
	if path.Dir(rel) == "." {
		return 0 // the root
	}
	st, errno := m.stat(path.Dir(abs))
	if errno != 0 {
		return errno
	}
	if !st.isDir() {
		return esys.ENOTDIR
	}
	return 0
}

// Lstat implements esys.FS. MFS volumes have no symlinks to not follow.
func (m *mfsFS) Lstat(name string) (sys.Stat_t, esys.Errno) { return m.Stat(name) }

// Stat implements esys.FS.
func (m *mfsFS) Stat(name string) (sys.Stat_t, esys.Errno) {
	abs, _, wantDir, errno := m.resolve(name)
	if errno != 0 {
		return sys.Stat_t{}, errno
	}
	st, errno := m.stat(abs)
	if errno != 0 {
		return sys.Stat_t{}, errno
	}
	if wantDir && !st.isDir() {
		return sys.Stat_t{}, esys.ENOTDIR
	}
	return toStat(abs, &st), 0
}

// Mkdir implements esys.FS; perm is ignored.
func (m *mfsFS) Mkdir(name string, _ fs.FileMode) esys.Errno {
	abs, rel, _, errno := m.resolve(name)
	if errno != 0 {
		return errno
	}
	if rel == "." {
		return esys.EEXIST
	}
	if errno := m.charge(0, 1); errno != 0 {
		return errno
	}
	errno = m.do(m.api.Request("files/mkdir", abs), nil, abs)
	if errno != 0 {
		_ = m.charge(0, -1)
	}
	return errno
}

// Chmod implements esys.FS with files/chmod (permission bits only).
func (m *mfsFS) Chmod(name string, perm fs.FileMode) esys.Errno {
	abs, _, _, errno := m.resolve(name)
	if errno != 0 {
		return errno
	}
	mode := "0" + strconv.FormatUint(uint64(perm&fs.ModePerm), 8)
	return m.do(m.api.Request("files/chmod", mode, abs), nil, abs)
}

// Utimens implements esys.FS with files/touch (mtime only; atim is not
// stored).
func (m *mfsFS) Utimens(name string, _, mtim int64) esys.Errno {
	abs, _, _, errno := m.resolve(name)
	if errno != 0 {
		return errno
	}
	return m.touch(abs, mtim)
}

func (m *mfsFS) touch(abs string, mtim int64) esys.Errno {
	if mtim == esys.UTIME_OMIT {
		_, errno := m.stat(abs)
		return errno
	}
	sec, nsec := mtim/int64(time.Second), mtim%int64(time.Second)
	if nsec < 0 {
		sec, nsec = sec-1, nsec+int64(time.Second)
	}
	req := m.api.Request("files/touch", abs).Option("mtime", sec)
	if nsec != 0 {
		req = req.Option("mtime-nsecs", nsec)
	}
	return m.do(req, nil, abs)
}

// Rename implements esys.FS with POSIX semantics on top of files/mv (which
// moves into an existing directory instead of replacing it).
func (m *mfsFS) Rename(from, to string) esys.Errno {
	src, srcRel, srcWantDir, errno := m.resolve(from)
	if errno != 0 {
		return errno
	}
	dst, dstRel, dstWantDir, errno := m.resolve(to)
	if errno != 0 {
		return errno
	}
	if srcRel == "." || dstRel == "." {
		return esys.EINVAL // renaming the mount itself, or onto it
	}
	sst, errno := m.stat(src)
	if errno != 0 {
		return errno
	}
	if (srcWantDir || dstWantDir) && !sst.isDir() {
		return esys.ENOTDIR
	}
	if src == dst {
		return 0
	}
	if strings.HasPrefix(dst, src+"/") {
		return esys.EINVAL // into itself; files/mv would lose it
	}
	dstSt, errno := m.stat(dst)
	switch {
	case errno == esys.ENOENT:
	case errno != 0:
		return errno
	case dstSt.isDir() && !sst.isDir():
		return esys.EISDIR
	case dstSt.isDir():
		if dstSt.Blocks > 0 {
			return esys.ENOTEMPTY
		}
		if errno := m.do(m.api.Request("files/rm", dst).Option("recursive", true), nil, dst); errno != 0 {
			return errno
		}
	case sst.isDir():
		return esys.ENOTDIR
	}
	m.forget() // an entry may have been replaced above, or below
	return m.do(m.api.Request("files/mv", src, dst), nil, src, dst)
}

// Rmdir implements esys.FS: stat (a directory, with no links), then rm.
func (m *mfsFS) Rmdir(name string) esys.Errno {
	abs, rel, _, errno := m.resolve(name)
	if errno != 0 {
		return errno
	}
	if rel == "." {
		return esys.EINVAL
	}
	st, errno := m.stat(abs)
	switch {
	case errno != 0:
		return errno
	case !st.isDir():
		return esys.ENOTDIR
	case st.Blocks > 0:
		return esys.ENOTEMPTY
	}
	m.forget()
	return m.do(m.api.Request("files/rm", abs).Option("recursive", true), nil, abs)
}

// Unlink implements esys.FS with files/rm, which refuses directories.
func (m *mfsFS) Unlink(name string) esys.Errno {
	abs, rel, wantDir, errno := m.resolve(name)
	if errno != 0 {
		return errno
	}
	if rel == "." {
		return esys.EISDIR
	}
	if wantDir {
		st, errno := m.stat(abs)
		switch {
		case errno != 0:
			return errno
		case st.isDir():
			return esys.EISDIR
		}
		return esys.ENOTDIR
	}
	m.forget()
	return m.do(m.api.Request("files/rm", abs), nil, abs)
}

// Link implements esys.FS: MFS volumes have no hard links.
func (m *mfsFS) Link(string, string) esys.Errno { return esys.EPERM }

// Symlink implements esys.FS: MFS volumes have no symlinks.
func (m *mfsFS) Symlink(string, string) esys.Errno { return esys.EPERM }

// Readlink implements esys.FS: nothing is a symlink (EINVAL), if it exists.
func (m *mfsFS) Readlink(name string) (string, esys.Errno) {
	abs, _, _, errno := m.resolve(name)
	if errno != 0 {
		return "", errno
	}
	if _, errno := m.stat(abs); errno != 0 {
		return "", errno
	}
	return "", esys.EINVAL
}

// unimplementedFile holds esys.UnimplementedFile one level down, so that
// an embedded seekFunc's Seek takes precedence over its.
type unimplementedFile struct{ esys.UnimplementedFile }

// seekFunc gives a file the Seek method of esys.File. go vet's stdmethods
// check wants every method Seek(int64, int) to be io.Seeker's (returning
// error, not Errno); spelling the offset as a type parameter keeps the check
// from matching, and seekFunc[int64] has exactly the method esys.File needs.
type seekFunc[O ~int64] func(offset O, whence int) (O, esys.Errno)

// Seek implements esys.File.
func (s seekFunc[O]) Seek(offset O, whence int) (O, esys.Errno) { return s(offset, whence) }

var (
	_ esys.File = (*mfsDir)(nil)
	_ esys.File = (*mfsFile)(nil)
)

// mfsDir is an open directory. Create it with newDir.
type mfsDir struct {
	unimplementedFile
	seekFunc[int64]

	fs   *mfsFS
	path string

	mu      sync.Mutex
	st      *sys.Stat_t   // nil until needed (the root is opened without RPC)
	entries []esys.Dirent // nil until the first Readdir after open/rewind
	closed  bool
}

// Ino implements esys.File.
func (d *mfsDir) Ino() (sys.Inode, esys.Errno) { return inode(d.path), 0 }

// IsDir implements esys.File.
func (d *mfsDir) IsDir() (bool, esys.Errno) { return true, 0 }

// SetAppend implements esys.File.
func (d *mfsDir) SetAppend(bool) esys.Errno { return esys.EISDIR }

// Stat implements esys.File.
func (d *mfsDir) Stat() (sys.Stat_t, esys.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return sys.Stat_t{}, esys.EBADF
	}
	if d.st == nil {
		st, errno := d.fs.stat(d.path)
		if errno != 0 {
			return sys.Stat_t{}, errno
		}
		if !st.isDir() {
			return sys.Stat_t{}, esys.ENOTDIR
		}
		s := toStat(d.path, &st)
		d.st = &s
	}
	return *d.st, 0
}

// Read implements esys.File.
func (d *mfsDir) Read([]byte) (int, esys.Errno) { return 0, esys.EISDIR }

// Pread implements esys.File.
func (d *mfsDir) Pread([]byte, int64) (int, esys.Errno) { return 0, esys.EISDIR }

// Write implements esys.File.
func (d *mfsDir) Write([]byte) (int, esys.Errno) { return 0, esys.EISDIR }

// Pwrite implements esys.File.
func (d *mfsDir) Pwrite([]byte, int64) (int, esys.Errno) { return 0, esys.EISDIR }

// Truncate implements esys.File.
func (d *mfsDir) Truncate(int64) esys.Errno { return esys.EISDIR }

// seek is Seek: only a rewind, which re-lists at the next Readdir.
func (d *mfsDir) seek(off int64, whence int) (int64, esys.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, esys.EBADF
	}
	if off != 0 || whence != io.SeekStart {
		return 0, esys.EINVAL
	}
	d.entries = nil
	return 0, 0
}

// Readdir implements esys.File: one files/ls (long, so that directories
// have Type 1) per open or rewind, then served from memory.
func (d *mfsDir) Readdir(n int) ([]esys.Dirent, esys.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, esys.EBADF
	}
	if d.entries == nil {
		var ls struct {
			Entries []struct {
				Name string
				Type int
			}
		}
		if errno := d.fs.do(d.fs.api.Request("files/ls", d.path).Option("long", true), &ls, d.path); errno != 0 {
			return nil, errno
		}
		d.entries = make([]esys.Dirent, 0, len(ls.Entries))
		for _, e := range ls.Entries {
			if e.Name == "" || e.Name == "." || e.Name == ".." || strings.ContainsRune(e.Name, '/') {
				continue
			}
			var typ fs.FileMode
			if e.Type == 1 {
				typ = fs.ModeDir
			}
			d.entries = append(d.entries, esys.Dirent{Ino: inode(path.Join(d.path, e.Name)), Name: e.Name, Type: typ})
		}
	}
	k := len(d.entries)
	if n > 0 && n < k {
		k = n
	}
	out := d.entries[:k:k]
	d.entries = d.entries[k:]
	return out, 0
}

// Utimens implements esys.File.
func (d *mfsDir) Utimens(_, mtim int64) esys.Errno {
	if errno := d.fs.touch(d.path, mtim); errno != 0 {
		return errno
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.st != nil && mtim != esys.UTIME_OMIT {
		d.st.Atim, d.st.Mtim, d.st.Ctim = mtim, mtim, mtim
	}
	return 0
}

// Close implements esys.File.
func (d *mfsDir) Close() esys.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed, d.entries = true, nil
	return 0
}

// newDir returns a handle for the directory at abs; st may be nil.
func newDir(m *mfsFS, abs string, st *sys.Stat_t) *mfsDir {
	d := &mfsDir{fs: m, path: abs, st: st}
	d.seekFunc = d.seek
	return d
}

// mfsFile is an open regular file; see the comment at the top of this file
// for its model.
type mfsFile struct {
	unimplementedFile
	seekFunc[int64]

	fs       *mfsFS
	path     string
	readable bool
	writable bool

	mu       sync.Mutex
	append   bool
	st       sys.Stat_t // from the open; Size is not kept up to date
	size     int64      // current size (len(data) once loaded)
	data     []byte
	loaded   bool  // data holds the whole file
	ranged   bool  // too large to load: reads go to MFS one by one
	dirty    bool  // data must be written back
	reserved int64 // bytes of the FS budget this handle holds
	off      int64
	closed   bool
}

// Ino implements esys.File.
func (f *mfsFile) Ino() (sys.Inode, esys.Errno) { return f.st.Ino, 0 }

// IsAppend implements esys.File.
func (f *mfsFile) IsAppend() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.append
}

// SetAppend implements esys.File.
func (f *mfsFile) SetAppend(enable bool) esys.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return esys.EBADF
	}
	f.append = enable
	return 0
}

// Stat implements esys.File.
func (f *mfsFile) Stat() (sys.Stat_t, esys.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return sys.Stat_t{}, esys.EBADF
	}
	st := f.st
	st.Size = f.size
	return st, 0
}

// grow makes the handle's reservation cover n bytes.
func (f *mfsFile) grow(n int64) esys.Errno {
	if n > f.fs.maxFile {
		return esys.ERANGE
	}
	if n > f.reserved {
		if !f.fs.reserve(n - f.reserved) {
			return esys.ERANGE
		}
		f.reserved = n
	}
	return 0
}

// load reads the whole file into data (files/read). ERANGE if it does not
// fit in MaxFileSize or the FS budget.
func (f *mfsFile) load() esys.Errno {
	if f.loaded {
		return 0
	}
	if f.size == 0 { // nothing to fetch (as of the open)
		f.loaded = true
		return 0
	}
	if errno := f.grow(f.size); errno != 0 {
		return errno
	}
	ctx, cancel := f.fs.ctx()
	defer cancel()
	resp, err := f.fs.api.Request("files/read", f.path).Send(ctx)
	if err == nil && resp.Error != nil {
		err = resp.Error
	}
	if err != nil {
		return f.fs.errno(ctx, err, f.path)
	}
	defer resp.Cancel()
	buf := bytes.NewBuffer(make([]byte, 0, f.size+bytes.MinRead))
	if _, err := buf.ReadFrom(io.LimitReader(resp.Output, f.fs.maxFile+1)); err != nil {
		return f.fs.errno(ctx, err, f.path)
	}
	if errno := f.grow(int64(buf.Len())); errno != 0 { // it grew since the stat
		return errno
	}
	f.data, f.size, f.loaded = buf.Bytes(), int64(buf.Len()), true
	return 0
}

// readAt reads from the loaded data or, for files too large to hold, with
// one ranged files/read.
func (f *mfsFile) readAt(p []byte, off int64) (int, esys.Errno) {
	if !f.readable || f.closed {
		return 0, esys.EBADF
	}
	if len(p) == 0 {
		return 0, 0
	}
	if !f.loaded && !f.ranged {
		switch errno := f.load(); errno {
		case 0:
		case esys.ERANGE:
			f.ranged = true
		default:
			return 0, errno
		}
	}
	if f.loaded {
		if off >= int64(len(f.data)) {
			return 0, 0
		}
		return copy(p, f.data[off:]), 0
	}
	if off >= f.size {
		return 0, 0
	}
	ctx, cancel := f.fs.ctx()
	defer cancel()
	resp, err := f.fs.api.Request("files/read", f.path).Option("offset", off).Option("count", len(p)).Send(ctx)
	if err == nil && resp.Error != nil {
		err = resp.Error
	}
	if err != nil {
		return 0, f.fs.errno(ctx, err, f.path)
	}
	defer resp.Close() // drains at most len(p) bytes: the connection is reused
	n, err := io.ReadFull(resp.Output, p)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return n, f.fs.errno(ctx, err, f.path)
	}
	return n, 0
}

// Read implements esys.File.
func (f *mfsFile) Read(p []byte) (int, esys.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, errno := f.readAt(p, f.off)
	f.off += int64(n)
	return n, errno
}

// Pread implements esys.File.
func (f *mfsFile) Pread(p []byte, off int64) (int, esys.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off < 0 {
		return 0, esys.EINVAL
	}
	return f.readAt(p, off)
}

// seek is Seek.
func (f *mfsFile) seek(off int64, whence int) (int64, esys.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, esys.EBADF
	}
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += f.off
	case io.SeekEnd:
		off += f.size
	default:
		return 0, esys.EINVAL
	}
	if off < 0 {
		return 0, esys.EINVAL
	}
	f.off = off
	return off, 0
}

// writeAt writes p at off into the buffer, loading it first.
func (f *mfsFile) writeAt(p []byte, off int64) (int, esys.Errno) {
	if !f.writable || f.closed {
		return 0, esys.EBADF
	}
	if errno := f.load(); errno != 0 {
		return 0, errno
	}
	end := off + int64(len(p))
	if end < off {
		return 0, esys.EINVAL
	}
	if end > int64(len(f.data)) {
		if errno := f.grow(end); errno != 0 {
			return 0, errno
		}
		if errno := f.fs.charge(end-int64(len(f.data)), 0); errno != 0 {
			return 0, errno
		}
		f.resize(end)
	}
	copy(f.data[off:], p)
	f.dirty = true
	return len(p), 0
}

// resize sets len(data) to n, zeroing any new bytes.
func (f *mfsFile) resize(n int64) {
	if n <= int64(cap(f.data)) {
		old := len(f.data)
		f.data = f.data[:n]
		if int(n) > old {
			clear(f.data[old:])
		}
	} else {
		f.data = append(f.data, make([]byte, int(n)-len(f.data))...)
	}
	f.size = n
}

// Write implements esys.File.
func (f *mfsFile) Write(p []byte) (int, esys.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	off := f.off
	if f.append && f.writable && !f.closed {
		if errno := f.load(); errno != 0 {
			return 0, errno
		}
		off = int64(len(f.data))
	}
	n, errno := f.writeAt(p, off)
	if errno == 0 {
		f.off = off + int64(n)
	}
	return n, errno
}

// Pwrite implements esys.File.
func (f *mfsFile) Pwrite(p []byte, off int64) (int, esys.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off < 0 {
		return 0, esys.EINVAL
	}
	return f.writeAt(p, off)
}

// Truncate implements esys.File.
func (f *mfsFile) Truncate(size int64) esys.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case size < 0:
		return esys.EINVAL
	case !f.writable || f.closed:
		return esys.EBADF
	case size == 0:
		f.loaded = true // no need to fetch what is cut off
	}
	if errno := f.load(); errno != 0 {
		return errno
	}
	if errno := f.grow(size); errno != 0 {
		return errno
	}
	if errno := f.fs.charge(size-int64(len(f.data)), 0); errno != 0 {
		return errno
	}
	f.resize(size)
	f.dirty = true
	return 0
}

// flush writes a dirty buffer back with one files/write.
func (f *mfsFile) flush() esys.Errno {
	if !f.dirty {
		return 0
	}
	// A concurrent creator of the same new file can make files/write fail
	// with "directory already has entry by that name"; the file exists then,
	// so retrying writes over it.
	write := func() (errno esys.Errno) {
		for range 3 {
			body, ctype := multipartFile(f.data)
			req := f.fs.api.Request("files/write", f.path).
				Option("create", true).Option("truncate", true).Option("parents", true).Option("flush", true).
				Header("Content-Type", ctype).Body(body)
			if errno = f.fs.do(req, nil, f.path); errno != esys.EEXIST {
				break
			}
		}
		return errno
	}
	if errno := f.fs.writeBack(f.path, int64(len(f.data)), write); errno != 0 {
		return errno
	}
	f.dirty = false
	// files/write leaves the UnixFS mtime as it was (unset for a new
	// file: it would read as the epoch); a write changes it.
	now := time.Now().UnixNano()
	if errno := f.fs.touch(f.path, now); errno != 0 {
		return errno
	}
	f.setTimes(now)
	return 0
}

// setTimes records a new mtime in the handle's stat (MFS keeps one time,
// which Stat reports as atime, mtime and ctime).
func (f *mfsFile) setTimes(mtim int64) {
	f.st.Atim, f.st.Mtim, f.st.Ctim = mtim, mtim, mtim
}

// multipartFile is data as the one-file multipart body files/write wants
// (what RequestBuilder.FileBody makes, without its extra "version" call and
// without copying data).
func multipartFile(data []byte) (io.Reader, string) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	h := make(textproto.MIMEHeader)
	h.Set("Content-Disposition", `form-data; name="file"; filename="file"`)
	h.Set("Content-Type", "application/octet-stream")
	_, _ = mw.CreatePart(h) // writes to buf: cannot fail
	n := buf.Len()
	_ = mw.Close()
	b := buf.Bytes()
	return io.MultiReader(bytes.NewReader(b[:n]), bytes.NewReader(data), bytes.NewReader(b[n:])), mw.FormDataContentType()
}

// Sync implements esys.File: writes the buffer back now.
func (f *mfsFile) Sync() esys.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return esys.EBADF
	}
	return f.flush()
}

// Datasync implements esys.File.
func (f *mfsFile) Datasync() esys.Errno { return f.Sync() }

// Utimens implements esys.File: writes pending data back first, so that the
// file exists and the time is not overwritten.
func (f *mfsFile) Utimens(_, mtim int64) esys.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return esys.EBADF
	}
	if errno := f.flush(); errno != 0 {
		return errno
	}
	if errno := f.fs.touch(f.path, mtim); errno != 0 {
		return errno
	}
	if mtim != esys.UTIME_OMIT {
		f.setTimes(mtim) // so that fstat on this handle sees it
	}
	return 0
}

// Close implements esys.File: writes a dirty buffer back and frees it. The
// handle is closed even if that fails (EIO); a second Close returns 0.
func (f *mfsFile) Close() esys.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0
	}
	errno := f.flush()
	f.closed, f.data = true, nil
	f.fs.used.Add(-f.reserved)
	f.reserved = 0
	return errno
}
