#!/usr/bin/env bash
# Installs what the tests need on a Debian 12 machine (run as root; idempotent):
# clang/lld/wasi-libc/libclang-rt for wasm32-wasi, wabt, nginx, apache2, wrk,
# docker-registry (a local OCI registry for the oci: module tests), redis-server
# (the store of the fleet-wide budget tests).
# Never leaves the system nginx/apache2/redis-server services running: the tests start
# their own instances on their own ports. Go is expected to be on the machine
# already (Debian's Go is too old); a missing go is reported, not installed.
set -euo pipefail

PACKAGES=(clang lld wasi-libc libclang-rt-dev-wasm32 wabt nginx apache2 wrk systemd util-linux docker-registry apache2-utils redis-server)
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
for cmd in clang wasm-ld wat2wasm nginx apache2 wrk systemd-socket-activate systemd-analyze setpriv prlimit docker-registry htpasswd redis-server; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
[ -f /usr/include/wasm32-wasi/stdio.h ] || missing+=("wasi-libc sysroot")
builtins=""
if command -v clang >/dev/null 2>&1; then
	builtins=$(clang --target=wasm32-wasi -print-libgcc-file-name 2>/dev/null || true)
fi
if [ -z "$builtins" ] || [ ! -f "$builtins" ]; then
	missing+=("libclang_rt.builtins-wasm32")
fi

installed=no
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup: missing ${missing[*]}; run this script as root" >&2
		exit 1
	fi
	# Keep Debian's postinst scripts from starting nginx/apache2/docker-registry/redis-server
# while installing.
	policy=/usr/sbin/policy-rc.d
	own_policy=no
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		own_policy=yes
		trap 'rm -f "$policy"' EXIT
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
	if [ "$own_policy" = yes ]; then
		rm -f "$policy"
		trap - EXIT
	fi
	installed=yes
fi

# Stop and disable the system services if they run (they use the system pid
# files, so the tests' own nginx/apache2 instances are not touched).
stopped=()
if [ "$(id -u)" -eq 0 ]; then
	for svc in nginx apache2 docker-registry redis-server; do
		[ -x "/etc/init.d/$svc" ] || continue
		if service "$svc" status >/dev/null 2>&1; then
			service "$svc" stop >/dev/null 2>&1 || true
			stopped+=("$svc")
		fi
		if [ "$installed" = yes ]; then
			if [ -d /run/systemd/system ]; then
				systemctl disable "$svc" >/dev/null 2>&1 || true
			fi
			update-rc.d "$svc" disable >/dev/null 2>&1 || true
		fi
	done
fi

# The system user children run as when the manager runs as root and
# [pool] user is not set (what conf/systemd/wagi-fcgi.sysusers declares);
# the suite runs as root, so every test's children need it.
if [ "$(bash "$(dirname "${BASH_SOURCE[0]}")/../conf/systemd/useradd.sh")" = created ]; then
	created_user=yes
fi

# Check the result.
for cmd in clang wasm-ld wat2wasm nginx apache2 wrk systemd-socket-activate systemd-analyze setpriv prlimit docker-registry htpasswd redis-server; do
	command -v "$cmd" >/dev/null 2>&1 || {
		echo "setup: $cmd still missing after install" >&2
		exit 1
	}
done
[ -f /usr/include/wasm32-wasi/stdio.h ] || {
	echo "setup: wasi-libc sysroot still missing" >&2
	exit 1
}
builtins=$(clang --target=wasm32-wasi -print-libgcc-file-name 2>/dev/null || true)
[ -n "$builtins" ] && [ -f "$builtins" ] || {
	echo "setup: libclang_rt.builtins-wasm32 still missing" >&2
	exit 1
}

msg="setup:"
if [ "$installed" = yes ]; then
	msg+=" installed ${PACKAGES[*]} (missing: ${missing[*]})"
else
	msg+=" all tools present, nothing installed"
fi
[ ${#stopped[@]} -eq 0 ] || msg+="; stopped system ${stopped[*]}"
[ "${created_user:-no}" = no ] || msg+="; created system user wagi-fcgi"
getent passwd wagi-fcgi >/dev/null || msg+="; WARNING: no wagi-fcgi user (run this script as root): tests run as root need it"
command -v go >/dev/null 2>&1 || msg+="; WARNING: go not found on PATH (Go 1.26 expected, e.g. /usr/local/go/bin)"
echo "$msg"
