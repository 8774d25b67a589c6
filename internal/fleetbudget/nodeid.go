package fleetbudget

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/wagi-fcgi/wagi-fcgi/config"
)

// NodeID is this node's id in the store: configured if set, else the one
// kept in stateDir/node-id, made (random) at the first start. It must
// outlive restarts: a node that came back under a new id would have its
// day's spend counted twice, once under each id.
func NodeID(configured, stateDir string) (string, error) {
	if configured != "" {
		return configured, nil
	}
	path := filepath.Join(stateDir, "node-id")
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if err := config.CheckNodeID(id); err != nil {
			return "", fmt.Errorf("%s: %w (delete it to make a new one, or set [budget] node_id)", path, err)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read node id: %w", err)
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", err
	}
	id := "node-" + hex.EncodeToString(rnd[:])
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	// Link, not rename: of two processes starting at once, the first
	// one's id is kept and the second reads it.
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, fs.ErrExist) {
		os.Remove(tmp)
		return "", fmt.Errorf("node id: %w", err)
	}
	os.Remove(tmp)
	return NodeID("", stateDir)
}
