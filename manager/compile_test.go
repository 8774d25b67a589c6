package manager_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/manager"
	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// hostileCompile stands in for a compile process that untrusted bytes have
// taken over: it answers with what mode says, whatever it was asked.
func hostileCompile(mode string) {
	key := strings.Repeat("ab", 32)
	switch mode {
	case "flood": // far more than the manager reads
		chunk := []byte(strings.Repeat("export \"x\"\n", 100_000))
		for range 100 {
			if _, err := os.Stdout.Write(chunk); err != nil {
				break
			}
		}
	case "garbage":
		fmt.Print("wagi-fcgi-compile 1\nkey " + key + "\nok\nexport _start\nend\n")
	case "other-bytes": // well-formed, for bytes that are not the module's
		fmt.Print("wagi-fcgi-compile 1\nkey " + key + "\nok\ncode " + strings.Repeat("cd", 32) + "\ncode " + strings.Repeat("ef", 32) + "\nexport \"_start\"\nend\n")
	case "crash":
		fmt.Fprintln(os.Stderr, "panic: something the bytes did")
		os.Exit(2)
	case "hang": // until the wall limit
		time.Sleep(time.Hour)
	}
	os.Exit(0)
}

func TestAHostileCompileProcessIsAFailedCompileNeverTrusted(t *testing.T) {
	cases := []struct {
		mode, want string
	}{
		{"flood", "larger than 1048576 bytes"},
		{"garbage", "malformed compile result"},
		{"other-bytes", "for other bytes"},
		{"crash", "panic: something the bytes did"},
		{"hang", "compile_timeout (3s)"},
	}
	for _, tc := range cases {
		t.Run(tc.mode, func(t *testing.T) {
			dir := t.TempDir()
			cfg, err := config.Parse([]byte(fmt.Sprintf(`
[pool]
children = 1
[limits]
compile_timeout = "3s"
[[module]]
route = "/x"
module = %q
`, testenv.Module(t, "hello"))), "test.toml", dir)
			if err != nil {
				t.Fatal(err)
			}
			cfg.StateDir = filepath.Join(dir, "state")
			m, err := manager.New(cfg, manager.Options{
				Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
				ChildCommand:   []string{os.Args[0], "child"},
				CompileCommand: []string{os.Args[0], "hostile-compile", tc.mode},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			err = m.Start(context.Background())
			if err == nil || !strings.Contains(err.Error(), "invalid module") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an invalid module error saying %q", err, tc.want)
			}
			marks, _ := os.ReadDir(filepath.Join(cfg.StateDir, "bad"))
			if len(marks) != 1 {
				t.Errorf("%d bad marks, want 1", len(marks))
			}
		})
	}
}
