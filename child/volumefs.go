package child

// A jailed directory file system for volumes.
//
// wazero's own directory mounts (sysfs.DirFS, FSConfig.WithDirMount) resolve
// guest paths on the host with ordinary symlink following, so a symlink
// inside a volume that points outside (link -> /etc/passwd) is followed. The
// volume file system below never lets a path operation reach anything that is
// not beneath the volume's directory:
//
//   - Every path is resolved with openat2(2) from a descriptor of the volume
//     directory with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS.
//     The kernel itself refuses `..` escapes, absolute symlinks and symlinks of
//     any kind, in every component including the last, atomically: there is no
//     window between a check and the use (Linux >= 5.6).
//   - Operations that name an entry of a directory (mkdir, rmdir, unlink,
//     rename, link) first open that parent directory this way and then use the
//     *at system call on the base name. Those calls do not follow a symlink in
//     the base name (trailing slashes are handled so that they never make the
//     kernel follow one either).
//   - Operations that follow the last component (open, stat, chmod, utimens)
//     open the target itself this way (O_PATH when nothing else is needed) and
//     then act on that descriptor: fstat, or chmod/utimensat of the magic link
//     /proc/self/fd/N, which names exactly the inode the descriptor pins.
//   - A file the guest opens is the wazero file that sysfs.DirFS("/proc/self/fd")
//     opens for "N", with N the pinned descriptor. It is wazero's own file type
//     (reads, writes, readdir, seek, poll, append mode all behave as with
//     WithDirMount) and it never names a host path: when wazero reopens it (for
//     append mode, or to rewind a directory) it reopens /proc/self/fd/N, which
//     is the same inode for as long as the file is open. N is closed with it.
//
// Policy:
//   - Symlinks are never followed, whether they stay inside the volume or not,
//     in any component: such operations fail with ELOOP (what O_NOFOLLOW and
//     RESOLVE_NO_SYMLINKS give).
//   - Lstat of a symlink is allowed (it reports the link, following nothing),
//     so listings stay consistent. Readlink is refused with EPERM: the target
//     string is the host administrator's (often an absolute host path) and is
//     of no use to the guest since the link cannot be followed. Readlink of a
//     non-symlink fails with EINVAL as usual.
//   - Symlink (creating one) fails with EPERM. Rename and Link of a symlink
//     (moving or duplicating one) fail with EPERM too, so a guest can neither
//     create nor move symlinks; it may Unlink one, or rename onto one (which
//     replaces the link and follows nothing).
//   - Link (hard links) is otherwise allowed: both names are resolved in the
//     volume and a hard link to a directory is refused by the kernel, so it
//     cannot reach outside.
//   - Paths: "", "." and "/" name the volume root. A leading "/" is taken as
//     relative to the root (wazero itself sends "/name" when a directory that
//     was opened as "." is used as the base of a path). A path that would
//     escape after cleaning ("..", "../x", "a/../../x") fails with EPERM, which
//     is what wazero answers for such a path itself.
//   - Read-only volumes: OpenFile with write access, O_CREAT or O_TRUNC, and
//     Mkdir, Rename, Rmdir, Unlink, Link, Symlink, Chmod and Utimens fail with
//     EROFS (O_DIRECTORY with write access with EISDIR, like sysfs.ReadFS).
//     Files opened from a read-only volume answer like sysfs.ReadFS's:
//     Write, Pwrite and Truncate fail with EBADF (EISDIR for a directory);
//     Sync, Datasync and Utimens with EBADF.
//   - Modes given to OpenFile(O_CREAT), Mkdir and Chmod keep only the
//     permission bits (no setuid, setgid or sticky).
//
// Requirements and limits: Linux >= 5.6 (openat2) and /proc mounted.
// NewVolumeFS checks both by opening the volume root the way a guest does, and
// fails otherwise, so a missing feature is an error at mount time (not a
// panic inside wazero, which panics when the lazy open of a preopen fails
// with anything but ENOENT). Opening with O_CREAT opens the file twice (once
// to create it, once through /proc/self/fd), so creating a file with a mode
// that denies its own access mode (O_CREAT|O_WRONLY with 0444) fails with
// EACCES for a process without CAP_DAC_OVERRIDE; POSIX lets that first open
// succeed.

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	esys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/experimental/sysfs"
	"github.com/tetratelabs/wazero/sys"
	"golang.org/x/sys/unix"
)

// procFDDir is where a process finds its own descriptors as magic links.
const procFDDir = "/proc/self/fd"

// resolveJailed are the openat2 resolve flags of every lookup in a volume.
const resolveJailed = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// volumeFS is the esys.FS of one mounted volume; see the top of this file.
type volumeFS struct {
	// root is the volume's host directory, absolute, symlinks resolved.
	root     string
	readOnly bool
	quota    Quota // see volumequota.go
	// checkedFD: the cached figure descriptor was checked against the
	// directory for this mount (volumequota.go).
	checkedFD bool
	// fdFS opens a pinned descriptor N as the wazero file of "N".
	fdFS esys.FS
}

// NewVolumeFS returns a file system for wazero that serves the host directory
// hostDir and nothing outside it: no path the guest gives can leave hostDir,
// and no symlink is ever followed (see the top of volumefs.go for the exact
// policy). With readOnly every change fails with EROFS. hostDir must be a
// directory; it may itself be (or pass through) a symlink, which is resolved
// once, here. Mount it with
//
//	wazero.NewFSConfig().(sysfs.FSConfig).WithSysFSMount(fs, guestPath)
//
// It needs Linux >= 5.6 (openat2) and /proc; it fails if they are missing.
func NewVolumeFS(hostDir string, readOnly bool) (esys.FS, error) {
	return NewVolumeFSWithQuota(hostDir, readOnly, Quota{})
}

// NewVolumeFSWithQuota is NewVolumeFS for a volume bounded by q (ignored
// when readOnly); see volumequota.go for how usage is counted and shared
// with other processes mounting the same directory.
func NewVolumeFSWithQuota(hostDir string, readOnly bool, q Quota) (esys.FS, error) {
	root, err := filepath.EvalSymlinks(hostDir)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", hostDir, err)
	}
	if root, err = filepath.Abs(root); err != nil {
		return nil, fmt.Errorf("volume %s: %w", hostDir, err)
	}
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", hostDir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("volume %s: not a directory", hostDir)
	}
	v := &volumeFS{root: root, readOnly: readOnly, quota: q, fdFS: sysfs.DirFS(procFDDir)}
	// Open the root the way wazero's preopen does, so that a kernel without
	// openat2, a missing /proc or an unreadable directory is reported here.
	f, errno := v.OpenFile(".", esys.O_RDONLY, 0)
	if errno != 0 {
		return nil, fmt.Errorf("volume %s: cannot serve it jailed (needs Linux >= 5.6 for openat2, and /proc): %w", hostDir, errno)
	}
	_ = f.Close()
	return v, nil
}

// String implements fmt.Stringer.
func (v *volumeFS) String() string { return v.root }

// jailPath turns a path given to the file system into one relative to the
// root: never empty, no leading "/", no "." or ".." components (except "."
// for the root itself). slash reports a trailing "/" (which requires a
// directory), dropped from rel.
func jailPath(p string) (rel string, slash bool, errno esys.Errno) {
	p = strings.TrimLeft(p, "/")
	if p == "" {
		return ".", false, 0
	}
	slash = strings.HasSuffix(p, "/")
	rel = path.Clean(p)
	if rel == ".." || strings.HasPrefix(rel, "../") {
		return "", false, esys.EPERM
	}
	if rel == usageFile || strings.HasPrefix(rel, usageFile+"/") {
		return "", false, esys.EPERM // the quota's figure: not the guest's
	}
	if rel == "." {
		slash = false
	}
	return rel, slash, 0
}

// withSlash puts back the trailing slash jailPath took off.
func withSlash(name string, slash bool) string {
	if slash {
		return name + "/"
	}
	return name
}

// openJailed opens rel (relative to the root) with openat2 so that the kernel
// refuses any symlink and anything not beneath the root. mode is only used
// with O_CREAT.
func (v *volumeFS) openJailed(rel string, flags int, mode uint32) (int, esys.Errno) {
	rootFD, err := unix.Open(v.root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, esys.UnwrapOSError(err)
	}
	defer unix.Close(rootFD)
	how := &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: resolveJailed}
	if flags&unix.O_CREAT != 0 {
		how.Mode = uint64(mode)
	}
	for tries := 0; ; tries++ {
		fd, err := unix.Openat2(rootFD, rel, how)
		switch {
		case err == nil:
			return fd, 0
		case err == unix.EINTR, err == unix.EAGAIN && tries < 3:
			// EAGAIN: the kernel could not rule out a race with a
			// rename; openat2(2) says to retry.
			continue
		case err == unix.EXDEV:
			return -1, esys.EPERM // an escape from the root
		}
		return -1, esys.UnwrapOSError(err)
	}
}

// openParent opens the directory that holds rel's last component (O_PATH)
// and returns it with that component.
func (v *volumeFS) openParent(rel string) (dirFD int, base string, errno esys.Errno) {
	dir, base := path.Split(rel)
	if dir == "" {
		dir = "."
	}
	dirFD, errno = v.openJailed(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	return dirFD, base, errno
}

// lstatAt is fstatat(dirFD, base) without following a symlink.
func lstatAt(dirFD int, base string) (sys.Stat_t, esys.Errno) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirFD, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return sys.Stat_t{}, esys.UnwrapOSError(err)
	}
	return statFromUnix(&st), 0
}

// fdPath is the magic link that names the inode of fd.
func fdPath(fd int) string { return procFDDir + "/" + strconv.Itoa(fd) }

// statFromUnix converts like os.Stat followed by sys.NewStat_t does.
func statFromUnix(st *unix.Stat_t) sys.Stat_t {
	mode := fs.FileMode(st.Mode & 0o777)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		mode |= fs.ModeDevice
	case unix.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFSOCK:
		mode |= fs.ModeSocket
	}
	if st.Mode&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if st.Mode&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if st.Mode&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return sys.Stat_t{
		Dev:   uint64(st.Dev),
		Ino:   sys.Inode(st.Ino),
		Mode:  mode,
		Nlink: uint64(st.Nlink),
		Size:  st.Size,
		Atim:  st.Atim.Nano(),
		Mtim:  st.Mtim.Nano(),
		Ctim:  st.Ctim.Nano(),
	}
}

// statJailed opens rel with extra flags (O_PATH) and fstats it.
func (v *volumeFS) statJailed(rel string, flags int) (sys.Stat_t, esys.Errno) {
	fd, errno := v.openJailed(rel, unix.O_PATH|flags, 0)
	if errno != 0 {
		return sys.Stat_t{}, errno
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return sys.Stat_t{}, esys.UnwrapOSError(err)
	}
	return statFromUnix(&st), 0
}

// unixOflag converts the flags of an open to open(2)'s, leaving out
// O_NOFOLLOW (RESOLVE_NO_SYMLINKS already refuses a trailing symlink, and
// with O_PATH it would open the link itself).
func unixOflag(flag esys.Oflag) int {
	var f int
	switch flag & (esys.O_RDONLY | esys.O_RDWR | esys.O_WRONLY) {
	case esys.O_RDWR:
		f = unix.O_RDWR
	case esys.O_WRONLY:
		f = unix.O_WRONLY
	default:
		f = unix.O_RDONLY
	}
	for _, m := range [...]struct {
		e esys.Oflag
		u int
	}{
		{esys.O_APPEND, unix.O_APPEND},
		{esys.O_CREAT, unix.O_CREAT},
		{esys.O_DIRECTORY, unix.O_DIRECTORY},
		{esys.O_DSYNC, unix.O_DSYNC},
		{esys.O_EXCL, unix.O_EXCL},
		{esys.O_NONBLOCK, unix.O_NONBLOCK},
		{esys.O_RSYNC, unix.O_RSYNC},
		{esys.O_SYNC, unix.O_SYNC},
		{esys.O_TRUNC, unix.O_TRUNC},
	} {
		if flag&m.e != 0 {
			f |= m.u
		}
	}
	return f
}

// OpenFile implements esys.FS.
func (v *volumeFS) OpenFile(p string, flag esys.Oflag, perm fs.FileMode) (esys.File, esys.Errno) {
	if v.readOnly {
		if flag&(esys.O_WRONLY|esys.O_RDWR) != 0 {
			if flag&esys.O_DIRECTORY != 0 {
				return nil, esys.EISDIR
			}
			return nil, esys.EROFS
		}
		if flag&(esys.O_CREAT|esys.O_TRUNC) != 0 {
			return nil, esys.EROFS
		}
	}
	rel, slash, errno := jailPath(p)
	if errno != 0 {
		return nil, errno
	}
	// Pin the target. An O_PATH descriptor does the lookup without opening
	// anything (no side effect, no permission check: the reopen below
	// checks); creating or truncating needs the real open, done here,
	// jailed, and not repeated by the reopen.
	pinFlags := unix.O_PATH | unixOflag(flag&esys.O_DIRECTORY)
	if flag&(esys.O_CREAT|esys.O_TRUNC) != 0 {
		pinFlags = unixOflag(flag)
	}
	var pin int
	if v.accounted() && flag&(esys.O_CREAT|esys.O_TRUNC) != 0 {
		pin, errno = v.openAccounted(rel, slash, pinFlags, uint32(perm.Perm()))
	} else {
		pin, errno = v.openJailed(withSlash(rel, slash), pinFlags, uint32(perm.Perm()))
	}
	if errno != 0 {
		return nil, errno
	}
	f, errno := v.fdFS.OpenFile(strconv.Itoa(pin), flag&^(esys.O_CREAT|esys.O_EXCL|esys.O_TRUNC|esys.O_NOFOLLOW), 0)
	if errno != 0 {
		unix.Close(pin)
		return nil, errno
	}
	vf := &volumeFile{File: f, pin: pin, readOnly: v.readOnly, root: rel == "."}
	if v.accounted() {
		vf.vol = v
	}
	return vf, 0
}

// Lstat implements esys.FS. A symlink as last component is reported, not
// followed; with a trailing slash the last component must be a directory
// (and is then refused if it is a symlink, as the slash would follow it).
func (v *volumeFS) Lstat(p string) (sys.Stat_t, esys.Errno) {
	rel, slash, errno := jailPath(p)
	if errno != 0 {
		return sys.Stat_t{}, errno
	}
	if slash {
		return v.statJailed(rel+"/", 0)
	}
	return v.statJailed(rel, unix.O_NOFOLLOW)
}

// Stat implements esys.FS.
func (v *volumeFS) Stat(p string) (sys.Stat_t, esys.Errno) {
	rel, slash, errno := jailPath(p)
	if errno != 0 {
		return sys.Stat_t{}, errno
	}
	return v.statJailed(withSlash(rel, slash), 0)
}

// Readlink implements esys.FS: it is refused with EPERM for a symlink (and
// fails with EINVAL for anything else, like readlink(2)).
func (v *volumeFS) Readlink(p string) (string, esys.Errno) {
	st, errno := v.Lstat(p)
	if errno != 0 {
		return "", errno
	}
	if st.Mode&fs.ModeSymlink != 0 {
		return "", esys.EPERM
	}
	return "", esys.EINVAL
}

// Mkdir implements esys.FS.
func (v *volumeFS) Mkdir(p string, perm fs.FileMode) esys.Errno {
	if v.readOnly {
		return esys.EROFS
	}
	rel, _, errno := jailPath(p)
	if errno != 0 {
		return errno
	}
	dirFD, base, errno := v.openParent(rel)
	if errno == 0 {
		errno = v.changeUsage(0, 1, nil, func() esys.Errno {
			return esys.UnwrapOSError(unix.Mkdirat(dirFD, base, uint32(perm.Perm())))
		})
		unix.Close(dirFD)
	}
	if errno == esys.ENOTDIR { // as sysfs.DirFS
		errno = esys.ENOENT
	}
	return errno
}

// Chmod implements esys.FS. Only permission bits are applied.
func (v *volumeFS) Chmod(p string, perm fs.FileMode) esys.Errno {
	if v.readOnly {
		return esys.EROFS
	}
	rel, slash, errno := jailPath(p)
	if errno != 0 {
		return errno
	}
	fd, errno := v.openJailed(withSlash(rel, slash), unix.O_PATH, 0)
	if errno != 0 {
		return errno
	}
	defer unix.Close(fd)
	return esys.UnwrapOSError(unix.Fchmodat(unix.AT_FDCWD, fdPath(fd), uint32(perm.Perm()), 0))
}

// Rename implements esys.FS. Renaming a symlink is refused with EPERM;
// renaming onto one replaces it.
func (v *volumeFS) Rename(from, to string) esys.Errno {
	if v.readOnly {
		return esys.EROFS
	}
	fromRel, fromSlash, errno := jailPath(from)
	if errno != 0 {
		return errno
	}
	toRel, toSlash, errno := jailPath(to)
	if errno != 0 {
		return errno
	}
	if fromRel == toRel && fromSlash == toSlash {
		return 0 // as sysfs.DirFS
	}
	fromFD, fromBase, errno := v.openParent(fromRel)
	if errno != 0 {
		return errno
	}
	defer unix.Close(fromFD)
	if errno := refuseSymlink(fromFD, fromBase); errno != 0 {
		return errno
	}
	toFD, toBase, errno := v.openParent(toRel)
	if errno != 0 {
		return errno
	}
	defer unix.Close(toFD)
	rename := func() esys.Errno {
		return esys.UnwrapOSError(unix.Renameat(fromFD, withSlash(fromBase, fromSlash), toFD, withSlash(toBase, toSlash)))
	}
	if !v.accounted() {
		return rename()
	}
	// Renaming over an entry frees it, unless both names are the same
	// file (then rename does nothing).
	l, errno := v.lockUsage()
	if errno != 0 {
		return errno
	}
	defer l.unlock()
	_, _, fromDev, fromIno := entryUsage(fromFD, fromBase)
	bytes, existed, dev, ino := entryUsage(toFD, toBase)
	if errno := rename(); errno != 0 {
		return errno
	}
	if existed && (dev != fromDev || ino != fromIno) {
		l.adjust(-bytes, -1)
	}
	return 0
}

// refuseSymlink fails with EPERM if base in dirFD is a symlink, and with the
// error of lstat if there is no such entry.
//
// Between this check and the rename or link that follows, only the host
// could put a symlink in base's place: the guest cannot create or move one.
// Even then the rename or link does not follow it, it would merely move it.
func refuseSymlink(dirFD int, base string) esys.Errno {
	st, errno := lstatAt(dirFD, base)
	if errno != 0 {
		return errno
	}
	if st.Mode&fs.ModeSymlink != 0 {
		return esys.EPERM
	}
	return 0
}

// Rmdir implements esys.FS.
func (v *volumeFS) Rmdir(p string) esys.Errno {
	if v.readOnly {
		return esys.EROFS
	}
	rel, _, errno := jailPath(p)
	if errno != 0 {
		return errno
	}
	dirFD, base, errno := v.openParent(rel)
	if errno != 0 {
		return errno
	}
	defer unix.Close(dirFD)
	return v.changeUsage(0, -1, nil, func() esys.Errno {
		return esys.UnwrapOSError(unix.Unlinkat(dirFD, base, unix.AT_REMOVEDIR))
	})
}

// Unlink implements esys.FS. A symlink is removed (not followed).
func (v *volumeFS) Unlink(p string) esys.Errno {
	if v.readOnly {
		return esys.EROFS
	}
	rel, slash, errno := jailPath(p)
	if errno != 0 {
		return errno
	}
	dirFD, base, errno := v.openParent(rel)
	if errno != 0 {
		return errno
	}
	defer unix.Close(dirFD)
	// unlinkat with a trailing slash follows nothing: it fails with
	// EISDIR or ENOTDIR.
	errno = v.changeUsage(0, 0, func() (int64, int64) {
		bytes, _, _, _ := entryUsage(dirFD, base)
		return -bytes, -1
	}, func() esys.Errno {
		return esys.UnwrapOSError(unix.Unlinkat(dirFD, withSlash(base, slash), 0))
	})
	if errno == esys.EPERM { // as sysfs.DirFS
		errno = esys.EISDIR
	}
	return errno
}

// Link implements esys.FS: a hard link inside the volume. Linking a symlink
// is refused with EPERM.
func (v *volumeFS) Link(oldPath, newPath string) esys.Errno {
	if v.readOnly {
		return esys.EROFS
	}
	oldRel, oldSlash, errno := jailPath(oldPath)
	if errno != 0 {
		return errno
	}
	newRel, newSlash, errno := jailPath(newPath)
	if errno != 0 {
		return errno
	}
	oldFD, oldBase, errno := v.openParent(oldRel)
	if errno != 0 {
		return errno
	}
	defer unix.Close(oldFD)
	// linkat would follow a symlink named with a trailing slash, so the
	// slash is checked here and not passed on.
	st, errno := lstatAt(oldFD, oldBase)
	switch {
	case errno != 0:
		return errno
	case st.Mode&fs.ModeSymlink != 0:
		return esys.EPERM
	case oldSlash && !st.Mode.IsDir():
		return esys.ENOTDIR
	}
	newFD, newBase, errno := v.openParent(newRel)
	if errno != 0 {
		return errno
	}
	defer unix.Close(newFD)
	return v.changeUsage(0, 0, func() (int64, int64) {
		bytes, _, _, _ := entryUsage(oldFD, oldBase)
		return bytes, 1
	}, func() esys.Errno {
		return esys.UnwrapOSError(unix.Linkat(oldFD, oldBase, newFD, withSlash(newBase, newSlash), 0))
	})
}

// Symlink implements esys.FS: creating symlinks is refused.
func (v *volumeFS) Symlink(_, _ string) esys.Errno {
	if v.readOnly {
		return esys.EROFS
	}
	return esys.EPERM
}

// Utimens implements esys.FS.
func (v *volumeFS) Utimens(p string, atim, mtim int64) esys.Errno {
	if v.readOnly {
		return esys.EROFS
	}
	rel, slash, errno := jailPath(p)
	if errno != 0 {
		return errno
	}
	fd, errno := v.openJailed(withSlash(rel, slash), unix.O_PATH, 0)
	if errno != 0 {
		return errno
	}
	defer unix.Close(fd)
	if atim == esys.UTIME_OMIT && mtim == esys.UTIME_OMIT {
		return 0
	}
	ts := []unix.Timespec{timespec(atim), timespec(mtim)}
	return esys.UnwrapOSError(unix.UtimesNanoAt(unix.AT_FDCWD, fdPath(fd), ts, 0))
}

func timespec(nanos int64) unix.Timespec {
	if nanos == esys.UTIME_OMIT {
		return unix.Timespec{Nsec: unix.UTIME_OMIT}
	}
	return unix.NsecToTimespec(nanos)
}

// volumeFile is a file opened from a volume: wazero's file for
// /proc/self/fd/<pin>, plus the pinned descriptor, closed with it. On a
// read-only volume it refuses changes like sysfs.ReadFS's files.
type volumeFile struct {
	esys.File
	pin      int
	readOnly bool
	root     bool      // the volume's root directory (its listing hides usageFile)
	vol      *volumeFS // the volume, if it keeps a figure (volumequota.go)
}

// Close implements esys.File.
func (f *volumeFile) Close() esys.Errno {
	errno := f.File.Close()
	if f.pin >= 0 {
		unix.Close(f.pin)
		f.pin = -1
	}
	return errno
}

// IsNonblock implements esys.PollableFile.
func (f *volumeFile) IsNonblock() bool {
	if pf, ok := f.File.(esys.PollableFile); ok {
		return pf.IsNonblock()
	}
	return false
}

// SetNonblock implements esys.PollableFile.
func (f *volumeFile) SetNonblock(enable bool) esys.Errno {
	if pf, ok := f.File.(esys.PollableFile); ok {
		return pf.SetNonblock(enable)
	}
	return esys.ENOSYS
}

// Poll implements esys.Pollable.
func (f *volumeFile) Poll(flag esys.Pflag, timeoutMillis int32) (bool, esys.Errno) {
	if p, ok := f.File.(esys.Pollable); ok {
		return p.Poll(flag, timeoutMillis)
	}
	return false, esys.ENOSYS
}

// Write implements esys.File.
func (f *volumeFile) Write(buf []byte) (int, esys.Errno) {
	if f.readOnly {
		return 0, f.writeErr()
	}
	if f.vol == nil || len(buf) == 0 {
		return f.File.Write(buf)
	}
	var n int
	errno := f.grow(func(size int64) int64 { return f.offset(size) + int64(len(buf)) }, func() (errno esys.Errno) {
		n, errno = f.File.Write(buf)
		return errno
	})
	return n, errno
}

// Pwrite implements esys.File.
func (f *volumeFile) Pwrite(buf []byte, off int64) (int, esys.Errno) {
	if f.readOnly {
		return 0, f.writeErr()
	}
	if f.vol == nil || len(buf) == 0 || off < 0 {
		return f.File.Pwrite(buf, off)
	}
	var n int
	errno := f.grow(func(int64) int64 { return off + int64(len(buf)) }, func() (errno esys.Errno) {
		n, errno = f.File.Pwrite(buf, off)
		return errno
	})
	return n, errno
}

// Truncate implements esys.File.
func (f *volumeFile) Truncate(size int64) esys.Errno {
	if f.readOnly {
		return f.writeErr()
	}
	if f.vol == nil || size < 0 {
		return f.File.Truncate(size)
	}
	return f.grow(func(int64) int64 { return size }, func() esys.Errno { return f.File.Truncate(size) })
}

// Readdir implements esys.File: the root's listing leaves out usageFile.
// A listing cut short by the filter is topped up, since wazero takes a
// short listing for the end of the directory.
func (f *volumeFile) Readdir(n int) ([]esys.Dirent, esys.Errno) {
	ents, errno := f.File.Readdir(n)
	if !f.root || errno != 0 {
		return ents, errno
	}
	full := n > 0 && len(ents) == n
	for i, e := range ents {
		if e.Name == usageFile {
			ents = append(ents[:i:i], ents[i+1:]...)
			if full {
				more, errno := f.File.Readdir(1)
				if errno != 0 {
					return ents, errno
				}
				ents = append(ents, more...)
			}
			break
		}
	}
	return ents, 0
}

// Sync implements esys.File.
func (f *volumeFile) Sync() esys.Errno {
	if f.readOnly {
		return esys.EBADF
	}
	return f.File.Sync()
}

// Datasync implements esys.File.
func (f *volumeFile) Datasync() esys.Errno {
	if f.readOnly {
		return esys.EBADF
	}
	return f.File.Datasync()
}

// Utimens implements esys.File.
func (f *volumeFile) Utimens(atim, mtim int64) esys.Errno {
	if f.readOnly {
		return esys.EBADF
	}
	return f.File.Utimens(atim, mtim)
}

// writeErr is the error of a write to a file of a read-only volume, as
// sysfs.ReadFS answers it.
func (f *volumeFile) writeErr() esys.Errno {
	if isDir, errno := f.IsDir(); errno != 0 {
		return errno
	} else if isDir {
		return esys.EISDIR
	}
	return esys.EBADF
}

// Compile-time checks.
var (
	_ esys.FS           = (*volumeFS)(nil)
	_ esys.PollableFile = (*volumeFile)(nil)
)

// changeUsage runs op, an operation that adds (or, negative, removes)
// entries and bytes, keeping the figure of an accounted volume: growth is
// reserved first (and refused past the quota), shrinking applied after op
// succeeded.
// measure, if not nil, gives the deltas under the lock instead.
func (v *volumeFS) changeUsage(bytes, files int64, measure func() (int64, int64), op func() esys.Errno) esys.Errno {
	if !v.accounted() {
		return op()
	}
	l, errno := v.lockUsage()
	if errno != 0 {
		return errno
	}
	defer l.unlock()
	if measure != nil {
		bytes, files = measure()
	}
	growB, growF := max(bytes, 0), max(files, 0)
	if errno := l.reserve(growB, growF); errno != 0 {
		return errno
	}
	if errno := op(); errno != 0 {
		l.adjust(-growB, -growF)
		return errno
	}
	l.adjust(bytes-growB, files-growF)
	return 0
}
