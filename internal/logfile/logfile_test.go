package logfile

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReopenStartsAFreshFileAfterRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "wagi.log")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	log := NewLogger(f, "json")
	log.Info("before")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	log.Info("still the old file")
	if err := f.Reopen(); err != nil {
		t.Fatal(err)
	}
	log.Info("after")
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if !strings.Contains(string(old), "still the old file") || strings.Contains(string(old), `"after"`) {
		t.Fatalf("rotated file: %s", old)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(string(cur))), &rec); err != nil || rec["msg"] != "after" {
		t.Fatalf("new file %q: %v", cur, err)
	}
}

func TestTextIsTheDefaultFormat(t *testing.T) {
	var b strings.Builder
	NewLogger(&b, "text").Info("hello", "k", 1)
	if !strings.Contains(b.String(), "msg=hello k=1") {
		t.Fatalf("got %q", b.String())
	}
}
