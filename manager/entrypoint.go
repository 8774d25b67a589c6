package manager

import (
	"fmt"
	"sort"
)

// A module that lacks the entrypoint its route names breaks that route
// only, as in WAGI and as the status contract says (500, the reason in the
// log): serve starts, the other routes serve, and `check` warns (or fails
// with --strict). The check is made on the export list the compile
// process reported, before a child is asked for anything.

// missingEntrypoint says why t cannot run mod, or "" when it can.
func missingEntrypoint(t *target, mod *module) string {
	if mod.exports[t.entry] {
		return ""
	}
	return fmt.Sprintf("entrypoint %q is not an exported function of %s", t.entry, mod.ref)
}

// Warnings lists what is wrong with the config but does not stop it
// serving: routes whose module lacks their entrypoint. Each names the
// config file and line. It looks at the modules loaded so far (after
// LoadAll, every one).
func (m *Manager) Warnings() []string {
	var out []string
	for i, src := range m.sources {
		mod, _ := src.loaded()
		if mod == nil {
			continue
		}
		mc := &m.cfg.Modules[i]
		if err := checkModule(mod, src); err != nil {
			out = append(out, fmt.Sprintf("%s:%d: route %s answers 500: entrypoint %q is not an exported function of %s (exports: %s)",
				m.cfg.Path, mc.Line, mc.Route, entryName(src.entry), mc.Module, exportList(mod)))
		}
	}
	return out
}

func entryName(e string) string {
	if e == "" {
		return "_start"
	}
	return e
}

// exportList names a module's exported functions for a message, at most
// ten of them.
func exportList(mod *module) string {
	names := make([]string, 0, len(mod.exports))
	for n := range mod.exports {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return "none"
	}
	s := ""
	for i, n := range names {
		if i == 10 {
			return s + fmt.Sprintf(", and %d more", len(names)-10)
		}
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%q", n)
	}
	return s
}
