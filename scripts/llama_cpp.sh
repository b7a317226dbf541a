#!/usr/bin/env bash
# Build llama.cpp (the copy vendored in the pinned llama-cpp-python sdist) into a cache outside
# the tree, once per machine and variant.  Prints the bin directory on stdout when it is ready.
#
#   scripts/llama_cpp.sh [native|avx2] [--check]
#
#   native  (default) GGML_NATIVE=ON: tuned to this CPU
#   avx2    GGML_NATIVE=OFF, AVX/AVX2/FMA/F16C on, AVX-512 off (the common x86-64 baseline)
#   --check only report the cached build (exit 0 and print its bin dir) or exit 3; never build
#
# Cache: ${POPPINS_CACHE:-$HOME/.cache/poppins}/llama.cpp-0.3.36-<variant>/bin
# Exit codes: 0 ready; 3 not available (cannot download / no compiler / build failed) -- the
# tests turn 3 into a skip (or a failure with POPPINS_REQUIRE_LLAMA_CPP=1); 2 usage error.
# Two callers never build at once (flock on the cache's lock file); the second one waits and
# then finds the finished build.  Targets: llama-cli llama-simple llama-server llama-tokenize
# llama-bench only.  apt installs cmake / g++ (named) when they are missing and we are root.
set -euo pipefail
VERSION=0.3.36
VARIANT=native
CHECK=0
for arg in "$@"; do
    case "$arg" in
        native|avx2) VARIANT=$arg ;;
        --check) CHECK=1 ;;
        *) echo "usage: $0 [native|avx2] [--check]" >&2; exit 2 ;;
    esac
done
CACHE=${POPPINS_CACHE:-$HOME/.cache/poppins}
DEST=$CACHE/llama.cpp-$VERSION-$VARIANT
TARGETS="llama-server llama-cli llama-simple llama-tokenize llama-bench"
unavailable() { echo "llama.cpp unavailable: $*" >&2; exit 3; }
ready() { [ -f "$DEST/READY" ] && [ -x "$DEST/bin/llama-server" ]; }   # the tests need the server

if ready; then echo "$DEST/bin"; exit 0; fi
[ "$CHECK" = 0 ] || unavailable "no cached build at $DEST (run scripts/llama_cpp.sh $VARIANT)"

mkdir -p "$CACHE"
exec 9>"$CACHE/llama.cpp-$VERSION-$VARIANT.lock"
command -v flock >/dev/null 2>&1 || unavailable "flock not found (util-linux)"
flock 9
if ready; then echo "$DEST/bin"; exit 0; fi   # another caller finished it while we waited

if ! command -v cmake >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ make >/dev/null) >&2 \
            || unavailable "apt-get install cmake g++ failed"
    fi
    command -v cmake >/dev/null 2>&1 || unavailable "cmake not found"
    command -v g++ >/dev/null 2>&1 || unavailable "g++ not found"
fi

PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "$CACHE/llama.cpp-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
echo "llama.cpp: downloading llama-cpp-python==$VERSION (sdist) ..." >&2
"$PYTHON" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$WORK" >&2 \
    || unavailable "pip download llama-cpp-python==$VERSION failed"
SDIST=$(ls "$WORK"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null | head -1)
[ -n "$SDIST" ] || unavailable "sdist not found after download"
tar -xzf "$SDIST" -C "$WORK"
SRC=$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp
[ -f "$SRC/CMakeLists.txt" ] || unavailable "no vendor/llama.cpp in the sdist"

FLAGS=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF
       -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON -DGGML_OPENMP=ON)
case "$VARIANT" in
    native) FLAGS+=(-DGGML_NATIVE=ON) ;;
    avx2)   FLAGS+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
                    -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF
                    -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF) ;;
esac
echo "llama.cpp: configuring ($VARIANT) ..." >&2
cmake -S "$SRC" -B "$WORK/build" "${FLAGS[@]}" >"$WORK/cmake.log" 2>&1 \
    || { tail -20 "$WORK/cmake.log" >&2; unavailable "cmake configure failed"; }
BUILT=()
for t in $TARGETS; do
    echo "llama.cpp: building $t (-j2; several minutes on a small machine) ..." >&2
    if cmake --build "$WORK/build" --target "$t" -j2 >>"$WORK/build.log" 2>&1; then BUILT+=("$t");
    else echo "llama.cpp: target $t failed (see below)" >&2; tail -15 "$WORK/build.log" >&2; fi
done
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp/bin"
for t in "${BUILT[@]}"; do cp "$WORK/build/bin/$t" "$DEST.tmp/bin/"; done
# keep the vendored sources needed to re-check facts (arch tables, TQ2_0) beside the build
mkdir -p "$DEST.tmp/src"
cp -r "$SRC/src" "$SRC/include" "$SRC/ggml/include" "$DEST.tmp/src/" 2>/dev/null || true
cp "$SRC/ggml/src/ggml-quants.c" "$DEST.tmp/src/" 2>/dev/null || true
(cd "$SRC" && git rev-parse HEAD 2>/dev/null || true) >"$DEST.tmp/COMMIT"
echo "$VERSION $VARIANT ${BUILT[*]}" >"$DEST.tmp/READY"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
ready || unavailable "build incomplete (built: ${BUILT[*]:-none})"
echo "$DEST/bin"
