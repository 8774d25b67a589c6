package config

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// checkNestedReadOnly refuses a read-only volume that a writable volume of
// the same module can reach: its directory is the writable one's or lies
// inside it, after cleaning and resolving symlinks. The guest could open
// the writable mount and write the "read-only" files through it; the ":ro"
// would be a lie. p is the module's volumes key.
//
// The same directory mounted writable by one module and read-only by
// another is allowed: each module gets what its own table says, and the
// read-only module cannot write through anything it sees.
//
// MFS volumes are always writable (mfs: has no ":ro"), so for them the rule
// cannot trigger; the comparison is still done per kind, so that a host
// path and an MFS path with the same spelling are never confused.
func (d *decoder) checkNestedReadOnly(p keyPath, vols []Volume) {
	type resolved struct {
		*Volume
		real string
	}
	var rw []resolved
	for i := range vols {
		if v := &vols[i]; !v.ReadOnly && (v.Kind == VolumeLocal || v.Kind == VolumeMFS) {
			rw = append(rw, resolved{v, realVolumePath(v)})
		}
	}
	for i := range vols {
		ro := &vols[i]
		if !ro.ReadOnly || (ro.Kind != VolumeLocal && ro.Kind != VolumeMFS) {
			continue
		}
		real := realVolumePath(ro)
		for _, w := range rw {
			if w.Kind != ro.Kind {
				continue
			}
			rel, ok := within(w.real, real)
			if !ok {
				continue
			}
			through := path.Join(w.Guest, rel)
			d.add(d.lines.line(p.child(ro.Guest)),
				"%s: the read-only volume %q = %q (%s) is inside the writable volume %q = %q (%s): the module could write it through %q; mount it from outside the writable directory, or make %q read-only too",
				display(p), ro.Guest, ro.Source+":ro", real, w.Guest, w.Source, w.real, through, w.Guest)
			break
		}
	}
}

// realVolumePath is a volume's path, clean, with the symlinks of its longest
// existing prefix resolved (the rest does not exist yet, so it has none).
// MFS paths have no symlinks.
func realVolumePath(v *Volume) string {
	if v.Kind == VolumeMFS {
		return path.Clean(v.Path)
	}
	p := filepath.Clean(v.Path)
	var rest []string
	for {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(append([]string{real}, rest...)...)
		}
		parent := filepath.Dir(p)
		if parent == p || !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, os.ErrNotExist) {
			return filepath.Join(append([]string{p}, rest...)...)
		}
		rest = append([]string{filepath.Base(p)}, rest...)
		p = parent
	}
}

// within reports whether inner is dir or lies below it, and the path of
// inner relative to dir ("." for dir itself).
func within(dir, inner string) (string, bool) {
	if inner == dir {
		return ".", true
	}
	prefix := strings.TrimSuffix(dir, "/") + "/"
	if rel, ok := strings.CutPrefix(inner, prefix); ok {
		return rel, true
	}
	return "", false
}
