package ipfs

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/core/coreiface/options"
)

// Pin types as kubo names them.
const (
	PinRecursive = "recursive"
	PinDirect    = "direct"
)

// maxPinList bounds the entries one PinsNamed call reads: the name filter
// keeps the list to wagi-fcgi's own pins, but a node whose operator made
// millions of pins with a matching name must not make the caller hold them
// all.
const maxPinList = 1 << 16

// NormalizeCID returns the canonical text of a CID (base58 for CIDv0,
// base32 for CIDv1, as kubo lists pins), so that a CID written in another
// multibase matches kubo's pin list.
func NormalizeCID(s string) (string, error) {
	c, err := cid.Decode(s)
	if err != nil {
		return "", fmt.Errorf("%w: invalid cid %q: %v", ErrNotFound, s, err)
	}
	return c.String(), nil
}

// PinAdd pins the CID c recursively under name (kubo >= 0.26 keeps a name
// with each pin). Blocks the node does not have are fetched first, so ctx
// should bound the call, unless local: then only blocks the node already
// has are pinned, and a missing one fails the call (kubo's --offline).
// Note that kubo replaces an existing recursive pin of c (renaming it):
// callers that must not take over someone else's pin check PinOf first.
func (c *Client) PinAdd(ctx context.Context, cidStr, name string, local bool) error {
	cc, err := cid.Decode(cidStr)
	if err != nil {
		return fmt.Errorf("%w: invalid cid %q: %v", ErrNotFound, cidStr, err)
	}
	pins := c.api.Pin()
	if local {
		api, err := c.api.WithOptions(options.Api.Offline(true))
		if err != nil {
			return err
		}
		pins = api.Pin()
	}
	err = pins.Add(ctx, path.FromCid(cc), options.Pin.Recursive(true), options.Pin.Name(name))
	return classify(ctx, err)
}

// PinRm removes the recursive pin of the CID c.
func (c *Client) PinRm(ctx context.Context, cidStr string) error {
	cc, err := cid.Decode(cidStr)
	if err != nil {
		return fmt.Errorf("%w: invalid cid %q: %v", ErrNotFound, cidStr, err)
	}
	err = c.api.Pin().Rm(ctx, path.FromCid(cc), options.Pin.RmRecursive(true))
	return classify(ctx, err)
}

// PinsNamed lists the recursive pins whose name contains sub (kubo's
// `pin ls --name`, a substring match), as CID → name. client/rpc v0.43.1
// does not pass the name filter, so the request is made directly.
func (c *Client) PinsNamed(ctx context.Context, sub string) (map[string]string, error) {
	res, err := c.api.Request("pin/ls").
		Option("type", PinRecursive).
		Option("names", true).
		Option("name", sub).
		Option("stream", true).
		Send(ctx)
	if err != nil {
		return nil, classify(ctx, err)
	}
	if res.Error != nil {
		return nil, classify(ctx, res.Error)
	}
	defer res.Output.Close()
	out := map[string]string{}
	dec := json.NewDecoder(res.Output)
	for {
		var e struct{ Cid, Name, Type string }
		if err := dec.Decode(&e); err != nil {
			if err == io.EOF {
				return out, nil
			}
			return nil, classify(ctx, err)
		}
		if len(out) >= maxPinList {
			return nil, fmt.Errorf("ipfs: more than %d pins named like %q", maxPinList, sub)
		}
		cs, err := NormalizeCID(e.Cid)
		if err != nil {
			return nil, fmt.Errorf("ipfs: pin ls: %w", err)
		}
		out[cs] = e.Name
	}
}

// PinOf says how the CID c itself is pinned: its pin type (PinRecursive or
// PinDirect; "" when neither) and the pin's name. Pins that only reach c
// through another pin (indirect) are not looked for: finding them walks
// every recursive pin of the node.
func (c *Client) PinOf(ctx context.Context, cidStr string) (typ, name string, err error) {
	for _, t := range []string{PinRecursive, PinDirect} {
		var out struct {
			Keys map[string]struct{ Type, Name string }
		}
		err := c.api.Request("pin/ls", "/ipfs/"+cidStr).
			Option("type", t).
			Option("names", true).
			Exec(ctx, &out)
		if err != nil {
			if strings.Contains(err.Error(), "is not pinned") {
				continue
			}
			return "", "", classify(ctx, err)
		}
		for _, k := range out.Keys {
			return t, k.Name, nil
		}
	}
	return "", "", nil
}

// Peer is one connection of the node to another peer.
type Peer struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
}

// Peers lists the node's swarm connections (`ipfs swarm peers`).
func (c *Client) Peers(ctx context.Context) ([]Peer, error) {
	conns, err := c.api.Swarm().Peers(ctx)
	if err != nil {
		return nil, classify(ctx, err)
	}
	out := make([]Peer, 0, len(conns))
	for _, ci := range conns {
		out = append(out, Peer{ID: ci.ID().String(), Addr: ci.Address().String()})
	}
	return out, nil
}
