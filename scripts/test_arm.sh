#!/usr/bin/env bash
# make test-arm: the whole package (all four extension families) cross-built for aarch64 and
# armv7l as wheels, then installed and run under qemu-user with Debian bookworm's Python:
# `poppins info` (kernel path per CPU), greedy ids of an x86-trained model, the kernel and
# engine tests, and bootstrap + train --steps 20 + infer, on cortex-a53 (neon), cortex-a76
# (neondot) and cortex-a7 (32-bit NEON).  A thin wrapper over the wheel machinery:
#
#   scripts/cross_tools.sh     host tools by name (cross gcc, libc6-dev-*-cross, qemu-user,
#                              build/auditwheel from PyPI); works on a fresh Debian host
#   scripts/arm_sysroot.sh     Debian's ARM Python/numpy/regex/lxml/pytest in .arm/ (private apt
#                              state: never installs a foreign-architecture package, never
#                              changes the host's dpkg architectures)
#   scripts/build_wheels.py    the wheels (here: x86_64 for the reference model, bookworm arm64
#                              and armhf) into build/wheels/arm-dist
#   scripts/test_wheels.py     the checks
#
#   bash scripts/test_arm.sh           (make test-wheels runs the same checks on every wheel)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT="$ROOT/build/wheels/arm-dist"
bash "$ROOT/scripts/cross_tools.sh"
"$PY" "$ROOT/scripts/build_wheels.py" --targets x86_64,bookworm-arm64,bookworm-armhf --out "$OUT"
"$PY" "$ROOT/scripts/test_wheels.py" --dist "$OUT" "$@"
