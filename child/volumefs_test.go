package child_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	esys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/experimental/sysfs"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"

	"github.com/wagi-fcgi/wagi-fcgi/child"
	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

const (
	// secret is what the files outside the volume hold; no guest may see it.
	secret = "SECRET outside the volume\n"
	// okHeader starts every successful answer of files.wasm.
	okHeader = "Content-Type: text/plain\n\n"
)

// volumeFixture is a volume directory next to a directory the guest must
// never reach:
//
//	outside/secret            secret
//	vol/x.txt                 "hello\n"
//	vol/sub/y                 "y\n"
//	vol/link     -> /etc/passwd
//	vol/etc      -> /etc
//	vol/out      -> outside/secret   (absolute)
//	vol/outdir   -> outside          (absolute)
//	vol/up       -> ../outside/secret (relative, escapes)
//	vol/rel      -> x.txt            (relative, stays inside)
//	vol/subrel   -> sub              (relative, stays inside)
type volumeFixture struct {
	vol, outside string
}

func newVolumeFixture(t *testing.T) volumeFixture {
	t.Helper()
	base := t.TempDir()
	f := volumeFixture{vol: filepath.Join(base, "vol"), outside: filepath.Join(base, "outside")}
	for _, d := range []string{f.outside, filepath.Join(f.vol, "sub")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		filepath.Join(f.outside, "secret"): secret,
		filepath.Join(f.vol, "x.txt"):      "hello\n",
		filepath.Join(f.vol, "sub", "y"):   "y\n",
	}
	for name, content := range files {
		if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"link":   "/etc/passwd",
		"etc":    "/etc",
		"out":    filepath.Join(f.outside, "secret"),
		"outdir": f.outside,
		"up":     "../outside/secret",
		"rel":    "x.txt",
		"subrel": "sub",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(f.vol, name)); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// snapshot describes every entry under dir (type, mode, content or link
// target), to compare the tree before and after a guest ran.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		desc := fi.Mode().String()
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " " + string(b)
		}
		m[p] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func newVolume(t *testing.T, dir string, readOnly bool) esys.FS {
	t.Helper()
	v, err := child.NewVolumeFS(dir, readOnly)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// filesGuest runs files.wasm with plain wazero, one volume mounted at /d.
type filesGuest struct {
	ctx context.Context
	r   wazero.Runtime
	cm  wazero.CompiledModule
}

func newFilesGuest(t *testing.T) *filesGuest {
	t.Helper()
	ctx := context.Background()
	b, err := os.ReadFile(testenv.Module(t, "files"))
	if err != nil {
		t.Fatal(err)
	}
	r := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter())
	t.Cleanup(func() { r.Close(ctx) })
	wasi_snapshot_preview1.MustInstantiate(ctx, r)
	cm, err := r.CompileModule(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	return &filesGuest{ctx: ctx, r: r, cm: cm}
}

// run runs `files args...` with v mounted at /d and returns its stdout.
func (g *filesGuest) run(t *testing.T, v esys.FS, stdin string, args ...string) string {
	t.Helper()
	var stdout bytes.Buffer
	cfg := wazero.NewModuleConfig().WithName("").
		WithArgs(append([]string{"files"}, args...)...).
		WithFSConfig(wazero.NewFSConfig().(sysfs.FSConfig).WithSysFSMount(v, "/d")).
		WithStdin(strings.NewReader(stdin)).WithStdout(&stdout).WithStderr(io.Discard)
	mod, err := g.r.InstantiateModule(g.ctx, g.cm, cfg)
	if mod != nil {
		mod.Close(g.ctx)
	}
	var ee *sys.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 0) {
		t.Fatalf("files %v: %v", args, err)
	}
	return stdout.String()
}

func TestVolumeGuestCannotReadOutsideTheVolume(t *testing.T) {
	g := newFilesGuest(t)
	fx := newVolumeFixture(t)
	cases := []struct {
		name string
		path string
	}{
		{"dot-dot past the mount point does not escape", "/d/../../etc/passwd"},
		{"dot-dot out of a subdirectory does not escape", "/d/sub/../../etc/hostname"},
		{"an absolute path outside the mount is not found", "/etc/passwd"},
		{"a relative path going up is not found", "../etc/passwd"},
		{"a host symlink to /etc/passwd is not followed", "/d/link"},
		{"a host symlink to an outside directory is not followed as a component", "/d/etc/passwd"},
		{"an absolute host symlink to an outside file is not followed", "/d/out"},
		{"an absolute host symlink to an outside directory is not followed", "/d/outdir/secret"},
		{"a relative host symlink that escapes is not followed", "/d/up"},
		{"a relative symlink that stays inside is refused too", "/d/rel"},
		{"a directory symlink that stays inside is refused too", "/d/subrel/y"},
	}
	for _, mode := range []struct {
		name     string
		readOnly bool
	}{{"read-write", false}, {"read-only", true}} {
		v := newVolume(t, fx.vol, mode.readOnly)
		t.Run(mode.name, func(t *testing.T) {
			t.Run("a normal file reads", func(t *testing.T) {
				if out := g.run(t, v, "", "read", "/d/x.txt"); out != okHeader+"hello\n" {
					t.Fatalf("got %q", out)
				}
			})
			t.Run("a file in a subdirectory reads", func(t *testing.T) {
				if out := g.run(t, v, "", "read", "/d/sub/y"); out != okHeader+"y\n" {
					t.Fatalf("got %q", out)
				}
			})
			t.Run("the volume lists, symlinks included", func(t *testing.T) {
				want := okHeader + "etc\nlink\nout\noutdir\nrel\nsub\nsubrel\nup\nx.txt\n"
				if out := g.run(t, v, "", "ls", "/d"); out != want {
					t.Fatalf("got %q, want %q", out, want)
				}
			})
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					out := g.run(t, v, "", "read", tc.path)
					if !strings.HasPrefix(out, "Status: 404") || strings.Contains(out, "SECRET") || strings.Contains(out, "root:") {
						t.Fatalf("read %s: %q", tc.path, out)
					}
				})
			}
		})
	}
}

func TestVolumeGuestCannotCreateSymlinks(t *testing.T) {
	g := newFilesGuest(t)
	fx := newVolumeFixture(t)
	v := newVolume(t, fx.vol, false)
	for _, tc := range []struct{ name, target, link string }{
		{"a symlink to a host file is refused", "/etc/passwd", "/d/evil"},
		{"a symlink to an outside file is refused", filepath.Join(fx.outside, "secret"), "/d/evil2"},
		{"a relative symlink inside the volume is refused", "x.txt", "/d/evil3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out := g.run(t, v, "", "symlink", tc.target, tc.link); !strings.HasPrefix(out, "Status: 500") {
				t.Fatalf("symlink: %q", out)
			}
			host := filepath.Join(fx.vol, strings.TrimPrefix(tc.link, "/d/"))
			if _, err := os.Lstat(host); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("%s on the host: %v", host, err)
			}
		})
	}
}

func TestVolumeGuestChangesReadWriteVolumesOnly(t *testing.T) {
	g := newFilesGuest(t)

	t.Run("read-write", func(t *testing.T) {
		fx := newVolumeFixture(t)
		v := newVolume(t, fx.vol, false)
		steps := []struct {
			name  string
			stdin string
			args  []string
			want  string
		}{
			{"a new file is written", "abc", []string{"write", "/d/new.txt"}, okHeader + "wrote 3\n"},
			{"it is appended to", "de", []string{"append", "/d/new.txt"}, okHeader + "wrote 2\n"},
			{"it reads back", "", []string{"read", "/d/new.txt"}, okHeader + "abcde"},
			{"a file in a subdirectory is overwritten", "Y", []string{"write", "/d/sub/y"}, okHeader + "wrote 1\n"},
			{"the subdirectory lists", "", []string{"ls", "/d/sub"}, okHeader + "y\n"},
			{"a write through a host symlink fails", "pwned", []string{"write", "/d/out"}, "Status: 500"},
			{"an append through a host symlink fails", "pwned", []string{"append", "/d/up"}, "Status: 500"},
			{"a write through a directory symlink fails", "pwned", []string{"write", "/d/outdir/secret"}, "Status: 500"},
			{"a write through an inside symlink fails", "pwned", []string{"write", "/d/rel"}, "Status: 500"},
		}
		for _, s := range steps {
			t.Run(s.name, func(t *testing.T) {
				if out := g.run(t, v, s.stdin, s.args...); !strings.HasPrefix(out, s.want) {
					t.Fatalf("got %q, want %q", out, s.want)
				}
			})
		}
		for name, want := range map[string]string{
			filepath.Join(fx.vol, "new.txt"):    "abcde",
			filepath.Join(fx.vol, "sub", "y"):   "Y",
			filepath.Join(fx.vol, "x.txt"):      "hello\n",
			filepath.Join(fx.outside, "secret"): secret,
		} {
			if b, err := os.ReadFile(name); err != nil || string(b) != want {
				t.Errorf("%s on the host: %q %v, want %q", name, b, err, want)
			}
		}
	})

	t.Run("read-only", func(t *testing.T) {
		fx := newVolumeFixture(t)
		v := newVolume(t, fx.vol, true)
		before := snapshot(t, filepath.Dir(fx.vol))
		for _, tc := range []struct {
			name string
			args []string
		}{
			{"a new file is not written", []string{"write", "/d/new.txt"}},
			{"an existing file is not overwritten", []string{"write", "/d/x.txt"}},
			{"an existing file is not appended to", []string{"append", "/d/x.txt"}},
			{"a file in a subdirectory is not overwritten", []string{"write", "/d/sub/y"}},
			{"a symlink is not created", []string{"symlink", "x.txt", "/d/evil"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if out := g.run(t, v, "changed", tc.args...); !strings.HasPrefix(out, "Status: 500") {
					t.Fatalf("got %q", out)
				}
			})
		}
		if after := snapshot(t, filepath.Dir(fx.vol)); !maps.Equal(before, after) {
			t.Fatalf("the host tree changed:\nbefore %v\nafter  %v", before, after)
		}
	})
}

// openErrno opens p and returns the errno, closing the file if it opened.
func openErrno(v esys.FS, p string, flag esys.Oflag) esys.Errno {
	f, errno := v.OpenFile(p, flag, 0o644)
	if errno == 0 {
		f.Close()
	}
	return errno
}

func TestVolumeFSPathsCannotEscape(t *testing.T) {
	fx := newVolumeFixture(t)
	v := newVolume(t, fx.vol, false)
	for _, tc := range []struct {
		name        string
		path        string
		open, stat  esys.Errno // OpenFile(O_RDONLY) and Stat
		lstat       esys.Errno
		lstatIsLink bool
	}{
		{"the root opens", ".", 0, 0, 0, false},
		{"the root opens as empty", "", 0, 0, 0, false},
		{"the root opens as a slash", "/", 0, 0, 0, false},
		{"a file opens", "x.txt", 0, 0, 0, false},
		{"an absolute path is taken inside the volume", "/x.txt", 0, 0, 0, false},
		{"dot-dot inside the volume is fine", "sub/../x.txt", 0, 0, 0, false},
		{"a file opens with a trailing slash only if a directory", "x.txt/", esys.ENOTDIR, esys.ENOTDIR, esys.ENOTDIR, false},
		{"a host symlink is not followed but lstats", "link", esys.ELOOP, esys.ELOOP, 0, true},
		{"a host symlink with a trailing slash is not followed", "etc/", esys.ELOOP, esys.ELOOP, esys.ELOOP, false},
		{"a symlink to a directory is not a path component", "etc/passwd", esys.ELOOP, esys.ELOOP, esys.ELOOP, false},
		{"an inside symlink is not followed", "rel", esys.ELOOP, esys.ELOOP, 0, true},
		{"an inside directory symlink is not a path component", "subrel/y", esys.ELOOP, esys.ELOOP, esys.ELOOP, false},
		{"an absolute path outside is not found inside", "/outside/secret", esys.ENOENT, esys.ENOENT, esys.ENOENT, false},
		{"an absolute path meets the volume's own symlinks", "/etc/passwd", esys.ELOOP, esys.ELOOP, esys.ELOOP, false},
		{"dot-dot is refused", "..", esys.EPERM, esys.EPERM, esys.EPERM, false},
		{"dot-dot to a sibling is refused", "../outside/secret", esys.EPERM, esys.EPERM, esys.EPERM, false},
		{"dot-dot out of a subdirectory is refused", "sub/../../outside/secret", esys.EPERM, esys.EPERM, esys.EPERM, false},
		{"dot-dot after a leading slash is refused", "/../outside/secret", esys.EPERM, esys.EPERM, esys.EPERM, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if errno := openErrno(v, tc.path, esys.O_RDONLY); errno != tc.open {
				t.Errorf("OpenFile: %v, want %v", errno, tc.open)
			}
			if _, errno := v.Stat(tc.path); errno != tc.stat {
				t.Errorf("Stat: %v, want %v", errno, tc.stat)
			}
			st, errno := v.Lstat(tc.path)
			if errno != tc.lstat {
				t.Errorf("Lstat: %v, want %v", errno, tc.lstat)
			}
			if errno == 0 && (st.Mode&fs.ModeSymlink != 0) != tc.lstatIsLink {
				t.Errorf("Lstat mode %v", st.Mode)
			}
		})
	}
}

func TestVolumeFSStatsLikeDirFS(t *testing.T) {
	fx := newVolumeFixture(t)
	v, d := newVolume(t, fx.vol, false), sysfs.DirFS(fx.vol)
	for _, p := range []string{".", "x.txt", "sub", "sub/y"} {
		got, errno := v.Stat(p)
		want, werrno := d.Stat(p)
		if errno != 0 || werrno != 0 || got != want {
			t.Errorf("Stat(%q) = %+v %v, DirFS %+v %v", p, got, errno, want, werrno)
		}
	}
	got, errno := v.Lstat("link")
	want, werrno := d.Lstat("link")
	if errno != 0 || werrno != 0 || got != want {
		t.Errorf("Lstat(link) = %+v %v, DirFS %+v %v", got, errno, want, werrno)
	}
}

func TestVolumeFSReadsDirectoriesAndFiles(t *testing.T) {
	fx := newVolumeFixture(t)
	v := newVolume(t, fx.vol, false)
	root, errno := v.OpenFile(".", esys.O_RDONLY, 0)
	if errno != 0 {
		t.Fatal(errno)
	}
	defer root.Close()
	for range 2 { // the second time after a rewind, which reopens
		if _, errno := root.Seek(0, io.SeekStart); errno != 0 {
			t.Fatal(errno)
		}
		dirents, errno := root.Readdir(-1)
		if errno != 0 {
			t.Fatal(errno)
		}
		var names []string
		for _, d := range dirents {
			names = append(names, d.Name)
			if d.Name == "link" && d.Type != fs.ModeSymlink || d.Name == "sub" && d.Type != fs.ModeDir {
				t.Errorf("%s has type %v", d.Name, d.Type)
			}
		}
		slices.Sort(names)
		if want := []string{"etc", "link", "out", "outdir", "rel", "sub", "subrel", "up", "x.txt"}; !slices.Equal(names, want) {
			t.Fatalf("Readdir: %v, want %v", names, want)
		}
	}

	f, errno := v.OpenFile("sub/new", esys.O_RDWR|esys.O_CREAT|esys.O_EXCL, 0o600)
	if errno != 0 {
		t.Fatal(errno)
	}
	if _, errno := f.Write([]byte("12345")); errno != 0 {
		t.Fatal(errno)
	}
	if errno := f.SetAppend(true); errno != 0 { // reopens through /proc/self/fd
		t.Fatal(errno)
	}
	if _, errno := f.Write([]byte("6")); errno != 0 {
		t.Fatal(errno)
	}
	buf := make([]byte, 10)
	if n, errno := f.Pread(buf, 0); errno != 0 || string(buf[:n]) != "123456" {
		t.Fatalf("Pread: %q %v", buf[:n], errno)
	}
	if errno := f.Close(); errno != 0 {
		t.Fatal(errno)
	}
	if errno := openErrno(v, "sub/new", esys.O_RDWR|esys.O_CREAT|esys.O_EXCL); errno != esys.EEXIST {
		t.Errorf("O_EXCL again: %v", errno)
	}
	if errno := openErrno(v, "sub/new", esys.O_WRONLY|esys.O_TRUNC); errno != 0 {
		t.Fatal(errno)
	}
	if st, errno := v.Stat("sub/new"); errno != 0 || st.Size != 0 || st.Mode.Perm() != 0o600 {
		t.Errorf("after O_TRUNC: %+v %v", st, errno)
	}
	if errno := openErrno(v, "x.txt", esys.O_RDONLY|esys.O_DIRECTORY); errno != esys.ENOTDIR {
		t.Errorf("O_DIRECTORY on a file: %v", errno)
	}
	if errno := openErrno(v, "sub", esys.O_WRONLY); errno != esys.EISDIR {
		t.Errorf("a directory for writing: %v", errno)
	}
	if errno := openErrno(v, "out", esys.O_WRONLY|esys.O_CREAT|esys.O_TRUNC); errno != esys.ELOOP {
		t.Errorf("O_CREAT|O_TRUNC through a symlink: %v", errno)
	}
	if errno := openErrno(v, "outdir/new", esys.O_WRONLY|esys.O_CREAT); errno != esys.ELOOP {
		t.Errorf("O_CREAT under a directory symlink: %v", errno)
	}
	if b, err := os.ReadFile(filepath.Join(fx.outside, "secret")); err != nil || string(b) != secret {
		t.Errorf("the outside file: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(fx.outside, "new")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("outside/new: %v", err)
	}
}

func TestVolumeFSChangesStayInside(t *testing.T) {
	fx := newVolumeFixture(t)
	v := newVolume(t, fx.vol, false)
	outsideBefore := snapshot(t, fx.outside)
	host := func(p string) string { return filepath.Join(fx.vol, p) }
	exists := func(p string) bool { _, err := os.Lstat(host(p)); return err == nil }
	when := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC).UnixNano()
	for _, tc := range []struct {
		name  string
		op    func() esys.Errno
		want  esys.Errno
		check func() bool
	}{
		{"mkdir makes a directory", func() esys.Errno { return v.Mkdir("m", 0o755) }, 0, func() bool { return exists("m") }},
		{"mkdir of an existing name fails", func() esys.Errno { return v.Mkdir("m", 0o755) }, esys.EEXIST, nil},
		{"mkdir under a missing directory fails", func() esys.Errno { return v.Mkdir("none/m", 0o755) }, esys.ENOENT, nil},
		{"mkdir under a directory symlink is refused", func() esys.Errno { return v.Mkdir("outdir/m", 0o755) }, esys.ELOOP, nil},
		{"mkdir outside is refused", func() esys.Errno { return v.Mkdir("../m", 0o755) }, esys.EPERM, nil},
		{"rename moves a file", func() esys.Errno { return v.Rename("x.txt", "m/x") }, 0, func() bool { return exists("m/x") && !exists("x.txt") }},
		{"rename moves a directory", func() esys.Errno { return v.Rename("m", "m2") }, 0, func() bool { return exists("m2/x") }},
		{"rename into a directory symlink is refused", func() esys.Errno { return v.Rename("m2/x", "outdir/x") }, esys.ELOOP, func() bool { return exists("m2/x") }},
		{"rename out of the volume is refused", func() esys.Errno { return v.Rename("m2/x", "../x") }, esys.EPERM, func() bool { return exists("m2/x") }},
		{"rename of a symlink is refused", func() esys.Errno { return v.Rename("out", "out2") }, esys.EPERM, func() bool { return exists("out") }},
		{"rename onto a symlink replaces the link", func() esys.Errno { return v.Rename("m2/x", "rel") }, 0, func() bool {
			fi, err := os.Lstat(host("rel"))
			return err == nil && fi.Mode().IsRegular()
		}},
		{"link makes a hard link", func() esys.Errno { return v.Link("sub/y", "m2/y") }, 0, func() bool {
			a, err1 := os.Stat(host("sub/y"))
			b, err2 := os.Stat(host("m2/y"))
			return err1 == nil && err2 == nil && os.SameFile(a, b)
		}},
		{"link of a symlink is refused", func() esys.Errno { return v.Link("link", "m2/l") }, esys.EPERM, func() bool { return !exists("m2/l") }},
		{"link of a symlink with a trailing slash is refused", func() esys.Errno { return v.Link("outdir/", "m2/l") }, esys.EPERM, func() bool { return !exists("m2/l") }},
		{"link through a directory symlink is refused", func() esys.Errno { return v.Link("outdir/secret", "m2/s") }, esys.ELOOP, func() bool { return !exists("m2/s") }},
		{"link into a directory symlink is refused", func() esys.Errno { return v.Link("sub/y", "outdir/y") }, esys.ELOOP, nil},
		{"symlink is refused", func() esys.Errno { return v.Symlink("x", "m2/s") }, esys.EPERM, func() bool { return !exists("m2/s") }},
		{"readlink is refused", func() esys.Errno { _, errno := v.Readlink("link"); return errno }, esys.EPERM, nil},
		{"readlink of a file is invalid", func() esys.Errno { _, errno := v.Readlink("sub/y"); return errno }, esys.EINVAL, nil},
		{"chmod changes a file", func() esys.Errno { return v.Chmod("sub/y", 0o600) }, 0, func() bool {
			fi, err := os.Stat(host("sub/y"))
			return err == nil && fi.Mode().Perm() == 0o600
		}},
		{"chmod keeps only permission bits", func() esys.Errno { return v.Chmod("sub/y", 0o640|fs.ModeSetuid) }, 0, func() bool {
			fi, err := os.Stat(host("sub/y"))
			return err == nil && fi.Mode() == 0o640
		}},
		{"chmod through a symlink is refused", func() esys.Errno { return v.Chmod("out", 0o777) }, esys.ELOOP, nil},
		{"utimens changes a file's times", func() esys.Errno { return v.Utimens("sub/y", when, when) }, 0, func() bool {
			fi, err := os.Stat(host("sub/y"))
			return err == nil && fi.ModTime().UnixNano() == when
		}},
		{"utimens can omit both times", func() esys.Errno { return v.Utimens("sub/y", esys.UTIME_OMIT, esys.UTIME_OMIT) }, 0, nil},
		{"utimens through a symlink is refused", func() esys.Errno { return v.Utimens("out", when, when) }, esys.ELOOP, nil},
		{"utimens through a directory symlink is refused", func() esys.Errno { return v.Utimens("outdir/secret", when, when) }, esys.ELOOP, nil},
		{"unlink of a directory fails", func() esys.Errno { return v.Unlink("m2") }, esys.EISDIR, nil},
		{"unlink of a file with a trailing slash fails", func() esys.Errno { return v.Unlink("m2/y/") }, esys.ENOTDIR, func() bool { return exists("m2/y") }},
		{"unlink removes a file", func() esys.Errno { return v.Unlink("m2/y") }, 0, func() bool { return !exists("m2/y") }},
		{"unlink removes a symlink, not its target", func() esys.Errno { return v.Unlink("out") }, 0, func() bool { return !exists("out") }},
		{"unlink through a directory symlink is refused", func() esys.Errno { return v.Unlink("outdir/secret") }, esys.ELOOP, nil},
		{"rmdir of a non-empty directory fails", func() esys.Errno { return v.Rmdir("sub") }, esys.ENOTEMPTY, nil},
		{"rmdir of a symlink to a directory fails", func() esys.Errno { return v.Rmdir("outdir") }, esys.ENOTDIR, func() bool { return exists("outdir") }},
		{"rmdir removes an empty directory", func() esys.Errno { return v.Rmdir("m2") }, 0, func() bool { return !exists("m2") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if errno := tc.op(); errno != tc.want {
				t.Fatalf("errno %v, want %v", errno, tc.want)
			}
			if tc.check != nil && !tc.check() {
				t.Fatal("the host does not show the expected result")
			}
		})
	}
	if outsideAfter := snapshot(t, fx.outside); !maps.Equal(outsideBefore, outsideAfter) {
		t.Fatalf("outside changed: %v -> %v", outsideBefore, outsideAfter)
	}
	if b, err := os.ReadFile("/etc/passwd"); err != nil || len(b) == 0 {
		t.Fatalf("/etc/passwd: %v", err)
	}
}

func TestVolumeFSReadOnlyRefusesChanges(t *testing.T) {
	fx := newVolumeFixture(t)
	v := newVolume(t, fx.vol, true)
	before := snapshot(t, filepath.Dir(fx.vol))
	for _, tc := range []struct {
		name string
		op   func() esys.Errno
		want esys.Errno
	}{
		{"open for writing", func() esys.Errno { return openErrno(v, "x.txt", esys.O_WRONLY) }, esys.EROFS},
		{"open for reading and writing", func() esys.Errno { return openErrno(v, "x.txt", esys.O_RDWR) }, esys.EROFS},
		{"open a directory for writing", func() esys.Errno { return openErrno(v, "sub", esys.O_RDWR|esys.O_DIRECTORY) }, esys.EISDIR},
		{"open to create", func() esys.Errno { return openErrno(v, "new", esys.O_RDONLY|esys.O_CREAT) }, esys.EROFS},
		{"open to truncate", func() esys.Errno { return openErrno(v, "x.txt", esys.O_RDONLY|esys.O_TRUNC) }, esys.EROFS},
		{"mkdir", func() esys.Errno { return v.Mkdir("m", 0o755) }, esys.EROFS},
		{"rename", func() esys.Errno { return v.Rename("x.txt", "y") }, esys.EROFS},
		{"rmdir", func() esys.Errno { return v.Rmdir("sub") }, esys.EROFS},
		{"unlink", func() esys.Errno { return v.Unlink("x.txt") }, esys.EROFS},
		{"link", func() esys.Errno { return v.Link("x.txt", "h") }, esys.EROFS},
		{"symlink", func() esys.Errno { return v.Symlink("x.txt", "s") }, esys.EROFS},
		{"chmod", func() esys.Errno { return v.Chmod("x.txt", 0o777) }, esys.EROFS},
		{"utimens", func() esys.Errno { return v.Utimens("x.txt", 0, 0) }, esys.EROFS},
		{"reading still works", func() esys.Errno { return openErrno(v, "x.txt", esys.O_RDONLY) }, 0},
	} {
		t.Run(tc.name+" gives "+errnoName(tc.want), func(t *testing.T) {
			if errno := tc.op(); errno != tc.want {
				t.Fatalf("errno %v, want %v", errno, tc.want)
			}
		})
	}

	t.Run("an open file refuses changes like sysfs.ReadFS", func(t *testing.T) {
		f, errno := v.OpenFile("x.txt", esys.O_RDONLY, 0)
		if errno != 0 {
			t.Fatal(errno)
		}
		defer f.Close()
		d, errno := v.OpenFile("sub", esys.O_RDONLY, 0)
		if errno != 0 {
			t.Fatal(errno)
		}
		defer d.Close()
		for _, c := range []struct {
			name string
			got  esys.Errno
			want esys.Errno
		}{
			{"write", second(f.Write([]byte("x"))), esys.EBADF},
			{"pwrite", second(f.Pwrite([]byte("x"), 0)), esys.EBADF},
			{"write to a directory", second(d.Write([]byte("x"))), esys.EISDIR},
			{"truncate", f.Truncate(0), esys.EBADF},
			{"sync", f.Sync(), esys.EBADF},
			{"datasync", f.Datasync(), esys.EBADF},
			{"utimens", f.Utimens(0, 0), esys.EBADF},
		} {
			if c.got != c.want {
				t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
			}
		}
	})
	if after := snapshot(t, filepath.Dir(fx.vol)); !maps.Equal(before, after) {
		t.Fatalf("the host tree changed:\nbefore %v\nafter  %v", before, after)
	}
}

func second(_ int, errno esys.Errno) esys.Errno { return errno }

func errnoName(e esys.Errno) string {
	if e == 0 {
		return "success"
	}
	return e.Error()
}

// A guest that may rename directories could swap, between a check of a path
// and its use, a directory for one that holds a symlink at the same place
// (several instances share a volume). Resolution by openat2 leaves no such
// window: no read ever reaches the outside file.
func TestVolumeFSHasNoCheckThenUseRace(t *testing.T) {
	fx := newVolumeFixture(t)
	v := newVolume(t, fx.vol, false)
	// a/d/secret is a real file; b/d is a symlink to the outside directory.
	for _, d := range []string{"a/d", "b"} {
		if err := os.MkdirAll(filepath.Join(fx.vol, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(fx.vol, "a/d/secret"), []byte("inside\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(fx.outside, filepath.Join(fx.vol, "b/d")); err != nil {
		t.Fatal(err)
	}
	if errno := v.Rename("a", "x"); errno != 0 {
		t.Fatal(errno)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the "other instance": swaps a and b in and out of x
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = v.Rename("x", "a")
			_ = v.Rename("b", "x")
			_ = v.Rename("x", "b")
			_ = v.Rename("a", "x")
		}
	}()
	deadline := time.Now().Add(150 * time.Millisecond)
	reads := 0
	buf := make([]byte, 64)
	for time.Now().Before(deadline) {
		f, errno := v.OpenFile("x/d/secret", esys.O_RDONLY, 0)
		if errno != 0 {
			continue
		}
		n, _ := f.Read(buf)
		f.Close()
		reads++
		if strings.Contains(string(buf[:n]), "SECRET") {
			close(stop)
			wg.Wait()
			t.Fatalf("read the outside file after %d reads", reads)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d reads of the inside file while swapping", reads)
}

func TestNewVolumeFS(t *testing.T) {
	fx := newVolumeFixture(t)
	link := filepath.Join(t.TempDir(), "vol-link")
	if err := os.Symlink(fx.vol, link); err != nil {
		t.Fatal(err)
	}
	t.Run("a mount root that is a symlink serves its target", func(t *testing.T) {
		v := newVolume(t, link, true)
		if st, errno := v.Stat("x.txt"); errno != 0 || st.Size != int64(len("hello\n")) {
			t.Fatalf("Stat: %+v %v", st, errno)
		}
	})
	for _, tc := range []struct{ name, dir string }{
		{"a missing directory is an error", filepath.Join(fx.vol, "none")},
		{"a file is an error", filepath.Join(fx.vol, "x.txt")},
		{"a symlink to a file is an error", filepath.Join(fx.vol, "rel")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := child.NewVolumeFS(tc.dir, false); err == nil {
				t.Fatal("no error")
			}
		})
	}
}
