#!/usr/bin/env bash
# Installs Debian's Chromium for the web-page browser test (tests/inference/test_server_process.py), idempotently.
# Python's `playwright` package drives it (it comes with the dev extra); never run `playwright install`, which
# downloads its own browser builds. Safe to call on every CI run: it does nothing when chromium is already there.
# Run as root (CI containers usually are), Chromium refuses to start without --no-sandbox; the browser test passes
# that flag itself, but a Chromium you start by hand as root needs it too.
set -euo pipefail

root_note() {
    if [ "$(id -u)" -eq 0 ]; then
        echo "install-browser: note: as root, start Chromium with --no-sandbox (the browser test already does)"
    fi
}

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "install-browser: chromium already installed: $( (chromium --version || chromium-browser --version) 2>/dev/null | head -n1)"
    root_note
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no apt-get here; install Chromium yourself (the browser test is skipped without it)" >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-browser: not root and no sudo; cannot install chromium (the browser test will be skipped)" >&2
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium
echo "install-browser: installed $(chromium --version 2>/dev/null | head -n1)"
root_note
