#!/usr/bin/env bash
# Prints the path of a working kubo (ipfs) binary for the end-to-end tests,
# building it first if the cache does not hold one.
#
# Usage: tests/kubo.sh
#
# The binary is kubo $KUBO_VERSION, built from the separate Go module
# tools/kubo (which pins it and all its dependencies), and cached OUTSIDE the
# repository, so that fresh clones (CI) reuse it:
#
#   ${WAGI_FCGI_CACHE:-$HOME/.cache/wagi-fcgi}/kubo-$KUBO_VERSION/ipfs
#
# A cached binary is reused when `ipfs version` reports $KUBO_VERSION. A cold
# build takes several minutes. The check-and-build holds flock(<cache>/.lock),
# so parallel test processes build once; the binary is written to a temporary
# name and renamed. Progress goes to stderr; stdout carries only the path.
set -euo pipefail

KUBO_VERSION=v0.42.0

die() {
	echo "kubo.sh: $*" >&2
	exit 1
}

[ $# -eq 0 ] || die "usage: $0 (no arguments)"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=$ROOT/tools/kubo

for cmd in flock; do
	command -v "$cmd" >/dev/null 2>&1 || die "missing tool: $cmd"
done

CACHE=${WAGI_FCGI_CACHE:-${HOME:?HOME is not set; set WAGI_FCGI_CACHE}/.cache/wagi-fcgi}
DIR=$CACHE/kubo-$KUBO_VERSION
BIN=$DIR/ipfs

# works BIN: true when BIN runs and reports the pinned version.
works() {
	local out
	[ -x "$1" ] || return 1
	out=$("$1" version 2>/dev/null) || return 1
	[ "$out" = "ipfs version ${KUBO_VERSION#v}" ]
}

# Fast path, without the lock: a complete binary only ever appears by rename.
if works "$BIN"; then
	printf '%s\n' "$BIN"
	exit 0
fi

mkdir -p "$DIR" || die "cannot create cache dir $DIR"
exec 9>"$DIR/.lock"
if ! flock -n 9; then
	echo "kubo.sh: waiting for another build (lock $DIR/.lock)" >&2
	flock 9
fi

# Another process may have built it while we waited.
if works "$BIN"; then
	printf '%s\n' "$BIN"
	exit 0
fi

command -v go >/dev/null 2>&1 || die "missing tool: go (Go 1.26 is expected on PATH, e.g. /usr/local/go/bin)"
[ -f "$TOOLS/go.mod" ] || die "missing $TOOLS/go.mod"

tmp=$DIR/.tmp.ipfs.$$
trap 'rm -f "$tmp"' EXIT
rm -f "$BIN"
echo "kubo.sh: building kubo $KUBO_VERSION into $BIN (a cold build takes several minutes)" >&2
start=$SECONDS
# GOWORK=off: a go.work elsewhere must not pull tools/kubo into another build.
# -mod=readonly: build exactly what tools/kubo/go.sum pins.
if ! (cd "$TOOLS" && GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false" go build -trimpath -o "$tmp" github.com/ipfs/kubo/cmd/ipfs) >&2; then
	die "building kubo $KUBO_VERSION (cd tools/kubo && go build github.com/ipfs/kubo/cmd/ipfs) failed; see the output above"
fi
works "$tmp" || die "the freshly built $tmp does not report ipfs version ${KUBO_VERSION#v}: $("$tmp" version 2>&1 || true)"
mv -f "$tmp" "$BIN"
echo "kubo.sh: built $BIN in $((SECONDS - start)) s" >&2
printf '%s\n' "$BIN"
