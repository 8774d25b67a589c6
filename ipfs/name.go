package ipfs

import (
	"context"
	"fmt"
	"time"
)

// MFSDirCID returns the CID of the MFS directory at mfsPath, what
// `ipfs files stat --hash` prints. It wraps ErrNotFound while the
// directory does not exist.
func (c *Client) MFSDirCID(ctx context.Context, mfsPath string) (string, error) {
	var st struct {
		Hash string
		Type string
	}
	if err := c.api.Request("files/stat", mfsPath).Option("hash", true).Exec(ctx, &st); err != nil {
		return "", classify(ctx, err)
	}
	if st.Type != "directory" {
		return "", fmt.Errorf("%w: mfs:%s is a %s", ErrNotFile, mfsPath, st.Type)
	}
	if _, err := parsePath(st.Hash); err != nil || st.Hash == "" {
		return "", fmt.Errorf("files/stat mfs:%s: the node answered an invalid CID %q", mfsPath, st.Hash)
	}
	return st.Hash, nil
}

// PublishName points the IPNS name of the node's key at /ipfs/cid, with a
// record TTL of ttl (how long resolvers may cache it), and returns the
// name. An offline node publishes locally (allow-offline). It is
// PublishRecord, whose answer is bounded and checked, with these options.
func (c *Client) PublishName(ctx context.Context, key, cid string, ttl time.Duration) (string, error) {
	return c.PublishRecord(ctx, key, "/ipfs/"+cid, NameOptions{TTL: ttl, AllowOffline: true})
}
