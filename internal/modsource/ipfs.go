package modsource

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// ipfsSource is an immutable /ipfs/ path, or a mutable /ipns/ name that
// resolves to one, fetched from the kubo node.
type ipfsSource struct {
	c    *ipfs.Client  // nil: no node configured
	path string        // /ipfs/CID[/sub] or /ipns/NAME[/sub]
	ttl  time.Duration // an IPNS name's; 0 for an immutable path
}

func (s *ipfsSource) Kind() string { return "IPFS" }

func (s *ipfsSource) Name() string { return s.path }
func (s *ipfsSource) Remote() bool { return true }

func (s *ipfsSource) TTL() time.Duration { return s.ttl }

func (s *ipfsSource) Resolve(ctx context.Context) (string, error) {
	if s.ttl == 0 { // immutable
		return s.path, nil
	}
	if s.c == nil {
		return "", fmt.Errorf("%w: no IPFS client", ipfs.ErrUnavailable)
	}
	return s.c.Resolve(ctx, s.path)
}

func (s *ipfsSource) Fetch(ctx context.Context, id string, max int64) ([]byte, error) {
	if s.c == nil {
		return nil, fmt.Errorf("%w: no IPFS client", ipfs.ErrUnavailable)
	}
	return s.c.Fetch(ctx, id, max)
}

func (s *ipfsSource) Classify(err error, gateway bool) (Failure, string, bool) {
	return IPFSFailure(err, gateway)
}

// IPFSFailure classifies the IPFS client's errors (modules, and directory
// volumes).
func IPFSFailure(err error, gateway bool) (Failure, string, bool) {
	switch {
	case errors.Is(err, ipfs.ErrUnavailable):
		return Unreachable, "the module is not cached and the IPFS node is unreachable", true
	case errors.Is(err, ipfs.ErrTimeout):
		return TimedOut, "fetching the module from IPFS timed out", true
	case errors.Is(err, ipfs.ErrDirTooLarge):
		return Unusable, "the IPFS directory is larger than max_dir_size or has more entries than max_dir_files", true
	case errors.Is(err, ipfs.ErrTooLarge):
		return Unusable, "the module is larger than max_module_size", true
	case errors.Is(err, ipfs.ErrNotFound) && gateway:
		return NoSuchCID, "no such module in IPFS", true
	case errors.Is(err, ipfs.ErrNotFound), errors.Is(err, ipfs.ErrNotFile):
		return Unusable, "the module could not be found in IPFS", true
	}
	return 0, "", false
}
