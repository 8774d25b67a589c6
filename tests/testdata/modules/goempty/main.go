// Command goempty is a Go (GOOS=wasip1) module whose main does nothing: a
// request to it costs the Go runtime's start and exit alone, which the
// request profile (child/phases_test.go) subtracts from the Go hello's.
package main

func main() {}
