#!/usr/bin/env bash
# make test-arm: cross-build poppins._ternary for aarch64 and run its tests under qemu-user,
# on a CPU without the dot-product extension (cortex-a53) and with it (cortex-a76); also
# compile-check the 32-bit ARM NEON guard.
#
#   bash scripts/test_arm.sh            (about 1-2 minutes once the apt caches are warm)
#
# What it does, and what it never does:
#   - installs the host tools gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf and qemu-user
#     (apt-get, as root or through sudo) when they are missing;
#   - adds the arm64 architecture to dpkg (needed so apt can *download* arm64 packages) and
#     downloads Debian's arm64 python3.11, numpy, pytest and their libraries with
#     `apt-get download`, extracting them with `dpkg-deb -x` into .arm/sysroot (gitignored).
#     It NEVER installs python3:arm64 into the system: that would remove host packages;
#   - cythonizes ext/ternary/_ternary.pyx on the host, compiles it with the cross compiler
#     (each SIMD file with its own flags, like setup.py) into .arm/site/poppins, next to a
#     copy of the pure-Python package, and runs tests/test_ternary.py with the arm64 Python
#     under qemu-aarch64 -L .arm/sysroot.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARM="$ROOT/.arm"
SYS="$ARM/sysroot"
SITE="$ARM/site"
BUILD="$ARM/build"
START=$(date +%s)
log() { printf '[test-arm %3ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi
APT_UPDATED=0
apt_update() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
}

# ---- 1. host tools -------------------------------------------------------------------
need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1 || need+=(gcc-arm-linux-gnueabihf)
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
# The cross compilers' C library headers are only a recommendation of gcc-*-linux-gnu*: name
# them, or a fresh host installed with --no-install-recommends has no <bits/libc-header-start.h>.
[ -f /usr/aarch64-linux-gnu/include/bits/libc-header-start.h ] || need+=(libc6-dev-arm64-cross)
[ -f /usr/arm-linux-gnueabihf/include/bits/libc-header-start.h ] || need+=(libc6-dev-armhf-cross)
command -v dpkg-deb >/dev/null 2>&1 || { echo "test-arm: needs a Debian/Ubuntu host (dpkg-deb)"; exit 2; }
if [ ${#need[@]} -gt 0 ]; then
    apt_update
    log "apt-get install ${need[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
PY_HOST="${PYTHON:-python3}"
"$PY_HOST" -c "import Cython" 2>/dev/null || { echo "test-arm: the host Python needs Cython (pip install Cython)"; exit 2; }

# ---- 2. arm64 Python, numpy and pytest into a private sysroot ---------------------------
PKGS=(
    libc6 libgcc-s1 libstdc++6 libgomp1 zlib1g libexpat1 libffi8 libbz2-1.0 liblzma5 libcrypt1
    libuuid1 libgfortran5 libblas3 liblapack3
    python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libpython3.11-dev
    python3-numpy
)
PKGS_ALL=(python3-pytest python3-pluggy python3-iniconfig python3-packaging python3-py python3-attr
          python3-more-itertools)
STAMP="$SYS/.complete"
if [ ! -f "$STAMP" ]; then
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        log "dpkg --add-architecture arm64 (download only; nothing arm64 is installed)"
        $SUDO dpkg --add-architecture arm64
        APT_UPDATED=0
    fi
    if ! apt-cache show python3.11-minimal:arm64 >/dev/null 2>&1; then apt_update; fi
    mkdir -p "$ARM/debs" "$SYS"
    log "apt-get download (arm64 python3.11, numpy, pytest)"
    specs=()
    for p in "${PKGS[@]}"; do specs+=("$p:arm64"); done
    (cd "$ARM/debs" && apt-get download -qq "${specs[@]}" "${PKGS_ALL[@]}" 2>&1 | grep -v "^W:" || true)
    for deb in "$ARM"/debs/*.deb; do dpkg-deb -x "$deb" "$SYS"; done
    # libblas.so.3 / liblapack.so.3 are update-alternatives links made by postinst scripts
    lib="$SYS/usr/lib/aarch64-linux-gnu"
    ln -sf blas/libblas.so.3 "$lib/libblas.so.3"
    ln -sf lapack/liblapack.so.3 "$lib/liblapack.so.3"
    [ -x "$SYS/usr/bin/python3.11" ] || { echo "test-arm: arm64 python3.11 was not extracted"; exit 1; }
    touch "$STAMP"
fi
PYARM=(qemu-aarch64 -L "$SYS" "$SYS/usr/bin/python3.11")

# ---- 3. cross-build poppins._ternary for aarch64 ---------------------------------------
log "cythonize + cross-compile poppins._ternary (aarch64)"
rm -rf "$BUILD" "$SITE"
mkdir -p "$BUILD" "$SITE"
(cd "$ROOT" && "$PY_HOST" -m cython -3 --module-name poppins._ternary \
    -X boundscheck=False -X wraparound=False -X cdivision=True -X initializedcheck=False \
    -I ext/ternary -I ext/common -o "$BUILD/_ternary.c" ext/ternary/_ternary.pyx)
# flags and feature masks of the SIMD units come from the one table, poppins/_isa.py (as in setup.py)
isa() { "$PY_HOST" -c "import runpy, sys; t = runpy.run_path('$ROOT/poppins/_isa.py'); print($1)"; }
NEED_NEON=$(isa "hex(t['mask'](t['UNITS'][('ternary', 'neon')]))")
NEED_NEONDOT=$(isa "hex(t['mask'](t['UNITS'][('ternary', 'neondot')]))")
read -r -a NEON_FLAGS <<< "$(isa "' '.join(t['unit_flags']('ternary', 'neon'))")"
read -r -a NEONDOT_FLAGS <<< "$(isa "' '.join(t['unit_flags']('ternary', 'neondot'))")"
CC=aarch64-linux-gnu-gcc
INC=(-I"$ROOT/ext/ternary" -I"$ROOT/ext/common" -I"$SYS/usr/include/python3.11"
     -I"$SYS/usr/include/aarch64-linux-gnu/python3.11" -idirafter "$SYS/usr/include")
BASE=(-O3 -std=c11 -fPIC -fno-strict-aliasing -fwrapv -Wall -Wno-unused-function -fopenmp -DNDEBUG
      -DPOPPINS_OPENMP=1)
PAR_MIN=$("$PY_HOST" -c "import runpy; print(runpy.run_path('$ROOT/poppins/threads.py')['PARALLEL_MIN_ELEMENTS'])")
HAVE=(-DPOPPINS_PAR_MIN_ELEMENTS="$PAR_MIN" -DPOPPINS_HAVE_NEON=1 -DPOPPINS_HAVE_NEONDOT=1 -DPOPPINS_NEED_NEON="$NEED_NEON"
      -DPOPPINS_NEED_NEONDOT="$NEED_NEONDOT")
$CC "${BASE[@]}" "${HAVE[@]}" "${INC[@]}" -Wno-unused-variable -c "$BUILD/_ternary.c" -o "$BUILD/_ternary.o"
$CC "${BASE[@]}" "${HAVE[@]}" "${INC[@]}" -c "$ROOT/ext/ternary/dispatch.c" -o "$BUILD/dispatch.o"
$CC "${BASE[@]}" "${HAVE[@]}" "${INC[@]}" -c "$ROOT/ext/ternary/ternary_scalar.c" -o "$BUILD/ternary_scalar.o"
$CC "${BASE[@]}" "${INC[@]}" ${NEON_FLAGS[@]+"${NEON_FLAGS[@]}"} -c "$ROOT/ext/ternary/ternary_neon.c" \
    -o "$BUILD/ternary_neon.o"
$CC "${BASE[@]}" "${INC[@]}" "${NEONDOT_FLAGS[@]}" -c "$ROOT/ext/ternary/ternary_neondot.c" \
    -o "$BUILD/ternary_neondot.o"
mkdir -p "$SITE/poppins"
(cd "$ROOT" && tar cf - --exclude='__pycache__' --exclude='*.so' --exclude='*.pyc' poppins) | tar xf - -C "$SITE"
$CC -shared -fopenmp -o "$SITE/poppins/_ternary.cpython-311-aarch64-linux-gnu.so" "$BUILD"/*.o
mkdir -p "$SITE/tests"
cp "$ROOT/tests/conftest.py" "$ROOT"/tests/test_ternary*.py "$ROOT"/tests/test_modelfile*.py "$SITE/tests/"
if [ -f "$ROOT/conftest.py" ]; then cp "$ROOT/conftest.py" "$SITE/"; fi
# an ini file here makes .arm/site pytest's rootdir, so nothing from the host checkout (its
# root conftest.py would put the checkout, with its x86 .so files, on sys.path) is loaded
printf '[pytest]\naddopts = -ra\n' > "$SITE/pytest.ini"

# ---- 4. 32-bit ARM: the NEON guard compiles with and without NEON -------------------------
log "32-bit ARM compile check (arm-linux-gnueabihf, with and without NEON)"
CC32=arm-linux-gnueabihf-gcc
for f in dispatch ternary_scalar ternary_neon ternary_neondot; do
    $CC32 -O2 -std=c11 -fPIC -Wall -Wno-unused-function -fopenmp -mfpu=neon -mfloat-abi=hard \
        -DPOPPINS_PAR_MIN_ELEMENTS="$PAR_MIN" -DPOPPINS_HAVE_NEON=1 -DPOPPINS_NEED_NEON="$NEED_NEON" \
        -I"$ROOT/ext/ternary" -I"$ROOT/ext/common" \
        -c "$ROOT/ext/ternary/$f.c" -o "$BUILD/arm32_$f.o"
    $CC32 -O2 -std=c11 -fPIC -Wall -Wno-unused-function -mfpu=vfpv3-d16 -mfloat-abi=hard \
        -DPOPPINS_PAR_MIN_ELEMENTS="$PAR_MIN" -I"$ROOT/ext/ternary" -I"$ROOT/ext/common" -c "$ROOT/ext/ternary/$f.c" -o "$BUILD/arm32_nosimd_$f.o"
done
arm-linux-gnueabihf-nm "$BUILD/arm32_ternary_neon.o" | grep -q " T tern_rows_neon" \
    || { echo "test-arm: 32-bit NEON build lacks tern_rows_neon"; exit 1; }
if arm-linux-gnueabihf-nm "$BUILD/arm32_nosimd_ternary_neon.o" | grep -q tern_rows_neon; then
    echo "test-arm: the NEON file must compile to nothing without NEON"; exit 1
fi

# ---- 5. run the kernel tests under qemu ------------------------------------------------
export PYTHONPATH="$SITE" PYTHONDONTWRITEBYTECODE=1 OMP_WAIT_POLICY=passive
unset POPPINS_NO_EXT POPPINS_KERNEL
status=0
for cpu in cortex-a53 cortex-a76; do
    case $cpu in cortex-a53) want="neon,scalar" ;; *) want="neondot,neon,scalar" ;; esac
    got=$(cd "$SITE" && QEMU_CPU=$cpu "${PYARM[@]}" -c \
        "import poppins._ternary as t, platform; print(platform.machine(), ','.join(t.available()))")
    log "qemu -cpu $cpu: $got"
    [ "$got" = "aarch64 $want" ] || { echo "test-arm: expected kernels $want on $cpu"; exit 1; }
    log "pytest tests/test_ternary*.py tests/test_modelfile*.py under qemu -cpu $cpu"
    (cd "$SITE" && QEMU_CPU=$cpu POPPINS_EXPECT_KERNELS="$want" "${PYARM[@]}" -m pytest -q \
        -p no:cacheprovider tests/test_ternary*.py tests/test_modelfile*.py) || status=1
done
log "done (status $status)"
exit $status
