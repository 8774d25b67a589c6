// Command wagi-fcgi runs untrusted WebAssembly modules as dynamic pages
// behind nginx or Apache, over FastCGI, WAGI-compatible.
//
//	wagi-fcgi serve -c FILE [--http ADDR] [--env K=V]... [--env-file FILE]...
//	wagi-fcgi check -c FILE [--env K=V]... [--env-file FILE]...
//	wagi-fcgi run [--dir GUEST=SRC]... [--env K=V]... [--timeout D] [--cpu D] [--memory SIZE] MODULE [ARG...]
//	wagi-fcgi import [-o FILE] spin.toml
//	wagi-fcgi publish [-c FILE | --api ADDR] [--name KEY]... FILE.wasm|FILE.wat|DIR
//	wagi-fcgi version
//
// This file only wires the packages together; see the README.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const usage = `usage:
  wagi-fcgi serve -c FILE [--http ADDR]   run the FastCGI manager (--http: also plain HTTP for development)
        [--env K=V]... [--env-file FILE]... (global environment of every module, like WAGI's)
  wagi-fcgi check -c FILE [--strict] [--env...]
                                          validate the config, fetch and compile every module;
                                          --strict also fails on warnings
  wagi-fcgi run [flags] MODULE [ARG...]   run one module once in a sandboxed child
  wagi-fcgi import [-o FILE] spin.toml    convert a Spin app's WAGI-executor HTTP routes to a config
  wagi-fcgi publish [flags] FILE.wasm|FILE.wat|DIR
                                          check a module as serve would, add it (or a directory for a
                                          volume) to the kubo node, pin it, print its [[module]]
  wagi-fcgi version                       print the version
`

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

func runMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "serve":
		err = serveCmd(ctx, args[1:], stderr)
	case "check":
		err = checkCmd(ctx, args[1:], stdout, stderr)
	case "run":
		var code int
		code, err = runCmd(ctx, args[1:], stderr)
		if err == nil {
			return code
		}
	case "import":
		err = importCmd(args[1:], stdout, stderr)
	case "publish":
		err = publishCmd(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "wagi-fcgi", getVersion())
		return 0
	case "child":
		// Started by the manager, never by hand.
		err = childCmd(ctx, args[1:])
	case "compile":
		// Started by the manager to compile one module, never by hand.
		err = compileCmd(ctx, args[1:], stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "wagi-fcgi: unknown command %q\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "wagi-fcgi: %v\n", err)
			return 2
		}
		var le limitError
		if errors.As(err, &le) {
			fmt.Fprintf(stderr, "wagi-fcgi: %v\n", err)
			return 124 // like timeout(1)
		}
		fmt.Fprintf(stderr, "wagi-fcgi: %v\n", err)
		return 1
	}
	return 0
}

type usageError struct{ error }
type limitError struct{ error }

func getVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
