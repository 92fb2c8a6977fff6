#!/usr/bin/env bash
# Debian's chromium for the report's browser test (no browser download of a test tool's own).
set -e
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ]; then echo "chromium missing and not root: install Debian's chromium"; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq chromium >/dev/null
command -v chromium
