#!/usr/bin/env bash
# Creates the system user a root manager's children run as when [pool] user
# is not set (what wagi-fcgi.sysusers declares), for machines without
# systemd-sysusers: `make run` and the test setup call it as root.
# Idempotent; prints "created" when it made the user.
set -euo pipefail
if [ "$(id -u)" -eq 0 ] && ! getent passwd wagi-fcgi >/dev/null; then
	useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
		--comment "wagi-fcgi WebAssembly children" wagi-fcgi
	echo created
fi
