package manager

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A compile process owns the cache it writes, so it could put a link to
// /etc in it (or swap a directory for one while the manager walks it):
// the manager's walk, as root, must never reach past the cache.
func TestGivingTheCacheToTheCompileUserNeverFollowsALink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("chown needs root: run the suite as root (as CI does)")
	}
	dir := t.TempDir()
	outside := filepath.Join(dir, "outside")
	cache := filepath.Join(dir, "cache")
	for _, d := range []string{outside, filepath.Join(cache, "v1")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	secret := filepath.Join(outside, "shadow")
	entry := filepath.Join(cache, "v1", "entry")
	for _, f := range []string{secret, entry} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for link, to := range map[string]string{
		filepath.Join(cache, "v1", "to-file"): secret,
		filepath.Join(cache, "to-dir"):        outside,
	} {
		if err := os.Symlink(to, link); err != nil {
			t.Fatal(err)
		}
	}
	s := &store{cacheDir: cache, owner: &[2]int{54321, 54321}}
	if err := s.chownCacheLocked(); err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		uid  uint32
		mode os.FileMode
	}{
		cache:                      {54321, 0o755},
		filepath.Join(cache, "v1"): {54321, 0o755},
		entry:                      {54321, 0o644},
		outside:                    {0, 0o700},
		secret:                     {0, 0o600},
	}
	for p, w := range want {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != w.uid || os.FileMode(st.Mode&0o777) != w.mode {
			t.Errorf("%s: uid %d mode %o, want uid %d mode %o", p, st.Uid, st.Mode&0o777, w.uid, w.mode)
		}
	}
}

// Where fs.protected_hardlinks is 0, the compile user can link a file of
// root's (same file system) into the cache: the manager's walk, as root,
// must not give that file away or make it readable.
func TestGivingTheCacheToTheCompileUserLeavesHardLinkedFilesAlone(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("chown needs root: run the suite as root (as CI does)")
	}
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	if err := os.MkdirAll(filepath.Join(cache, "v1"), 0o700); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "shadow")
	if err := os.WriteFile(secret, []byte("root:x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Made here by root; the compile user can where protected_hardlinks=0.
	if err := os.Link(secret, filepath.Join(cache, "v1", "entry")); err != nil {
		t.Fatal(err)
	}
	s := &store{cacheDir: cache, owner: &[2]int{54321, 54321}}
	if err := s.chownCacheLocked(); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(secret, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 0 || st.Mode&0o777 != 0o600 {
		t.Fatalf("root's file linked into the cache became uid %d mode %o", st.Uid, st.Mode&0o777)
	}
}

// The compile user can nest directories as deep as it likes, and bind a
// socket in the cache (which cannot be opened): the walk leaves such
// things as they are (nothing a child needs is deeper than one level),
// and the manager still starts.
func TestGivingTheCacheToTheCompileUserIsNotStoppedByWhatItFinds(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("chown needs root: run the suite as root (as CI does)")
	}
	cache := filepath.Join(t.TempDir(), "cache")
	deep := cache
	for i := 0; i < 20; i++ {
		deep = filepath.Join(deep, "d")
	}
	if err := os.MkdirAll(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(cache, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := &store{cacheDir: cache, owner: &[2]int{54321, 54321}}
	if err := s.chownCacheLocked(); err != nil {
		t.Fatalf("what the compile user put in the cache fails the walk (and the start): %v", err)
	}
}
