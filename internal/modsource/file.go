package modsource

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// fileSource is a local file: read at start, never from the network.
type fileSource struct{ path string }

func (s *fileSource) Kind() string                            { return "a file" }
func (s *fileSource) Name() string                            { return s.path }
func (s *fileSource) Remote() bool                            { return false }
func (s *fileSource) TTL() time.Duration                      { return 0 }
func (s *fileSource) Resolve(context.Context) (string, error) { return s.path, nil }

func (s *fileSource) Fetch(_ context.Context, _ string, max int64) ([]byte, error) {
	st, err := os.Stat(s.path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if max > 0 && st.Size() > max {
		return nil, fmt.Errorf("%d bytes, over max_module_size %d", st.Size(), max)
	}
	return os.ReadFile(s.path)
}

// Classify: a file's failures fail the start, and have no meaning of
// their own for a request.
func (s *fileSource) Classify(error, bool) (Failure, string, bool) { return 0, "", false }
