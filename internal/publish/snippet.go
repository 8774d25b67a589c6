package publish

import (
	"fmt"
	"strings"

	"github.com/wagi-fcgi/wagi-fcgi/config"
)

// placeholderModule stands for the module that reads a published
// directory when none was named.
const placeholderModule = "module.wasm"

// snippet is the [[module]] entry that serves what was published, with
// comment lines saying what it is: a config takes the whole text as it is
// (`wagi-fcgi publish x.wasm >> wagi.toml`). It is parsed by the config
// parser before it is returned, so what is printed is what serve reads.
func snippet(o Options, r *Result, cid, ipns string) (string, error) {
	var b strings.Builder
	what := "module"
	if r.Volume {
		what = "directory"
	}
	fmt.Fprintf(&b, "# wagi-fcgi publish: %s %s, %d bytes", what, oneLine(o.Path), r.Bytes)
	if r.Volume {
		fmt.Fprintf(&b, " in %d entries", r.Entries)
		if r.Skipped > 0 {
			fmt.Fprintf(&b, " (%d hidden left out)", r.Skipped)
		}
	}
	fmt.Fprintf(&b, "; pinned on %s\n", oneLine(o.Config.IPFS.API))
	fmt.Fprintf(&b, "# cid:  %s\n# path: /ipfs/%s\n", cid, cid)
	if ipns != "" {
		created := ""
		if r.Created {
			created = ", created now"
		}
		fmt.Fprintf(&b, "# ipns: /ipns/%s (key %s%s)\n", ipns, tomlString(o.Name), created)
	}
	b.WriteString("[[module]]\n")
	fmt.Fprintf(&b, "route = %s\n", tomlString(o.Route))
	if !r.Volume {
		ref := "ipfs://" + cid
		if ipns != "" {
			ref = "/ipns/" + ipns
		}
		fmt.Fprintf(&b, "module = %s\n", tomlString(ref))
		if o.Entrypoint != "" && o.Entrypoint != "_start" {
			fmt.Fprintf(&b, "entrypoint = %s\n", tomlString(o.Entrypoint))
		}
	} else {
		if o.Module != "" {
			fmt.Fprintf(&b, "module = %s\n", tomlString(o.Module))
		} else {
			fmt.Fprintf(&b, "module = %s  # the module that reads %s: replace with its reference\n", tomlString(placeholderModule), oneLine(o.Mount))
		}
		src := "ipfs://" + cid
		if ipns != "" {
			// Followed by serve as the name moves (a read-only IPNS
			// volume), like a module named by IPNS.
			src = "/ipns/" + ipns
		}
		fmt.Fprintf(&b, "volumes = { %s = %s }\n", tomlString(o.Mount), tomlString(src))
	}
	out := b.String()
	if _, err := config.Parse([]byte(out), "the [[module]] snippet", ""); err != nil {
		return "", fmt.Errorf("the [[module]] snippet would not load: %w", err)
	}
	return out, nil
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < ' ' || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04X", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// oneLine keeps a name given by the user on its comment line.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
}
