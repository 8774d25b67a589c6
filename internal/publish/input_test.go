package publish

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ipfs/boxo/files"
)

func TestReadModule(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "m.wasm")
	if err := os.WriteFile(good, []byte("\x00asm\x01\x00\x00\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.wasm")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path string
		max        int64
		want       string // "" = read
		is         error
	}{
		{"a regular file is read", good, 64, "", nil},
		{"a link to a regular file is read", link, 64, "", nil},
		{"a file over max_module_size is refused before it is read", good, 4, "8 bytes, over max_module_size", ErrModuleTooLarge},
		{"a FIFO is refused without waiting for a writer", fifo, 64, "is a FIFO", nil},
		{"/dev/zero is refused", "/dev/zero", 64, "is a character device", nil},
		{"a directory is refused", dir, 64, "is a directory", nil},
		{"a missing file is named", filepath.Join(dir, "nope"), 64, "nope: no such file", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := readModule(tc.path, tc.max)
			if tc.want == "" {
				if err != nil || len(b) != 8 {
					t.Fatalf("got %d bytes, %v", len(b), err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// sent reads a tree as the add does: every file's bytes, by path.
func sent(t *testing.T, d files.Directory, prefix string, out map[string]string) error {
	it := d.Entries()
	for it.Next() {
		p := prefix + it.Name()
		switch n := it.Node().(type) {
		case files.Directory:
			out[p+"/"] = ""
			if err := sent(t, n, p+"/", out); err != nil {
				return err
			}
		case files.File:
			b, err := io.ReadAll(n)
			n.Close()
			if err != nil {
				return err
			}
			out[p] = string(b)
		}
	}
	return it.Err()
}

func TestOpenTree(t *testing.T) {
	type fixture func(t *testing.T, dir string)
	write := func(rel, content string) fixture {
		return func(t *testing.T, dir string) {
			p := filepath.Join(dir, rel)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	many := func(n int, prefix string) fixture {
		return func(t *testing.T, dir string) {
			for i := range n {
				write(fmt.Sprintf("%s%d", prefix, i), "")(t, dir)
			}
		}
	}
	cases := []struct {
		name  string
		setup []fixture
		lim   dirLimits
		want  map[string]string // what is sent
		err   string
		is    error
	}{
		{name: "files and directories are sent, hidden ones left out",
			setup: []fixture{write("index.html", "hi"), write("sub/a.txt", "a"), write(".env", "SECRET=1"), write(".git/config", "x")},
			want:  map[string]string{"index.html": "hi", "sub/": "", "sub/a.txt": "a"}},
		{name: "hidden names are sent when asked for",
			setup: []fixture{write(".well-known/x", "y")}, lim: dirLimits{hidden: true},
			want: map[string]string{".well-known/": "", ".well-known/x": "y"}},
		{name: "a link out of the directory is refused, naming it and its target",
			setup: []fixture{write("a", "a"), func(t *testing.T, dir string) { os.Symlink("/etc/passwd", filepath.Join(dir, "pw")) }},
			err:   `pw is a symbolic link (to "/etc/passwd")`},
		{name: "a link inside the directory is refused too",
			setup: []fixture{write("a", "a"), func(t *testing.T, dir string) { os.Symlink("a", filepath.Join(dir, "b")) }},
			err:   `b is a symbolic link`},
		{name: "a FIFO is refused without being opened",
			setup: []fixture{func(t *testing.T, dir string) { syscall.Mkfifo(filepath.Join(dir, "f"), 0o644) }},
			err:   "f is a FIFO"},
		{name: "more entries than max_dir_files are refused",
			setup: []fixture{many(11, "f")}, lim: dirLimits{maxFiles: 10},
			err: "more than max_dir_files (10) entries", is: ErrDirTooLarge},
		{name: "subdirectories count against max_dir_files",
			setup: []fixture{write("a/b/c/d/e", "")}, lim: dirLimits{maxFiles: 4},
			err: "more than max_dir_files (4) entries", is: ErrDirTooLarge},
		{name: "more bytes than max_dir_size are refused",
			setup: []fixture{write("a", strings.Repeat("x", 600)), write("b", strings.Repeat("x", 600))}, lim: dirLimits{maxBytes: 1000},
			err: "more than max_dir_size (1000B) in its files", is: ErrDirTooLarge},
		{name: "a directory of many hidden files is not read to its end",
			setup: []fixture{many(1100, ".h")}, lim: dirLimits{maxFiles: 10},
			err: "more than 1040 entries, hidden ones included", is: ErrDirTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tc.setup {
				f(t, dir)
			}
			tr, top, err := openTree(dir, tc.lim)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || tc.is != nil && !errors.Is(err, tc.is) {
					t.Fatalf("got %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			got := map[string]string{}
			if err := sent(t, top, "", got); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("sent %v, want %v", got, tc.want)
			}
		})
	}
}

func TestATreeRefusesFilesChangedAfterTheWalk(t *testing.T) {
	cases := []struct {
		name   string
		change func(t *testing.T, dir string)
		want   string
	}{
		{"a file swapped for a link to /etc/passwd is not read", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "a"))
			if err := os.Symlink("/etc/passwd", filepath.Join(dir, "a")); err != nil {
				t.Fatal(err)
			}
		}, "opening"},
		{"a file swapped for another is refused", func(t *testing.T, dir string) {
			// Kept, so that the new file cannot get its inode number.
			os.Rename(filepath.Join(dir, "a"), filepath.Join(dir, "old"))
			os.WriteFile(filepath.Join(dir, "a"), []byte("abc"), 0o644)
		}, "changed while it was published"},
		{"a file that grew is refused", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "a"), []byte("abcdef"), 0o644)
		}, "grew while it was published"},
		{"a file that shrank is refused", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "a"), []byte("a"), 0o644)
		}, "shrank while it was published"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "a"), []byte("abc"), 0o644); err != nil {
				t.Fatal(err)
			}
			tr, top, err := openTree(dir, dirLimits{})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			tc.change(t, dir)
			err = sent(t, top, "", map[string]string{})
			if err == nil || !strings.Contains(err.Error(), tc.want) || tr.err == nil {
				t.Fatalf("got %v (tree: %v), want %q", err, tr.err, tc.want)
			}
		})
	}
}
