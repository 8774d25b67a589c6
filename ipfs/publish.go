package ipfs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ipfs/boxo/files"
	"github.com/ipfs/go-cid"
)

// What `wagi-fcgi publish` asks of a node: add (CIDv1, raw leaves,
// pinned under a name), IPNS keys and names. These calls are made with
// net/http and not with client/rpc because client/rpc reads an error body,
// and decodes a JSON answer, without a bound: here every answer is read to
// at most a fixed size, so a process that only pretends to be kubo cannot
// make the publisher hold more than that.

// ErrKeyMissing means the node has no IPNS key of the given name.
var ErrKeyMissing = errors.New("no such IPNS key")

// ErrOffline means the node refused to publish an IPNS record because it
// is offline (it would keep the record to itself).
var ErrOffline = errors.New("the node is offline")

// ErrBadAnswer means the node answered something kubo does not.
var ErrBadAnswer = errors.New("the node's answer is not kubo's")

// Bounds on what is read of the node's answers.
const (
	maxErrAnswer   = 4 << 10  // the message of a failed call
	maxSmallAnswer = 1 << 20  // key/ls, key/gen, name/publish
	addEventBytes  = 4 << 10  // per entry of an add: a name, a CID, a size
	minAddAnswer   = 64 << 10 // what an add may always answer
)

// AddOptions are the options of AddPinned. Content is always added as CIDv1
// with raw leaves and pinned (recursively): what a module or volume
// reference names must survive the node's garbage collector.
type AddOptions struct {
	// PinName names the pin (kubo's pin names, `ipfs pin ls --names`),
	// so that an operator can tell who pinned it.
	PinName string
	// Entries is how many entries (files and directories) the content
	// has: it bounds how much of the node's answer is read (kubo answers
	// one line per entry).
	Entries int
}

// AddPinned adds nd, a file or a directory tree, to the node: CIDv1, raw
// leaves, pinned under opts.PinName. It returns the root's CID, checked to
// be a CIDv1. When reading nd fails (a file changed while it was sent),
// the add fails too; the caller knows why better than the transport does.
func (c *Client) AddPinned(ctx context.Context, nd files.Node, opts AddOptions) (cid.Cid, error) {
	q := url.Values{}
	q.Set("cid-version", "1")
	q.Set("raw-leaves", "true")
	q.Set("pin", "true")
	if opts.PinName != "" {
		q.Set("pin-name", opts.PinName)
	}
	q.Set("progress", "false")
	q.Set("wrap-with-directory", "false")
	// Kubo takes the single entry named "" as the content itself (what
	// client/rpc's Unixfs().Add sends).
	mfr := files.NewMultiFileReader(files.NewMapDirectory(map[string]files.Node{"": nd}), false, false)
	limit := int64(minAddAnswer) + int64(max(opts.Entries, 1))*addEventBytes
	body, err := c.call(ctx, "add", nil, q, mfr, "multipart/form-data; boundary="+mfr.Boundary(), limit)
	if err != nil {
		return cid.Undef, err
	}
	// One JSON object per entry, the root last (a directory's is named
	// "", a file's after its CID).
	dec := json.NewDecoder(bytes.NewReader(body))
	root := ""
	for {
		var ev struct{ Hash string }
		if err := dec.Decode(&ev); err == io.EOF {
			break
		} else if err != nil {
			return cid.Undef, fmt.Errorf("%w: add answered %q: %v", ErrBadAnswer, clip(body), err)
		}
		root = ev.Hash
	}
	if root == "" {
		return cid.Undef, fmt.Errorf("%w: add answered no root CID: %q", ErrBadAnswer, clip(body))
	}
	id, err := cid.Decode(root)
	if err != nil || id.Version() != 1 {
		return cid.Undef, fmt.Errorf("%w: add answered %q, not a CIDv1", ErrBadAnswer, clip([]byte(root)))
	}
	return id, nil
}

// Cat reads the file at p ("/ipfs/CID"), at most max bytes of it (more is
// an ErrBadAnswer): unlike Fetch, every answer of the node is bounded,
// errors included.
func (c *Client) Cat(ctx context.Context, p string, max int64) ([]byte, error) {
	return c.call(ctx, "cat", []string{p}, url.Values{"length": {fmt.Sprint(max + 1)}}, nil, "", max)
}

// Key is one IPNS key of the node.
type Key struct {
	Name string // as the node's keystore names it
	ID   string // the IPNS name it publishes under (k51...)
}

// Key returns the node's key called name, or ErrKeyMissing.
func (c *Client) Key(ctx context.Context, name string) (Key, error) {
	body, err := c.call(ctx, "key/ls", nil, url.Values{"l": {"true"}}, nil, "", maxSmallAnswer)
	if err != nil {
		return Key{}, err
	}
	var out struct{ Keys []struct{ Name, Id string } }
	if err := json.Unmarshal(body, &out); err != nil {
		return Key{}, fmt.Errorf("%w: key/ls answered %q: %v", ErrBadAnswer, clip(body), err)
	}
	for _, k := range out.Keys {
		if k.Name == name {
			return checkKey(k.Name, k.Id)
		}
	}
	return Key{}, fmt.Errorf("%w: %q", ErrKeyMissing, name)
}

// GenerateKey makes a new ed25519 IPNS key called name in the node's
// keystore.
func (c *Client) GenerateKey(ctx context.Context, name string) (Key, error) {
	body, err := c.call(ctx, "key/gen", []string{name}, url.Values{"type": {"ed25519"}}, nil, "", maxSmallAnswer)
	if err != nil {
		return Key{}, err
	}
	var out struct{ Name, Id string }
	if err := json.Unmarshal(body, &out); err != nil {
		return Key{}, fmt.Errorf("%w: key/gen answered %q: %v", ErrBadAnswer, clip(body), err)
	}
	return checkKey(out.Name, out.Id)
}

// NameOptions are the options of PublishRecord; zero durations leave the
// node's defaults.
type NameOptions struct {
	// Lifetime is how long the record is valid (kubo's --lifetime).
	Lifetime time.Duration
	// TTL is how long resolvers may cache it (kubo's --ttl).
	TTL time.Duration
	// AllowOffline publishes on a node that is offline: the record is
	// kept by that node only (kubo's --allow-offline).
	AllowOffline bool
}

// PublishRecord points the IPNS name of key at p ("/ipfs/CID") and returns
// that name (k51...): PublishName for `wagi-fcgi publish`, which may be
// pointed at any address, so its answer is bounded and checked, and which
// publishes on an offline node only when asked (it refuses, with
// ErrOffline, unless opts.AllowOffline).
func (c *Client) PublishRecord(ctx context.Context, key, p string, opts NameOptions) (string, error) {
	q := url.Values{"key": {key}, "resolve": {"false"}, "allow-offline": {fmt.Sprint(opts.AllowOffline)}}
	if opts.Lifetime > 0 {
		q.Set("lifetime", opts.Lifetime.String())
	}
	if opts.TTL > 0 {
		q.Set("ttl", opts.TTL.String())
	}
	body, err := c.call(ctx, "name/publish", []string{p}, q, nil, "", maxSmallAnswer)
	if err != nil {
		if strings.Contains(err.Error(), "offline") {
			return "", fmt.Errorf("%w: %v", ErrOffline, err)
		}
		return "", err
	}
	var out struct{ Name, Value string }
	if err := json.Unmarshal(body, &out); err != nil {
		return "", fmt.Errorf("%w: name/publish answered %q: %v", ErrBadAnswer, clip(body), err)
	}
	if out.Value != p || !ipnsName(out.Name) {
		return "", fmt.Errorf("%w: name/publish answered name %q, value %q for %s", ErrBadAnswer, clip([]byte(out.Name)), clip([]byte(out.Value)), p)
	}
	return out.Name, nil
}

func checkKey(name, id string) (Key, error) {
	if !ipnsName(id) {
		return Key{}, fmt.Errorf("%w: key %q has the id %q", ErrBadAnswer, clip([]byte(name)), clip([]byte(id)))
	}
	return Key{Name: name, ID: id}, nil
}

// ipnsName reports whether s looks like an IPNS name a key publishes
// under (a CID of a public key in base36 or base58): it is printed and
// written into a config, so nothing else gets through.
func ipnsName(s string) bool {
	if len(s) < 10 || len(s) > 100 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// call posts one RPC command and returns its answer, at most limit bytes
// of it (more is an ErrBadAnswer). Transport failures are classified
// (ErrUnavailable, ErrTimeout); a failed command's message is in the
// error.
func (c *Client) call(ctx context.Context, command string, args []string, q url.Values, body io.Reader, contentType string, limit int64) ([]byte, error) {
	if q == nil {
		q = url.Values{}
	}
	for _, a := range args {
		q.Add("arg", a)
	}
	q.Set("encoding", "json")
	q.Set("stream-channels", "true")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/api/v0/"+command+"?"+q.Encode(), body)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// Said short: the URL would repeat every option.
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" && op.Err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, op.Err)
		}
		return nil, classify(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrAnswer))
		var e struct{ Message string }
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Message != "" {
			msg = e.Message
		}
		return nil, fmt.Errorf("%s: %s: %s", command, resp.Status, clip([]byte(msg)))
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, classify(ctx, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s answered more than %d bytes", ErrBadAnswer, command, limit)
	}
	// A command that fails while it streams says so in a trailer.
	if e := resp.Trailer.Get("X-Stream-Error"); e != "" {
		return nil, fmt.Errorf("%s: %s", command, clip([]byte(e)))
	}
	return b, nil
}

// clip makes a piece of an answer fit one line of an error message.
func clip(b []byte) string {
	const n = 200
	s := strings.ToValidUTF8(string(b), "?")
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "") + "..."
	}
	return s
}
