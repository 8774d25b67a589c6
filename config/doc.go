// Package config loads and validates the wagi-fcgi config file: a TOML
// file whose format is the contract in docs/design.md ("Config file").
// A plain WAGI modules.toml, holding only [[module]] entries, is a valid
// config; everything else has defaults (see Default).
//
// Mistakes are reported, never ignored: an unknown key anywhere, a value of
// the wrong type, and a value out of range are all errors that name the
// file, the line and the key, for example
//
//	modules.toml:7: unknown key "rute" in [[module]] #2 (did you mean "route"?)
//	modules.toml:12: [limits] timeout: invalid duration "5 seconds"
//
// WAGI silently ignored typos, and its users lost hours to them.
//
// The same parsers serve the command line: ParseModuleRef for `run MODULE`,
// ParseVolume for `--dir GUEST=SRC`, ParseSize for `--memory SIZE`.
package config
