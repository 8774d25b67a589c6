package main

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParsePublish(t *testing.T) {
	cases := []struct {
		name  string
		args  []string
		usage string // "" = parses
		check func(t *testing.T, a publishArgs)
	}{
		{name: "a file alone is enough", args: []string{"hello.wasm"}, check: func(t *testing.T, a publishArgs) {
			if a.opts.Path != "hello.wasm" || a.cfgPath != "" || a.api != "" || a.opts.Name != "" {
				t.Fatalf("%+v", a)
			}
		}},
		{name: "every flag reaches the options", args: []string{"-c", "w.toml", "--api", "/ip4/127.0.0.1/tcp/5001", "--route", "/x/...",
			"--entrypoint", "main", "--name", "site", "--create-key", "--allow-offline", "--lifetime", "2h", "--ttl", "1m", "--timeout", "5s", "m.wat"},
			check: func(t *testing.T, a publishArgs) {
				o := a.opts
				if a.cfgPath != "w.toml" || a.api != "/ip4/127.0.0.1/tcp/5001" || o.Route != "/x/..." || o.Entrypoint != "main" || o.Name != "site" ||
					!o.CreateKey || !o.IPNS.AllowOffline || o.IPNS.Lifetime != 2*time.Hour || o.IPNS.TTL != time.Minute || o.Timeout != 5*time.Second || o.Path != "m.wat" {
					t.Fatalf("%+v", a)
				}
			}},
		{name: "a directory's flags reach the options", args: []string{"--mount", "/static", "--module", "ipfs://bafkqaaa", "--hidden", "site"},
			check: func(t *testing.T, a publishArgs) {
				if a.opts.Mount != "/static" || a.opts.Module != "ipfs://bafkqaaa" || !a.opts.Hidden || a.opts.Path != "site" {
					t.Fatalf("%+v", a)
				}
			}},
		{name: "an http URL is an API address", args: []string{"--api", "http://127.0.0.1:5001", "x.wasm"}},
		{name: "no file is a usage error", args: []string{}, usage: "needs one FILE"},
		{name: "two files are a usage error", args: []string{"a.wasm", "b.wasm"}, usage: "needs one FILE"},
		{name: "a flag after the file is a usage error", args: []string{"a.wasm", "--name", "k"}, usage: "needs one FILE"},
		{name: "--create-key without --name is refused", args: []string{"--create-key", "a.wasm"}, usage: "--create-key needs --name"},
		{name: "--allow-offline without --name is refused", args: []string{"--allow-offline", "a.wasm"}, usage: "--allow-offline needs --name"},
		{name: "--ttl without --name is refused", args: []string{"--ttl", "1m", "a.wasm"}, usage: "--ttl needs --name"},
		{name: "a zero lifetime is refused", args: []string{"--name", "k", "--lifetime", "0s", "a.wasm"}, usage: "--lifetime 0s: must be positive"},
		{name: "a negative timeout is refused", args: []string{"--timeout", "-1s", "a.wasm"}, usage: "--timeout -1s: must be positive"},
		{name: "a key name with a slash is refused", args: []string{"--name", "a/b", "a.wasm"}, usage: "a key name is"},
		{name: "a key name starting with a dot is refused", args: []string{"--name", "..", "a.wasm"}, usage: "a key name is"},
		{name: "a key name too long is refused", args: []string{"--name", strings.Repeat("k", 65), "a.wasm"}, usage: "a key name is"},
		{name: "the node's own key is never created", args: []string{"--name", "self", "--create-key", "a.wasm"}, usage: "never made"},
		{name: "the node's own key may be published", args: []string{"--name", "self", "a.wasm"}},
		{name: "an API address that is neither a multiaddr nor a URL is refused", args: []string{"--api", "localhost:5001", "a.wasm"}, usage: "--api"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, err := parsePublish(tc.args, io.Discard)
			if tc.usage == "" {
				if err != nil {
					t.Fatalf("parse: %v", err)
				}
				if tc.check != nil {
					tc.check(t, a)
				}
				return
			}
			var ue usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.usage) {
				t.Fatalf("got %v, want a usage error with %q", err, tc.usage)
			}
		})
	}
}
