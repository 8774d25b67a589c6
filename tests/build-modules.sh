#!/usr/bin/env bash
# Builds the test WebAssembly modules of tests/testdata/modules into OUTDIR.
#
# Usage: tests/build-modules.sh OUTDIR
#
#   *.c          -> OUTDIR/<name>.wasm   (clang --target=wasm32-wasi)
#   *.wat        -> OUTDIR/<name>.wasm   (wat2wasm)
#   <dir>/*.go   -> OUTDIR/<dir>.wasm    (GOOS=wasip1 GOARCH=wasm go build)
#   generated    -> OUTDIR/notwasm.wasm  (a text file, not a wasm module)
#
# Only modules whose inputs changed are rebuilt: OUTDIR/.stamps/<name> holds a
# hash of the sources, the build command and the tool's version. Outputs are
# written to a temporary file and renamed, and the whole run holds
# flock(OUTDIR/.lock), so several processes may run it at once.
set -euo pipefail

die() {
	echo "build-modules: $*" >&2
	exit 1
}

[ $# -eq 1 ] && [ -n "$1" ] || die "usage: $0 OUTDIR"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=$ROOT/tests/testdata/modules

# --- toolchain checks --------------------------------------------------------
missing=()
for cmd in clang wasm-ld wat2wasm flock sha256sum; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
[ ${#missing[@]} -eq 0 ] || die "missing tool(s): ${missing[*]}; run tests/setup.sh (as root)"
command -v go >/dev/null 2>&1 || die "missing tool: go (Go 1.26 is expected on PATH, e.g. /usr/local/go/bin)"
[ -f /usr/include/wasm32-wasi/stdio.h ] ||
	die "missing wasi-libc sysroot (/usr/include/wasm32-wasi/stdio.h); run tests/setup.sh (as root)"
builtins=$(clang --target=wasm32-wasi -print-libgcc-file-name 2>/dev/null || true)
[ -n "$builtins" ] && [ -f "$builtins" ] ||
	die "missing libclang_rt.builtins-wasm32 (${builtins:-unknown path}); run tests/setup.sh (as root)"

# --- output dir and lock -----------------------------------------------------
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
mkdir -p "$OUT/.stamps"
exec 9>"$OUT/.lock"
flock 9

CLANG_VERSION=$(clang --version | head -n1)
WAT2WASM_VERSION=$(wat2wasm --version)
GO_VERSION=$(go version)

CFLAGS=(--target=wasm32-wasi -O2 -Wall -Werror)
built=()
uptodate=0

# hash_inputs RECIPE FILE... prints a hash of the recipe and each file's name and bytes.
hash_inputs() {
	local recipe=$1
	shift
	{
		printf '%s\n' "$recipe"
		local f
		for f in "$@"; do
			printf '\n== %s\n' "${f#"$ROOT"/}"
			cat "$f"
		done
	} | sha256sum | cut -d' ' -f1
}

# needs_build NAME HASH: true when OUTDIR/NAME.wasm is missing or was built from other inputs.
needs_build() {
	local name=$1 hash=$2
	[ -f "$OUT/$name.wasm" ] && [ -f "$OUT/.stamps/$name" ] &&
		[ "$(cat "$OUT/.stamps/$name")" = "$hash" ] && return 1
	return 0
}

# finish NAME HASH TMP: moves TMP into place and records the stamp.
finish() {
	local name=$1 hash=$2 tmp=$3
	mv -f "$tmp" "$OUT/$name.wasm"
	printf '%s\n' "$hash" >"$OUT/.stamps/$name"
	built+=("$name")
}

tmpfiles=()
cleanup() {
	local f
	for f in "${tmpfiles[@]}"; do rm -f "$f"; done
}
trap cleanup EXIT

shopt -s nullglob

for src in "$SRC"/*.c; do
	name=$(basename "$src" .c)
	hash=$(hash_inputs "c|$CLANG_VERSION|${CFLAGS[*]}" "$src")
	if needs_build "$name" "$hash"; then
		tmp="$OUT/.tmp.$name.$$.wasm"
		tmpfiles+=("$tmp")
		clang "${CFLAGS[@]}" -o "$tmp" "$src" || die "clang failed for ${src#"$ROOT"/}"
		finish "$name" "$hash" "$tmp"
	else
		uptodate=$((uptodate + 1))
	fi
done

for src in "$SRC"/*.wat; do
	name=$(basename "$src" .wat)
	hash=$(hash_inputs "wat|$WAT2WASM_VERSION" "$src")
	if needs_build "$name" "$hash"; then
		tmp="$OUT/.tmp.$name.$$.wasm"
		tmpfiles+=("$tmp")
		wat2wasm -o "$tmp" "$src" || die "wat2wasm failed for ${src#"$ROOT"/}"
		finish "$name" "$hash" "$tmp"
	else
		uptodate=$((uptodate + 1))
	fi
done

for dir in "$SRC"/*/; do
	dir=${dir%/}
	gofiles=("$dir"/*.go)
	[ ${#gofiles[@]} -gt 0 ] || continue
	name=$(basename "$dir")
	mapfile -t inputs < <(find "$dir" -type f | LC_ALL=C sort)
	hash=$(hash_inputs "go|$GO_VERSION|-trimpath" "${inputs[@]}" "$ROOT/go.mod" "$ROOT/go.sum")
	if needs_build "$name" "$hash"; then
		tmp="$OUT/.tmp.$name.$$.wasm"
		tmpfiles+=("$tmp")
		(cd "$ROOT" && GOOS=wasip1 GOARCH=wasm go build -trimpath -o "$tmp" "./${dir#"$ROOT"/}") ||
			die "go build failed for ${dir#"$ROOT"/}"
		finish "$name" "$hash" "$tmp"
	else
		uptodate=$((uptodate + 1))
	fi
done

notwasm=$'this is not a wasm module\n'
if ! printf '%s' "$notwasm" | cmp -s - "$OUT/notwasm.wasm" 2>/dev/null; then
	tmp="$OUT/.tmp.notwasm.$$.wasm"
	tmpfiles+=("$tmp")
	printf '%s' "$notwasm" >"$tmp"
	mv -f "$tmp" "$OUT/notwasm.wasm"
	built+=(notwasm)
else
	uptodate=$((uptodate + 1))
fi

if [ ${#built[@]} -gt 0 ]; then
	echo "build-modules: built ${built[*]}; $uptodate up to date; in $OUT"
else
	echo "build-modules: all $uptodate modules up to date in $OUT"
fi
