package scoreboard_test

import (
	"fmt"

	"github.com/wagi-fcgi/wagi-fcgi/internal/scoreboard"
)

// A child publishes the request it runs and the requests it finished; the
// manager reads them, bounded.
func Example() {
	page, _ := scoreboard.NewPage()
	defer page.Close()
	slot, _ := scoreboard.NewSlot() // the manager's side
	defer slot.Close()

	// In the child (here the same process maps the same memory).
	view, _ := scoreboard.MapView(int(page.File.Fd()))
	child, _ := scoreboard.MapSlot(int(slot.File.Fd()))
	if child.Hold(7, 1, view) {
		child.Begin(1, 0, "abc-1", "GET", "/hello", 0)
	}
	fmt.Println(slot.Read().State == scoreboard.Running, slot.Read().Conn, slot.Read().ID)
	child.Append(&scoreboard.Record{ID: "abc-1", Method: "GET", Path: "/hello", Status: 200})
	child.Release()
	slot.Drain(func(r *scoreboard.Record) bool {
		fmt.Println(r.ID, r.Method, r.Path, r.Status)
		return true
	})
	// Output:
	// true 7 abc-1
	// abc-1 GET /hello 200
}
