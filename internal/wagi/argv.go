package wagi

import (
	"fmt"
	"strings"
)

// Argv returns the argv of a module serving the request.
//
// Without a template (ri.ArgvTemplate == ""), argv[0] is the raw request
// path and the query string follows split on '&', raw (not decoded), with
// empty items kept: "a&&b" gives ["/path", "a", "", "b"], and an empty query
// adds nothing. Empty strings in the result are deliberate; wazero v1.12.0
// passes them to the guest unchanged (its doc comment claiming otherwise is
// stale; checked by instantiating a module with an empty argument).
//
// With a template, ${SCRIPT_NAME} becomes the raw request path and ${ARGS}
// the query with every '&' turned into a space, and the result is split on
// white space (so it holds no empty strings).
func Argv(ri *RequestInfo) []string {
	path := RawPath(ri.Params)
	query := QueryString(ri.Params)
	if ri.ArgvTemplate == "" {
		if query == "" {
			return []string{path}
		}
		args := make([]string, 1, 2+strings.Count(query, "&"))
		args[0] = path
		return append(args, strings.Split(query, "&")...)
	}
	// One pass, so that a "${ARGS}" inside the request path is not expanded.
	args := strings.ReplaceAll(query, "&", " ")
	var b strings.Builder
	t := ri.ArgvTemplate
	for {
		i := strings.Index(t, "${")
		if i < 0 {
			b.WriteString(t)
			break
		}
		b.WriteString(t[:i])
		t = t[i:]
		switch {
		case strings.HasPrefix(t, "${SCRIPT_NAME}"):
			b.WriteString(path)
			t = t[len("${SCRIPT_NAME}"):]
		case strings.HasPrefix(t, "${ARGS}"):
			b.WriteString(args)
			t = t[len("${ARGS}"):]
		default:
			b.WriteString("${")
			t = t[2:]
		}
	}
	return strings.Fields(b.String())
}

// CheckArgvTemplate reports an error when an argv template refers to a
// variable other than ${SCRIPT_NAME} and ${ARGS}, or has an unclosed "${".
func CheckArgvTemplate(tmpl string) error {
	rest := tmpl
	for {
		i := strings.Index(rest, "${")
		if i < 0 {
			return nil
		}
		rest = rest[i+2:]
		j := strings.IndexByte(rest, '}')
		if j < 0 {
			return fmt.Errorf("argv template %q: unclosed \"${\"", tmpl)
		}
		switch name := rest[:j]; name {
		case "SCRIPT_NAME", "ARGS":
		default:
			return fmt.Errorf("argv template %q: unknown variable ${%s} (only ${SCRIPT_NAME} and ${ARGS} exist)", tmpl, name)
		}
		rest = rest[j+1:]
	}
}
