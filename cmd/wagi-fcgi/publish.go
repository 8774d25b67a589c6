package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/internal/publish"
)

// publishArgs are publish's command line, parsed.
type publishArgs struct {
	cfgPath string
	api     string
	opts    publish.Options
}

// parsePublish parses `publish [flags] FILE.wasm|FILE.wat|DIR`. Errors are
// usageErrors (exit 2).
func parsePublish(args []string, stderr io.Writer) (publishArgs, error) {
	var a publishArgs
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&a.cfgPath, "c", "", "config `file` whose [ipfs] api, caps and [limits] (or the --route's module's limits) apply")
	fs.StringVar(&a.api, "api", "", "kubo RPC API `address` (multiaddr or http URL; default: the config's [ipfs] api, else "+config.Default().IPFS.API+")")
	o := &a.opts
	fs.StringVar(&o.Route, "route", "", "the snippet's `route` (default /NAME/... from the file or directory name)")
	fs.StringVar(&o.Entrypoint, "entrypoint", "", "the module's entrypoint `name` (default _start)")
	fs.StringVar(&o.Mount, "mount", "", "a directory: the guest `path` it is mounted at in the snippet (default "+publish.DefaultMount+")")
	fs.StringVar(&o.Module, "module", "", "a directory: the snippet's module `ref`erence, the module that reads it")
	fs.BoolVar(&o.Hidden, "hidden", false, "a directory: publish names starting with \".\" too (left out by default, as ipfs add -r does)")
	fs.StringVar(&o.Name, "name", "", "point the IPNS name of the node's `key` at what was published")
	fs.BoolVar(&o.CreateKey, "create-key", false, "with --name: make the key if the node has none of that name")
	fs.BoolVar(&o.IPNS.AllowOffline, "allow-offline", false, "with --name: publish the name on a node that is offline (the record stays on that node)")
	fs.DurationVar(&o.IPNS.Lifetime, "lifetime", 0, "with --name: how long the IPNS record is valid (default: the node's, 48h)")
	fs.DurationVar(&o.IPNS.TTL, "ttl", 0, "with --name: how long resolvers may cache the record (default: the node's)")
	fs.DurationVar(&o.Timeout, "timeout", 0, "bound on each call to the node (default: [ipfs] fetch_timeout, 30s)")
	if err := fs.Parse(args); err != nil {
		return a, err
	}
	if fs.NArg() != 1 {
		return a, usageError{errors.New("publish needs one FILE.wasm, FILE.wat or DIR, after the flags")}
	}
	o.Path = fs.Arg(0)
	if o.Name == "" {
		for _, f := range []string{"create-key", "allow-offline", "lifetime", "ttl"} {
			if isSet(fs, f) {
				return a, usageError{fmt.Errorf("--%s needs --name KEY", f)}
			}
		}
	} else if err := checkKeyName(o.Name, o.CreateKey); err != nil {
		return a, usageError{err}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"lifetime", o.IPNS.Lifetime}, {"ttl", o.IPNS.TTL}, {"timeout", o.Timeout}} {
		if isSet(fs, d.name) && d.v <= 0 {
			return a, usageError{fmt.Errorf("--%s %s: must be positive", d.name, d.v)}
		}
	}
	if a.api != "" {
		if _, err := config.Parse([]byte(fmt.Sprintf("[ipfs]\napi = %q\n", a.api)), "--api", ""); err != nil {
			return a, usageError{fmt.Errorf("--api %q: want a multiaddr like /ip4/127.0.0.1/tcp/5001 or an http URL", a.api)}
		}
	}
	return a, nil
}

// isSet reports whether the flag name was given.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// checkKeyName refuses key names a keystore file could not be named after,
// and ones that are not plain (they end up in a config and a log).
func checkKeyName(name string, create bool) error {
	if len(name) > 64 || name == "" || strings.HasPrefix(name, ".") ||
		strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" {
		return fmt.Errorf("--name %q: a key name is 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'", name)
	}
	if create && name == "self" {
		return errors.New("--name self --create-key: the node's own key always exists and is never made")
	}
	return nil
}

// publishCmd adds a checked module, or a directory, to the node and prints
// the [[module]] that serves it (internal/publish).
func publishCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := parsePublish(args, stderr)
	if err != nil {
		return err
	}
	cfg := config.Default()
	if a.cfgPath != "" {
		if cfg, err = config.Load(a.cfgPath); err != nil {
			return err
		}
	}
	if a.api != "" {
		cfg.IPFS.API = a.api
	}
	a.opts.Config = cfg
	a.opts.Limits = cfg.Limits
	// A route of the config: its module's limits, as serve applies them.
	for _, m := range cfg.Modules {
		if a.opts.Route != "" && m.Route == a.opts.Route {
			a.opts.Limits = m.Limits
		}
	}
	a.opts.Version = getVersion()
	res, err := publish.Publish(ctx, a.opts)
	if err != nil {
		return fmt.Errorf("publish: %s", oneLineError(err))
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", oneLineError(errors.New(w)))
	}
	_, err = io.WriteString(stdout, res.Snippet)
	return err
}

// oneLineError keeps an error on one line: each is one line of stderr.
func oneLineError(err error) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; "))
}
