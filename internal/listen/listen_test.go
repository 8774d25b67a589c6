package listen

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpenUnixAppliesTheModeAndCleansUp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "wagi.sock")
	l, err := Open(Spec{Network: "unix", Address: path, Mode: 0o660})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o660 {
		t.Fatalf("mode %v, want a socket with 0660", st.Mode())
	}
	l.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the socket file outlived its listener: %v", err)
	}
}

func TestOpenUnixReplacesAStaleSocketButNotALiveOne(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wagi.sock")
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	live.(*net.UnixListener).SetUnlinkOnClose(false)
	if _, err := Open(Spec{Network: "unix", Address: path}); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("opening a live socket: %v", err)
	}
	live.Close() // leaves a stale socket file behind
	l, err := Open(Spec{Network: "unix", Address: path})
	if err != nil {
		t.Fatalf("replacing a stale socket: %v", err)
	}
	l.Close()
}

func TestOpenRefusesToReplaceAFileThatIsNotASocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wagi.sock")
	if err := os.WriteFile(path, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Spec{Network: "unix", Address: path}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("got %v", err)
	}
}

func TestOpenTCPAndUnknownNetworks(t *testing.T) {
	l, err := Open(Spec{Network: "tcp", Address: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := Open(Spec{Network: "udp", Address: "x"}); err == nil {
		t.Fatal("udp accepted")
	}
}

func TestSystemdIsNilWithoutActivation(t *testing.T) {
	t.Setenv("LISTEN_PID", "1")
	t.Setenv("LISTEN_FDS", "1")
	l, err := Systemd()
	if l != nil || err != nil {
		t.Fatalf("got %v, %v for another pid's sockets", l, err)
	}
}
