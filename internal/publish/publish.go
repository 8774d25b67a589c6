// Package publish is `wagi-fcgi publish`: it puts a module, or a directory
// for a read-only volume, on a kubo node so that any wagi-fcgi whose node
// can reach it serves it by CID, and prints the `[[module]]` that does.
//
// A module is checked first exactly as serve checks one before serving it
// (see checkModule: serve's own manager, its sandboxed compile process,
// its host functions, its limits), so a module that publish accepts is one
// serve will load, and one it refuses never reaches the node. A directory
// is held to the caps serve applies when it fetches an IPFS directory
// (max_dir_size, max_dir_files), and may hold only files and directories:
// links, FIFOs and devices are refused, each by name.
//
// Content is added as CIDv1 with raw leaves and pinned under a name that
// starts with PinPrefix, so `ipfs pin ls --names` tells what wagi-fcgi
// published; it is never unpinned by wagi-fcgi. An IPNS key may then be
// pointed at it (Options.Name); a key that does not exist is an error
// unless Options.CreateKey.
//
// Every call to the node is bounded in time (Options.Timeout) and in what
// is read of its answer (see ipfs.Client.AddPinned): a node that stalls or
// answers garbage is an error that names it, not a hang.
package publish

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ipfs/boxo/files"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// PinPrefix starts the name of every pin publish makes.
const PinPrefix = "wagi-fcgi publish"

// DefaultMount is where a published directory is mounted in the snippet.
const DefaultMount = "/assets"

// Options say what to publish, where, and how it is checked.
type Options struct {
	// Path is the module file (WebAssembly binary or text) or the
	// directory to publish.
	Path string
	// Config gives the node ([ipfs] api), the caps (max_module_size,
	// max_dir_size, max_dir_files), who compiles ([pool]) and the
	// fetch_timeout; its modules are not used. Limits are the limits the
	// module is checked under (its compile_* and memory).
	Config *config.Config
	Limits config.Limits
	// Route is the snippet's route; "" = "/<name of Path>/...".
	Route string
	// Entrypoint is the module's entrypoint ("" = _start).
	Entrypoint string
	// Mount and Module are a directory's: the guest path of the volume
	// ("" = DefaultMount) and the module that reads it ("" = a
	// placeholder the snippet says to replace).
	Mount, Module string
	// Hidden publishes names starting with "." in a directory.
	Hidden bool
	// Name is an IPNS key of the node to point at the content; "" = none.
	Name string
	// CreateKey makes the key Name when the node has none of that name.
	CreateKey bool
	// IPNS are the record's lifetime, TTL and whether an offline node
	// may publish it.
	IPNS ipfs.NameOptions
	// Timeout bounds each call to the node ("" = [ipfs] fetch_timeout).
	Timeout time.Duration
	// Version is the binary's, for SERVER_SOFTWARE while _routes runs.
	Version string
}

// Result is what was published.
type Result struct {
	Volume   bool   // a directory
	CID      string // CIDv1, base32
	IPNS     string // the IPNS name (k51...), when Options.Name
	Created  bool   // the IPNS key was made now
	Bytes    int64  // of the module, or of the directory's files
	Entries  int    // a directory's files and directories
	Skipped  int    // hidden entries left out of a directory
	Warnings []string
	// Snippet is a [[module]] entry (with comments saying what was
	// published) that a config can take as it is.
	Snippet string
}

// Publish checks and adds o.Path to the node and returns what it made.
func Publish(ctx context.Context, o Options) (*Result, error) {
	if o.Config == nil {
		return nil, errors.New("publish: no config")
	}
	if o.Timeout <= 0 {
		o.Timeout = o.Config.IPFS.FetchTimeout
	}
	st, err := os.Stat(o.Path)
	if err != nil {
		return nil, err
	}
	dir := st.IsDir()
	if !dir && (o.Mount != "" || o.Module != "" || o.Hidden) {
		return nil, fmt.Errorf("%s is a module file: --mount, --module and --hidden are for a directory", o.Path)
	}
	if dir && o.Entrypoint != "" {
		return nil, fmt.Errorf("%s is a directory: --entrypoint is for a module (give the module that reads it with --module)", o.Path)
	}
	if o.Route == "" {
		o.Route = defaultRoute(o.Path)
	}
	if _, err := wagi.ParseRoute(o.Route); err != nil {
		return nil, fmt.Errorf("--route %q: %w", o.Route, err)
	}

	var (
		node  files.Node
		res   = &Result{Volume: dir}
		bin   []byte
		local *tree
	)
	if dir {
		if o.Mount == "" {
			o.Mount = DefaultMount
		}
		t, top, err := openTree(o.Path, dirLimits{maxBytes: o.Config.IPFS.MaxDirSize, maxFiles: o.Config.IPFS.MaxDirFiles, hidden: o.Hidden})
		if err != nil {
			return nil, err
		}
		defer t.Close()
		local, node = t, top
		res.Bytes, res.Entries, res.Skipped = t.bytes, t.entries, t.skipped
	} else {
		if bin, err = readModule(o.Path, o.Config.IPFS.MaxModuleSize); err != nil {
			return nil, err
		}
		res.Warnings, err = checkModule(ctx, checkSpec{cfg: o.Config, name: o.Path, bin: bin, route: o.Route,
			entry: o.Entrypoint, limits: o.Limits, version: o.Version})
		if err != nil {
			return nil, notModule(o.Path, err)
		}
		node = files.NewBytesFile(bin)
		res.Bytes, res.Entries = int64(len(bin)), 1
	}
	// The snippet is made, and checked by the config parser, before
	// anything is sent: a --route or --mount it would refuse is refused
	// here, not after the pin.
	if _, err := snippet(o, res, "bafkqaaa", ""); err != nil {
		return nil, err
	}

	n := &nodeCalls{api: o.Config.IPFS.API, timeout: o.Timeout}
	if n.c, err = ipfs.New(n.api); err != nil {
		return nil, err
	}
	defer n.c.Close()
	var key ipfs.Key
	if o.Name != "" {
		// Before anything is added: a publish that cannot name its
		// content leaves nothing behind.
		if key, res.Created, err = n.key(ctx, o.Name, o.CreateKey); err != nil {
			return nil, err
		}
	}
	id, err := n.add(ctx, node, ipfs.AddOptions{PinName: pinName(o.Path), Entries: res.Entries})
	if local != nil && local.err != nil {
		return nil, local.err
	}
	if err != nil {
		return nil, err
	}
	res.CID = id
	if bin != nil {
		// What serve will fetch by this CID is what was checked: the
		// node said so, and it is asked to show it.
		if err := n.verify(ctx, id, bin); err != nil {
			return nil, err
		}
	}
	if o.Name != "" {
		if res.IPNS, err = n.publishName(ctx, key, id, o.IPNS); err != nil {
			return nil, err
		}
	}
	if res.Snippet, err = snippet(o, res, res.CID, res.IPNS); err != nil {
		return nil, err
	}
	return res, nil
}

// defaultRoute is "/<base name without extension>/...", or "/..." when that
// name would not make a plain route.
func defaultRoute(p string) string {
	base := filepath.Base(filepath.Clean(p))
	stem := strings.TrimSuffix(base, filepath.Ext(base))
	if stem == "" || strings.Trim(stem, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") != "" || strings.HasPrefix(stem, ".") {
		return "/..."
	}
	return "/" + stem + "/..."
}

// pinName is the name of the pin of what is published from p: PinPrefix
// and p's base name, printable and short.
func pinName(p string) string {
	base := strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(filepath.Base(filepath.Clean(p)), "?"))
	if len(base) > 64 {
		base = strings.ToValidUTF8(base[:64], "")
	}
	return PinPrefix + " " + base
}

// notModule says why serve would not load bin, without the manager's
// "load NAME: invalid module: ": for bytes that are neither a WebAssembly
// binary nor text it converts, that they are not a module. A failure that
// is not the module's (a compile process that could not start or read
// it) is said to be the check's.
func notModule(name string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "load "+name+": ")
	rest, invalid := strings.CutPrefix(msg, "invalid module: ")
	switch {
	case invalid && strings.Contains(rest, `no \0asm magic`):
		return fmt.Errorf("%s is not a WebAssembly module: %s", name, rest)
	case invalid:
		return fmt.Errorf("%s: serve would refuse it: %s", name, rest)
	case strings.HasPrefix(msg, "_routes"):
		return fmt.Errorf("%s: serve would refuse it: %s", name, msg)
	}
	return fmt.Errorf("checking %s as serve would: %s", name, msg)
}

// nodeCalls are the calls to one node, each bounded by timeout, their
// errors naming the node.
type nodeCalls struct {
	c       *ipfs.Client
	api     string
	timeout time.Duration
}

func (n *nodeCalls) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, n.timeout)
}

// failed names the node and what it did wrong.
func (n *nodeCalls) failed(what string, err error) error {
	switch {
	case errors.Is(err, ipfs.ErrUnavailable):
		why := strings.TrimPrefix(err.Error(), ipfs.ErrUnavailable.Error()+": ")
		return fmt.Errorf("the IPFS node at %s is unreachable: %s", n.api, why)
	case errors.Is(err, ipfs.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("the IPFS node at %s did not answer %s within %s", n.api, what, n.timeout)
	}
	return fmt.Errorf("the IPFS node at %s: %s: %w", n.api, what, err)
}

func (n *nodeCalls) key(ctx context.Context, name string, create bool) (ipfs.Key, bool, error) {
	cctx, cancel := n.ctx(ctx)
	defer cancel()
	k, err := n.c.Key(cctx, name)
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, ipfs.ErrKeyMissing) {
		return ipfs.Key{}, false, n.failed("listing its IPNS keys", err)
	}
	if !create {
		return ipfs.Key{}, false, fmt.Errorf("the IPFS node at %s has no IPNS key %q: create it with --create-key (or `ipfs key gen %s`)", n.api, name, name)
	}
	if k, err = n.c.GenerateKey(cctx, name); err != nil {
		return ipfs.Key{}, false, n.failed(fmt.Sprintf("making the IPNS key %q", name), err)
	}
	return k, true, nil
}

func (n *nodeCalls) add(ctx context.Context, nd files.Node, opts ipfs.AddOptions) (string, error) {
	cctx, cancel := n.ctx(ctx)
	defer cancel()
	id, err := n.c.AddPinned(cctx, nd, opts)
	if err != nil {
		return "", n.failed("adding and pinning", err)
	}
	return id.String(), nil
}

func (n *nodeCalls) verify(ctx context.Context, id string, bin []byte) error {
	cctx, cancel := n.ctx(ctx)
	defer cancel()
	got, err := n.c.Cat(cctx, "/ipfs/"+id, int64(len(bin)))
	if err != nil {
		return n.failed("reading back /ipfs/"+id, err)
	}
	if !bytes.Equal(got, bin) {
		return fmt.Errorf("the IPFS node at %s: %w: /ipfs/%s does not hold the bytes just added", n.api, ipfs.ErrBadAnswer, id)
	}
	return nil
}

func (n *nodeCalls) publishName(ctx context.Context, key ipfs.Key, id string, opts ipfs.NameOptions) (string, error) {
	cctx, cancel := n.ctx(ctx)
	defer cancel()
	name, err := n.c.PublishRecord(cctx, key.Name, "/ipfs/"+id, opts)
	if errors.Is(err, ipfs.ErrOffline) {
		return "", fmt.Errorf("the IPFS node at %s is offline, so the IPNS record for key %q would stay on it; "+
			"/ipfs/%s is added and pinned; pass --allow-offline to publish the name anyway", n.api, key.Name, id)
	}
	if err != nil {
		return "", n.failed(fmt.Sprintf("publishing the IPNS name of key %q", key.Name), err)
	}
	if name != key.ID {
		return "", fmt.Errorf("the IPFS node at %s: %w: key %q is %s but the name published is %s", n.api, ipfs.ErrBadAnswer, key.Name, key.ID, name)
	}
	return name, nil
}
