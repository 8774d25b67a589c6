package ipfs_test

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"

	esys "github.com/tetratelabs/wazero/experimental/sys"

	"github.com/wagi-fcgi/wagi-fcgi/internal/quota"
	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// mfsSize is the size of an MFS file by `ipfs files stat`, -1 if missing.
func mfsSize(t *testing.T, k *testenv.Kubo, p string) int64 {
	t.Helper()
	out := strings.TrimSpace(mfsCLI(t, k, "ls", "-l", p[:strings.LastIndexByte(p, '/')]))
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == p[strings.LastIndexByte(p, '/')+1:] {
			n, _ := strconv.ParseInt(f[2], 10, 64)
			return n
		}
	}
	return -1
}

func TestMFSQuotas(t *testing.T) {
	k := testenv.StartKubo(t)
	q := func(root string, bytes, files int64) esys.FS {
		return mfsMount(t, k, root, ipfs.MFSOptions{QuotaBytes: bytes, QuotaFiles: files})
	}

	t.Run("writes past the byte quota fail with ENOSPC and what fit is kept", func(t *testing.T) {
		fsys := q("/q/bytes", 100<<10, 0)
		f := mfsMustOpen(t, fsys, "big", flagWrite)
		buf := bytes.Repeat([]byte("x"), 4096)
		n := 0
		var errno esys.Errno
		for n < 1<<20 {
			var k int
			if k, errno = f.Write(buf); errno != 0 {
				break
			}
			n += k
		}
		if errno != quota.ErrNoSpace || n != 100<<10 {
			t.Fatalf("wrote %d bytes, then %v; want %d then ErrNoSpace", n, errno, 100<<10)
		}
		if _, errno := f.Pwrite([]byte("y"), 0); errno != 0 {
			t.Fatalf("overwriting in place in a full buffer: %v", errno)
		}
		if errno := f.Close(); errno != 0 {
			t.Fatal(errno)
		}
		if got := mfsSize(t, k, "/q/bytes/big"); got != 100<<10 {
			t.Fatalf("MFS holds %d bytes", got)
		}
		// A later request sees the volume full, and free again after an unlink.
		fsys = q("/q/bytes", 100<<10, 0)
		if err := mfsWrite(fsys, "more", flagWrite, []byte("z")); !errorsIs(err, quota.ErrNoSpace) {
			t.Fatalf("writing into the full volume: %v", err)
		}
		if errno := fsys.Unlink("big"); errno != 0 {
			t.Fatal(errno)
		}
		if err := mfsWrite(fsys, "more", flagWrite, make([]byte, 100<<10)); err != nil {
			t.Fatalf("after the unlink, in the same request: %v", err)
		}
	})

	t.Run("truncate grows against the quota and shrinking frees room", func(t *testing.T) {
		fsys := q("/q/trunc", 1000, 0)
		f := mfsMustOpen(t, fsys, "t", esys.O_RDWR|esys.O_CREAT)
		if errno := f.Truncate(1001); errno != quota.ErrNoSpace {
			t.Fatalf("truncate past the quota: %v", errno)
		}
		if errno := f.Truncate(1000); errno != 0 {
			t.Fatal(errno)
		}
		if errno := f.Truncate(10); errno != 0 {
			t.Fatal(errno)
		}
		if errno := f.Close(); errno != 0 {
			t.Fatal(errno)
		}
		if err := mfsWrite(fsys, "u", flagWrite, make([]byte, 990)); err != nil {
			t.Fatalf("after shrinking: %v", err)
		}
	})

	t.Run("renaming over a file frees its room", func(t *testing.T) {
		fsys := q("/q/rename", 300, 0)
		mfsMustWrite(t, fsys, "a", strings.Repeat("a", 100))
		mfsMustWrite(t, fsys, "b", strings.Repeat("b", 200))
		if errno := fsys.Rename("a", "b"); errno != 0 {
			t.Fatal(errno)
		}
		if err := mfsWrite(fsys, "c", flagWrite, make([]byte, 200)); err != nil {
			t.Fatalf("after renaming over 200 bytes: %v", err)
		}
	})

	t.Run("the file quota counts the files and directories already there", func(t *testing.T) {
		mfsCLI(t, k, "mkdir", "-p", "/q/files/d")
		fsys := q("/q/files", 0, 3)
		mfsMustWrite(t, fsys, "d/1", "1")
		if _, errno := fsys.OpenFile("2", flagWrite, 0o644); errno != 0 {
			t.Fatal(errno) // the third entry
		}
		fsys = q("/q/files", 0, 3)
		mfsMustWrite(t, fsys, "2", "2")
		if _, errno := fsys.OpenFile("3", flagWrite, 0o644); errno != quota.ErrNoSpace {
			t.Fatalf("a fourth entry: %v", errno)
		}
		if errno := fsys.Mkdir("e", 0o755); errno != quota.ErrNoSpace {
			t.Fatalf("a fourth entry (directory): %v", errno)
		}
		mfsMustWrite(t, fsys, "2", "rewritten") // an existing file needs no entry
		if errno := fsys.Unlink("d/1"); errno != 0 {
			t.Fatal(errno)
		}
		if errno := fsys.Mkdir("e", 0o755); errno != 0 {
			t.Fatalf("after an unlink: %v", errno)
		}
	})

	t.Run("a write-back that no longer fits fails at Close and leaves MFS as it was", func(t *testing.T) {
		a, b := q("/q/late", 1000, 0), q("/q/late", 1000, 0)
		mfsMustWrite(t, a, "old", "old content")
		fa := mfsMustOpen(t, a, "old", esys.O_RDWR)
		if _, errno := fa.Pwrite(make([]byte, 600), 0); errno != 0 {
			t.Fatal(errno)
		}
		// Another request fills the volume meanwhile.
		if err := mfsWrite(b, "other", flagWrite, make([]byte, 900)); err != nil {
			t.Fatal(err)
		}
		if errno := fa.Close(); errno != quota.ErrNoSpace {
			t.Fatalf("Close: %v, want ErrNoSpace", errno)
		}
		if got := mfsMustRead(t, a, "old"); got != "old content" {
			t.Fatalf("the file holds %q", got)
		}
	})
}

func errorsIs(err error, errno esys.Errno) bool {
	return err != nil && strings.HasSuffix(err.Error(), errno.Error())
}

func TestMFSTimesOfNewAndTouchedFiles(t *testing.T) {
	k := testenv.StartKubo(t)
	fsys := mfsMount(t, k, "/wagi/times")
	near := func(what string, ns int64) {
		t.Helper()
		if d := time.Since(time.Unix(0, ns)); d < -time.Minute || d > time.Minute {
			t.Errorf("%s: mtime %v, want about now", what, time.Unix(0, ns))
		}
	}

	f := mfsMustOpen(t, fsys, "new", flagWrite)
	st, errno := f.Stat()
	if errno != 0 {
		t.Fatal(errno)
	}
	near("fstat of a new file", st.Mtim)
	if _, errno := f.Write([]byte("x")); errno != 0 {
		t.Fatal(errno)
	}
	if errno := f.Close(); errno != 0 {
		t.Fatal(errno)
	}
	st, errno = fsys.Stat("new")
	if errno != 0 {
		t.Fatal(errno)
	}
	near("stat of a new file after its close", st.Mtim)

	// futimens on an open file shows in that handle's fstat.
	const when = 1234567890_500000000
	f = mfsMustOpen(t, fsys, "new", esys.O_RDWR)
	if errno := f.Utimens(esys.UTIME_OMIT, when); errno != 0 {
		t.Fatal(errno)
	}
	if st, _ := f.Stat(); st.Mtim != when {
		t.Errorf("fstat after futimens: %d, want %d", st.Mtim, when)
	}
	if errno := f.Utimens(esys.UTIME_OMIT, esys.UTIME_OMIT); errno != 0 {
		t.Fatal(errno)
	}
	if st, _ := f.Stat(); st.Mtim != when {
		t.Errorf("fstat after futimens with UTIME_OMIT: %d, want %d", st.Mtim, when)
	}
	f.Close()
	if st, _ := fsys.Stat("new"); st.Mtim != when {
		t.Errorf("stat after futimens: %d, want %d", st.Mtim, when)
	}

	// Writing an old file makes it new again.
	mfsMustWrite(t, fsys, "new", "y")
	st, _ = fsys.Stat("new")
	near("stat after a write", st.Mtim)

	// A directory handle too.
	if errno := fsys.Mkdir("d", 0o755); errno != 0 {
		t.Fatal(errno)
	}
	d := mfsMustOpen(t, fsys, "d", esys.O_RDONLY|esys.O_DIRECTORY)
	defer d.Close()
	if _, errno := d.Stat(); errno != 0 {
		t.Fatal(errno)
	}
	if errno := d.Utimens(esys.UTIME_OMIT, when); errno != 0 {
		t.Fatal(errno)
	}
	if st, _ := d.Stat(); st.Mtim != when {
		t.Errorf("fstat of a directory after futimens: %d, want %d", st.Mtim, when)
	}
}
