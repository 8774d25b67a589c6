package wagi

import "iter"

// Table is an ordered routing table: the first route added that matches a
// path wins. The manager decides the order (config order, with a module's
// `_routes` sub-routes added before the module's own route, last printed
// first).
//
// Add must not be called concurrently with anything else; once the table is
// built, Lookup and All may be called from any number of goroutines.
type Table[T any] struct {
	entries []tableEntry[T]
}

type tableEntry[T any] struct {
	route Route
	value T
}

// Add appends a route and its value to the table.
func (t *Table[T]) Add(r Route, v T) {
	t.entries = append(t.entries, tableEntry[T]{route: r, value: v})
}

// Len returns the number of routes in the table.
func (t *Table[T]) Len() int { return len(t.entries) }

// Lookup finds the first route matching rawPath (percent-encoded, without
// the query) and returns its value, the SCRIPT_NAME and raw rest of the
// path (see Route.Match), and the route itself.
func (t *Table[T]) Lookup(rawPath string) (v T, scriptName, rawPathInfo string, matched Route, ok bool) {
	for i := range t.entries {
		e := &t.entries[i]
		if sn, pi, ok := e.route.Match(rawPath); ok {
			return e.value, sn, pi, e.route, true
		}
	}
	var zero T
	return zero, "", "", Route{}, false
}

// All yields every route and its value in table order.
func (t *Table[T]) All() iter.Seq2[Route, T] {
	return func(yield func(Route, T) bool) {
		for _, e := range t.entries {
			if !yield(e.route, e.value) {
				return
			}
		}
	}
}
