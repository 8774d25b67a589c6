package manager_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/manager"
)

// Run one module once in a sandboxed child, as `wagi-fcgi run` does. The
// module's output goes to this process's stdout. (The module is the test
// fixture built from tests/testdata/modules/hello.c by the package's tests.)
func ExampleRunOnce() {
	lim := config.Default().Limits
	lim.Timeout = 5 * time.Second
	state, _ := os.MkdirTemp("", "wagi-example-")
	defer os.RemoveAll(state)

	code, err := manager.RunOnce(context.Background(), manager.RunSpec{
		Module:   filepath.Join("..", "build", "modules", "hello.wasm"),
		Limits:   lim,
		StateDir: state,
	}, manager.Options{
		ChildCommand: []string{os.Args[0], "child"}, // this test binary doubles as the child
		Logger:       slog.New(slog.DiscardHandler),
	})
	fmt.Println("exit code", code, err)
	// Output:
	// Content-Type: text/plain
	//
	// Hello, world!
	// exit code 0 <nil>
}
