// Package wagi implements the CGI contract that WAGI modules rely on, as
// written down in docs/wagi-compat.md: route patterns and their matching,
// the `_routes` sub-route protocol, the environment and argv a module sees,
// and the parsing of the CGI response a module writes to stdout.
//
// The package is pure: it never runs a module, touches the network or reads
// the process environment. The manager uses it to route requests and to
// turn module output into a FastCGI response; the child uses it to build a
// module's environment and argv.
//
// Everything here is safe for concurrent use except where a method says
// otherwise (Table.Add).
package wagi
