package publish

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/ipfs/boxo/files"

	"github.com/wagi-fcgi/wagi-fcgi/config"
)

// What the publisher is given is read the way the manager reads what it
// fetches: bounded before a byte is read where the size is known, and
// while it is read where it is not. Nothing here waits on a FIFO, reads a
// device without end, or follows a link out of the directory it was
// given.

// ErrModuleTooLarge and ErrDirTooLarge are a module or a directory over
// the limits serve applies to what it fetches from IPFS (max_module_size;
// max_dir_size, max_dir_files).
var (
	ErrModuleTooLarge = errors.New("module too large")
	ErrDirTooLarge    = errors.New("directory too large")
)

// kindOf names a file mode for a message.
func kindOf(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m.IsRegular():
		return "a regular file"
	}
	return "not a regular file"
}

// readModule reads the module file at name: a regular file of at most max
// bytes (0: no bound). Anything else is refused before it is opened (a
// device's open may do something) and again on the descriptor (it may
// have been swapped in between); the file is opened non-blocking, so a
// FIFO put there in the meantime is not waited on.
func readModule(name string, max int64) ([]byte, error) {
	st, err := os.Stat(name)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is %s, not a module file", name, kindOf(st.Mode()))
	}
	if max > 0 && st.Size() > max {
		return nil, fmt.Errorf("%w: %s has %d bytes, over max_module_size (%s)", ErrModuleTooLarge, name, st.Size(), config.FormatSize(max))
	}
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err = f.Stat(); err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is %s, not a module file", name, kindOf(st.Mode()))
	}
	limit := max
	if limit <= 0 {
		limit = 1<<31 - 1 // what the compile process reads at most
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s grew past max_module_size (%s) while it was read", ErrModuleTooLarge, name, config.FormatSize(max))
	}
	return b, nil
}

// dirLimits are the bounds a published directory is held to: serve's
// max_dir_size and max_dir_files, counted as ipfs.GetDir counts them when
// serve fetches the directory (file bytes; files and directories).
type dirLimits struct {
	maxBytes int64
	maxFiles int
	hidden   bool // publish names starting with "." (left out by default, as `ipfs add -r` does)
}

// scanFactor bounds the entries read while walking, hidden ones (which
// are not published, and not counted against max_dir_files) included:
// a directory of a million dot files is refused, not read to its end.
const scanFactor = 4

// tree is a local directory being published. Its files are opened one at
// a time, as they are sent, through an os.Root, so that no path (a link
// swapped in after the walk included) leads out of the directory; each is
// checked to be the file the walk saw.
type tree struct {
	root    *os.Root
	dir     string // as given, for messages
	lim     dirLimits
	entries int   // files and directories, the top one excluded
	scanned int   // entries read, hidden ones included
	skipped int   // hidden entries left out
	bytes   int64 // of the files
	err     error // the first failure of reading a file while it was sent
}

// openTree walks dir, refusing links, devices, FIFOs and sockets (each
// named), and anything past lim, and returns the tree of what is to be
// sent. The caller closes it.
func openTree(dir string, lim dirLimits) (*tree, files.Directory, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, nil, err
	}
	t := &tree{root: root, dir: dir, lim: lim}
	top, err := t.walk(".")
	if err != nil {
		root.Close()
		return nil, nil, err
	}
	return t, top, nil
}

func (t *tree) Close() error { return t.root.Close() }

// walk reads the directory rel (relative to the root) and returns it as a
// files.Directory whose files are read when sent. A directory's entries
// are read whole, bounded, and it is closed before its subdirectories are
// walked: a deep tree holds one descriptor, not one per level.
func (t *tree) walk(rel string) (files.Directory, error) {
	names, err := t.names(rel)
	if err != nil {
		return nil, err
	}
	var ents []files.DirEntry
	for _, name := range names {
		p := path.Join(rel, name)
		show := filepath.Join(t.dir, filepath.FromSlash(p))
		st, err := t.root.Lstat(p)
		if err != nil {
			return nil, err
		}
		t.entries++
		if t.lim.maxFiles > 0 && t.entries > t.lim.maxFiles {
			return nil, fmt.Errorf("%w: %s has more than max_dir_files (%d) entries", ErrDirTooLarge, t.dir, t.lim.maxFiles)
		}
		m := st.Mode()
		switch {
		case m&fs.ModeSymlink != 0:
			target, _ := t.root.Readlink(p)
			return nil, fmt.Errorf("%s is a symbolic link (to %q): publish does not follow links, and a volume from IPFS has none; replace it with what it points to", show, target)
		case m.IsDir():
			sub, err := t.walk(p)
			if err != nil {
				return nil, err
			}
			ents = append(ents, files.FileEntry(name, sub))
		case m.IsRegular():
			t.bytes += st.Size()
			if t.lim.maxBytes > 0 && t.bytes > t.lim.maxBytes {
				return nil, fmt.Errorf("%w: %s has more than max_dir_size (%s) in its files", ErrDirTooLarge, t.dir, config.FormatSize(t.lim.maxBytes))
			}
			ents = append(ents, files.FileEntry(name, files.NewReaderFile(&lazyFile{t: t, rel: p, show: show, want: st})))
		default:
			return nil, fmt.Errorf("%s is %s: a volume holds files and directories only", show, kindOf(m))
		}
	}
	return files.NewSliceDirectory(ents), nil
}

// names lists the directory rel, sorted, without the hidden names unless
// they are asked for, reading at most what the limits allow.
func (t *tree) names(rel string) ([]string, error) {
	d, err := t.root.Open(rel)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	var names []string
	scanMax := 0
	if t.lim.maxFiles > 0 {
		scanMax = scanFactor*t.lim.maxFiles + 1000
	}
	for {
		batch, err := d.ReadDir(256)
		for _, e := range batch {
			t.scanned++
			if scanMax > 0 && t.scanned > scanMax {
				return nil, fmt.Errorf("%w: %s has more than %d entries, hidden ones included (max_dir_files is %d)", ErrDirTooLarge, t.dir, scanMax, t.lim.maxFiles)
			}
			if !t.lim.hidden && strings.HasPrefix(e.Name(), ".") {
				t.skipped++
				continue
			}
			names = append(names, e.Name())
			// Counted again, with the subdirectories, in walk; here it
			// only stops the listing of one huge directory early.
			if t.lim.maxFiles > 0 && t.entries+len(names) > t.lim.maxFiles {
				return nil, fmt.Errorf("%w: %s has more than max_dir_files (%d) entries", ErrDirTooLarge, t.dir, t.lim.maxFiles)
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", filepath.Join(t.dir, filepath.FromSlash(rel)), err)
		}
	}
	slices.Sort(names)
	return names, nil
}

// lazyFile is one file of a tree, opened when its bytes are first read
// and closed at their end.
type lazyFile struct {
	t    *tree
	rel  string
	show string
	want fs.FileInfo // what the walk saw
	f    *os.File
	r    io.Reader
	n    int64
}

func (l *lazyFile) Read(p []byte) (int, error) {
	if l.r == nil {
		if err := l.open(); err != nil {
			return 0, l.fail(err)
		}
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	if l.n > l.want.Size() {
		return n, l.fail(fmt.Errorf("%s grew while it was published", l.show))
	}
	if err == io.EOF && l.n != l.want.Size() {
		return n, l.fail(fmt.Errorf("%s shrank while it was published", l.show))
	}
	if err != nil && err != io.EOF {
		return n, l.fail(fmt.Errorf("reading %s: %w", l.show, err))
	}
	return n, err
}

// open opens the file within the root, without following a link and
// without waiting on a FIFO, and checks it is the regular file the walk
// saw.
func (l *lazyFile) open() error {
	f, err := l.t.root.OpenFile(l.rel, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", l.show, err)
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || !os.SameFile(st, l.want) {
		f.Close()
		return fmt.Errorf("%s changed while it was published", l.show)
	}
	l.f, l.r = f, io.LimitReader(f, l.want.Size()+1)
	return nil
}

func (l *lazyFile) fail(err error) error {
	if l.t.err == nil {
		l.t.err = err
	}
	return err
}

func (l *lazyFile) Close() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
