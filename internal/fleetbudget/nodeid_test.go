package fleetbudget

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNodeID(t *testing.T) {
	t.Run("a configured id wins and nothing is written", func(t *testing.T) {
		dir := t.TempDir()
		id, err := NodeID("edge-1", dir)
		if err != nil || id != "edge-1" {
			t.Fatalf("NodeID = %q, %v", id, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "node-id")); err == nil {
			t.Error("node-id written though an id was configured")
		}
	})
	t.Run("the first start makes an id and later starts keep it", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "state")
		first, err := NodeID("", dir)
		if err != nil || !strings.HasPrefix(first, "node-") {
			t.Fatalf("NodeID = %q, %v", first, err)
		}
		again, err := NodeID("", dir)
		if err != nil || again != first {
			t.Errorf("second start: %q, %v; want %q", again, err, first)
		}
		if other, _ := NodeID("", t.TempDir()); other == first {
			t.Errorf("two state dirs got the same id %q", first)
		}
	})
	t.Run("a damaged id file is an error, not a new id", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "node-id"), []byte("bad id\x00\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if id, err := NodeID("", dir); err == nil || !strings.Contains(err.Error(), "node-id") {
			t.Errorf("NodeID = %q, %v; want an error naming the file", id, err)
		}
	})
}
