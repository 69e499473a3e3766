#!/usr/bin/env bash
# Makes sure a C++ compiler is there, idempotently: DeepSpeed builds its CPU communication op (shm_comm) with g++ on
# first use (just-in-time, through torch's cpp_extension and ninja), which its ZeRO tests need. Does nothing when
# g++ is already installed; otherwise installs Debian's g++ where apt-get can be used.
set -euo pipefail

if command -v g++ >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-compiler: no g++ and no apt-get here; install a C++ compiler yourself (DeepSpeed's tests need one)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-compiler: no g++, not root and no sudo; install a C++ compiler yourself" >&2
        exit 1
    fi
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq g++
echo "install-compiler: installed $(g++ --version | head -n1)"
