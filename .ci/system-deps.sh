#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (software TPM, OpenSSL for a local
# time-stamping authority, Chromium to render the HTML ownership report). Safe to run repeatedly; skips packages already present.
set -euo pipefail
PACKAGES=(openssl swtpm swtpm-tools libtss2-dev pkg-config chromium)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "system-deps: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
