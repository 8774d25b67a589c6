package manager_test

import (
	"context"
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/manager"
	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// hostileFastChild plays a compromised child on the fast path: it starts
// like a real one, then writes lies into its scoreboard slot (a request of
// a route it was never given, on a connection that does not exist, a
// record ring that jumps) and garbage into its control socket.
func hostileFastChild() {
	conn := os.NewFile(3, "ipc")
	w := ipc.NewWriter(conn, 64<<10)
	r := ipc.NewReader(conn, 64<<10)
	_ = w.WriteFrame(ipc.TypeReady, nil)
	_ = w.Flush()
	for {
		t, _, err := r.ReadFrame()
		if err != nil {
			return
		}
		_ = w.WriteFrame(ipc.TypeDone, ipc.AppendDone(nil, &ipc.Done{Outcome: ipc.OutcomeOK}))
		_ = w.Flush()
		if t == ipc.TypeRoutes {
			break
		}
	}
	slot, err := unix.Mmap(7, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		os.Exit(3)
	}
	// Garbage on the control socket: short, unknown, out of range,
	// oversized, a stderr without its separator, a handback of a
	// connection it does not hold.
	for _, msg := range [][]byte{
		{'h'},
		append([]byte{'z'}, make([]byte, 20)...),
		{'c', 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0},
		{'h', 3, 0, 0, 0, 9, 9, 9, 9, 'x'},
		append([]byte{'e', 0, 0, 0, 0, 0, 0, 0, 0}, make([]byte, 100<<10)...),
		{'w', 0, 0, 0, 0, 0, 0, 0, 0},
	} {
		_, _ = unix.Write(4, msg)
	}
	// A record ring whose head runs far ahead of anything written, and
	// records with lengths past their fields.
	for i := 4096; i < len(slot); i++ {
		slot[i] = 0xff
	}
	binary.LittleEndian.PutUint64(slot[32:], 1<<40)
	// Then a "running" request of a route that does not exist, on a
	// connection out of range, with a request id that is not one.
	binary.LittleEndian.PutUint32(slot[4:], 1<<30)
	binary.LittleEndian.PutUint32(slot[16:], 99999)
	slot[64] = 200
	(*atomic.Uint64)(unsafe.Pointer(&slot[24])).Add(1)
	binary.LittleEndian.PutUint32(slot[0:], 2) // Running
	time.Sleep(time.Minute)
}

// TestACompromisedFastPathChildIsKilledAndTheManagerGoesOn: what a child
// writes into its slot and control socket is bounded and checked; lies
// about its request get it killed, and the manager serves on.
func TestACompromisedFastPathChildIsKilledAndTheManagerGoesOn(t *testing.T) {
	dir := t.TempDir()
	cfgText := strings.NewReplacer("{{mods}}", testenv.Modules(t)).Replace(`
[pool]
children = 1
[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"
`)
	cfg, err := config.Parse([]byte(cfgText), "test.toml", dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.StateDir = filepath.Join(dir, "state")
	if err := reachable(dir); err != nil {
		t.Fatal(err)
	}
	log := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(log, nil))
	fast, err := manager.NewFastPath(logger, 16, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	m, err := manager.New(cfg, manager.Options{
		Logger:       logger,
		ChildCommand: []string{os.Args[0], "hostile-child", "fast"},
		Fast:         fast,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(log.String(), `reason="ipc error"`) {
		if time.Now().After(deadline) {
			t.Fatalf("the lying child was not killed; log:\n%s", log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Its replacement lies the same way and is killed the same way: the
	// manager keeps going (and answers its status).
	for strings.Count(log.String(), `reason="ipc error"`) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the replacement was not killed; log:\n%s", log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if pids := m.ChildPIDs(); len(pids) > 1 {
		t.Fatalf("children %v", pids)
	}
	// Its lies cost the log a line or two each, not a flood.
	if n := len(log.String()); n > 1<<20 {
		t.Fatalf("%d KiB of log for two lying children", n>>10)
	}
}
