package child_test

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	esys "github.com/tetratelabs/wazero/experimental/sys"

	"github.com/wagi-fcgi/wagi-fcgi/child"
	"github.com/wagi-fcgi/wagi-fcgi/internal/quota"
)

const (
	wFlags = esys.O_WRONLY | esys.O_CREAT | esys.O_TRUNC
)

func newQuotaVolume(t *testing.T, dir string, q child.Quota) esys.FS {
	t.Helper()
	v, err := child.NewVolumeFSWithQuota(dir, false, q)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// diskUsage is what the directory holds: regular-file bytes and entries,
// the figure file left out.
func diskUsage(t *testing.T, dir string) (bytes, files int64) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir || d.Name() == ".wagi-usage" && filepath.Dir(p) == dir {
			return nil
		}
		files++
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			bytes += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return bytes, files
}

func mustOpenQ(t *testing.T, v esys.FS, name string, flag esys.Oflag) esys.File {
	t.Helper()
	f, errno := v.OpenFile(name, flag, 0o644)
	if errno != 0 {
		t.Fatalf("open %s: %v", name, errno)
	}
	return f
}

// writeAll writes n bytes in pieces of chunk and returns how many went in
// and the errno that stopped it.
func writeAll(f esys.File, n, chunk int) (int, esys.Errno) {
	buf := bytes.Repeat([]byte("x"), chunk)
	done := 0
	for done < n {
		k, errno := f.Write(buf[:min(chunk, n-done)])
		done += k
		if errno != 0 {
			return done, errno
		}
	}
	return done, 0
}

func TestAVolumeRefusesWritesPastItsByteQuota(t *testing.T) {
	dir := t.TempDir()
	v := newQuotaVolume(t, dir, child.Quota{Bytes: 100 << 10})
	f := mustOpenQ(t, v, "big", wFlags)
	n, errno := writeAll(f, 1<<20, 4096)
	if errno != quota.ErrNoSpace {
		t.Fatalf("writing 1 MiB into a 100 KiB volume stopped with %v after %d bytes, want ErrNoSpace", errno, n)
	}
	if n != 100<<10 {
		t.Fatalf("%d bytes went in, want exactly the quota (%d)", n, 100<<10)
	}
	// Overwriting in place needs no room.
	if _, errno := f.Pwrite([]byte("yyyy"), 0); errno != 0 {
		t.Fatalf("overwriting in place in a full volume: %v", errno)
	}
	f.Close()
	if b, _ := diskUsage(t, dir); b > 100<<10 {
		t.Fatalf("the directory holds %d bytes, over the quota", b)
	}
	// The volume stays readable, and deleting frees room.
	if _, errno := v.Stat("big"); errno != 0 {
		t.Fatal(errno)
	}
	if errno := v.Unlink("big"); errno != 0 {
		t.Fatal(errno)
	}
	f = mustOpenQ(t, v, "again", wFlags)
	if n, errno := writeAll(f, 100<<10, 4096); errno != 0 {
		t.Fatalf("after the delete, writing the quota again stopped at %d: %v", n, errno)
	}
	f.Close()
}

func TestTruncateGrowsAgainstTheQuotaAndShrinkingFreesRoom(t *testing.T) {
	dir := t.TempDir()
	v := newQuotaVolume(t, dir, child.Quota{Bytes: 1000})
	f := mustOpenQ(t, v, "t", wFlags)
	defer f.Close()
	if errno := f.Truncate(1001); errno != quota.ErrNoSpace {
		t.Fatalf("growing past the quota with truncate: %v", errno)
	}
	if errno := f.Truncate(1000); errno != 0 {
		t.Fatalf("growing to the quota with truncate: %v", errno)
	}
	if _, errno := f.Pwrite([]byte("z"), 1000); errno != quota.ErrNoSpace {
		t.Fatalf("a pwrite past the end of a full volume: %v", errno)
	}
	if errno := f.Truncate(10); errno != 0 {
		t.Fatal(errno)
	}
	g := mustOpenQ(t, v, "u", wFlags)
	defer g.Close()
	if n, errno := writeAll(g, 990, 100); errno != 0 {
		t.Fatalf("after shrinking, %d of 990 bytes: %v", n, errno)
	}
	if _, errno := g.Write([]byte("!")); errno != quota.ErrNoSpace {
		t.Fatalf("one byte past: %v", errno)
	}
	// O_TRUNC frees the file's bytes.
	h := mustOpenQ(t, v, "u", wFlags)
	h.Close()
	// (g's offset is still 990: writing there would grow the file to 991.)
	if _, errno := g.Pwrite(bytes.Repeat([]byte("!"), 990), 0); errno != 0 {
		t.Fatalf("after O_TRUNC freed room: %v", errno)
	}
}

func TestRenameOverAndLinkKeepTheFigure(t *testing.T) {
	dir := t.TempDir()
	v := newQuotaVolume(t, dir, child.Quota{Bytes: 300, Files: 10})
	write := func(name string, n int) {
		t.Helper()
		f := mustOpenQ(t, v, name, wFlags)
		defer f.Close()
		if _, errno := writeAll(f, n, n); errno != 0 {
			t.Fatalf("writing %d bytes to %s: %v", n, name, errno)
		}
	}
	write("a", 100)
	write("b", 150)
	// Renaming a over b frees b's 150 bytes and one entry.
	if errno := v.Rename("a", "b"); errno != 0 {
		t.Fatal(errno)
	}
	write("c", 200)
	// A hard link counts its file once more, as a walk of the names does.
	if errno := v.Link("c", "d"); errno != quota.ErrNoSpace {
		t.Fatalf("linking 200 more bytes into 300: %v", errno)
	}
	if errno := v.Unlink("c"); errno != 0 {
		t.Fatal(errno)
	}
	if errno := v.Link("b", "d"); errno != 0 {
		t.Fatalf("linking 100 bytes: %v", errno)
	}
	// Renaming one name of a file onto another of the same file changes
	// nothing (both stay).
	if errno := v.Rename("b", "d"); errno != 0 {
		t.Fatal(errno)
	}
	checkFigure(t, v, dir)
}

func TestAVolumeRefusesEntriesPastItsFileQuota(t *testing.T) {
	dir := t.TempDir()
	v := newQuotaVolume(t, dir, child.Quota{Files: 3})
	if errno := v.Mkdir("d", 0o755); errno != 0 {
		t.Fatal(errno)
	}
	mustOpenQ(t, v, "d/1", wFlags).Close()
	mustOpenQ(t, v, "2", wFlags).Close()
	if _, errno := v.OpenFile("3", wFlags, 0o644); errno != quota.ErrNoSpace {
		t.Fatalf("a fourth entry: %v", errno)
	}
	if errno := v.Mkdir("e", 0o755); errno != quota.ErrNoSpace {
		t.Fatalf("a fourth entry (directory): %v", errno)
	}
	// Opening an existing file for writing needs no new entry.
	mustOpenQ(t, v, "2", wFlags).Close()
	if errno := v.Unlink("d/1"); errno != 0 {
		t.Fatal(errno)
	}
	if errno := v.Rmdir("d"); errno != 0 {
		t.Fatal(errno)
	}
	mustOpenQ(t, v, "3", wFlags).Close()
	mustOpenQ(t, v, "4", wFlags).Close()
	if _, files := diskUsage(t, dir); files != 3 {
		t.Fatalf("%d entries, want 3", files)
	}
}

func TestWhatIsAlreadyInTheDirectoryCounts(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "old"), make([]byte, 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	v := newQuotaVolume(t, dir, child.Quota{Bytes: 4000})
	f := mustOpenQ(t, v, "new", wFlags)
	if _, errno := f.Write([]byte("x")); errno != quota.ErrNoSpace {
		t.Fatalf("writing into a volume already over its quota: %v", errno)
	}
	f.Close()
	// Still readable; deleting the old file makes room.
	if st, errno := v.Stat("sub/old"); errno != 0 || st.Size != 5000 {
		t.Fatalf("stat: %v %v", st.Size, errno)
	}
	if errno := v.Unlink("sub/old"); errno != 0 {
		t.Fatal(errno)
	}
	f = mustOpenQ(t, v, "new", wFlags)
	if _, errno := writeAll(f, 4000, 1000); errno != 0 {
		t.Fatal(errno)
	}
	f.Close()
}

func TestTheFigureFileIsHiddenFromTheGuest(t *testing.T) {
	dir := t.TempDir()
	for i := range 5 {
		if err := os.WriteFile(filepath.Join(dir, "f"+string(rune('a'+i))), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v := newQuotaVolume(t, dir, child.Quota{Bytes: 1 << 20})
	mustOpenQ(t, v, "g", wFlags).Close() // creates the figure
	if _, err := os.Stat(filepath.Join(dir, ".wagi-usage")); err != nil {
		t.Fatalf("no figure file: %v", err)
	}
	for _, name := range []string{".wagi-usage", "/.wagi-usage", "sub/../.wagi-usage", ".wagi-usage/"} {
		if _, errno := v.OpenFile(name, esys.O_RDONLY, 0); errno != esys.EPERM {
			t.Errorf("open %q: %v, want EPERM", name, errno)
		}
		if _, errno := v.Stat(name); errno != esys.EPERM {
			t.Errorf("stat %q: %v, want EPERM", name, errno)
		}
	}
	if errno := v.Unlink(".wagi-usage"); errno != esys.EPERM {
		t.Errorf("unlink: %v", errno)
	}
	if errno := v.Rename("g", ".wagi-usage"); errno != esys.EPERM {
		t.Errorf("rename onto it: %v", errno)
	}
	// Listed in pieces of every size, the root never shows it and shows
	// everything else (wazero takes a short piece for the end).
	for n := 1; n <= 8; n++ {
		d := mustOpenQ(t, v, ".", esys.O_RDONLY|esys.O_DIRECTORY)
		var names []string
		for {
			ents, errno := d.Readdir(n)
			if errno != 0 {
				t.Fatal(errno)
			}
			for _, e := range ents {
				names = append(names, e.Name)
			}
			if len(ents) < n {
				break
			}
		}
		d.Close()
		if got := strings.Join(names, ","); len(names) != 6 || strings.Contains(got, ".wagi-usage") {
			t.Fatalf("listing by %d: %s", n, got)
		}
	}
}

func TestAStaleOrDamagedFigureIsRecomputed(t *testing.T) {
	dir := t.TempDir()
	v := newQuotaVolume(t, dir, child.Quota{Bytes: 1000})
	f := mustOpenQ(t, v, "a", wFlags)
	if _, errno := writeAll(f, 500, 500); errno != 0 {
		t.Fatal(errno)
	}
	f.Close()
	fig := filepath.Join(dir, ".wagi-usage")
	for name, content := range map[string]string{
		"garbage": "not a figure",
		"old":     "wagi-usage v1 0000000000000999999 0000000000000000001 " + "0000000000000000001\n",
		"future":  "wagi-usage v1 0000000000000000000 0000000000000000000 " + "9000000000000000000\n",
	} {
		if err := os.WriteFile(fig, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		g := mustOpenQ(t, v, "b", wFlags)
		if n, errno := writeAll(g, 600, 100); errno != quota.ErrNoSpace || n != 500 {
			t.Errorf("%s figure: %d bytes then %v, want 500 then ErrNoSpace", name, n, errno)
		}
		g.Close()
	}
}

func TestTwoVolumesOfOneDirectoryShareTheQuota(t *testing.T) {
	dir := t.TempDir()
	const q = 256 << 10
	var wg sync.WaitGroup
	got := make([]int, 4)
	for i := range got {
		v := newQuotaVolume(t, dir, child.Quota{Bytes: q})
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, errno := v.OpenFile("w"+string(rune('0'+i)), wFlags, 0o644)
			if errno != 0 {
				t.Error(errno)
				return
			}
			defer f.Close()
			got[i], _ = writeAll(f, q, 1000)
		}()
	}
	wg.Wait()
	total := got[0] + got[1] + got[2] + got[3]
	if b, _ := diskUsage(t, dir); b != int64(total) || total > q || total < q-3*1000 {
		t.Fatalf("writers put in %v (total %d), the directory holds %d; quota %d", got, total, b, q)
	}
	checkFigure(t, newQuotaVolume(t, dir, child.Quota{Bytes: q}), dir)
}

// checkFigure compares the figure file with the directory.
func checkFigure(t *testing.T, _ esys.FS, dir string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, ".wagi-usage"))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	bytes, files := diskUsage(t, dir)
	if len(f) != 5 || f[2] != fmt.Sprintf("%019d", bytes) || f[3] != fmt.Sprintf("%019d", files) {
		t.Fatalf("figure %q, directory holds %d bytes in %d entries", b, bytes, files)
	}
}

// BenchmarkVolumeWrite is the cost of the quota's bookkeeping per write:
// 4 KiB writes to one file, rewound every 256 writes (1 MiB).
func BenchmarkVolumeWrite(b *testing.B) {
	for _, bc := range []struct {
		name string
		q    child.Quota
	}{{"no quota", child.Quota{}}, {"quota", child.Quota{Bytes: 64 << 20, Files: 1000}}} {
		b.Run(bc.name, func(b *testing.B) {
			v, err := child.NewVolumeFSWithQuota(b.TempDir(), false, bc.q)
			if err != nil {
				b.Fatal(err)
			}
			f, errno := v.OpenFile("w", wFlags, 0o644)
			if errno != 0 {
				b.Fatal(errno)
			}
			defer f.Close()
			buf := make([]byte, 4096)
			b.SetBytes(int64(len(buf)))
			for i := 0; b.Loop(); i++ {
				if i%256 == 0 {
					if _, errno := f.Seek(0, 0); errno != 0 {
						b.Fatal(errno)
					}
				}
				if _, errno := f.Write(buf); errno != 0 {
					b.Fatal(errno)
				}
			}
		})
	}
}
