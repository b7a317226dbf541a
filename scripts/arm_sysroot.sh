#!/usr/bin/env bash
# scripts/arm_sysroot.sh SUITE ARCH: a private Debian sysroot with that release's Python, numpy,
# regex, lxml and pytest for ARCH (arm64 or armhf), to cross-compile against and to run under
# qemu-user.  Prints the sysroot's path on its last line.
#
#   bash scripts/arm_sysroot.sh bookworm arm64      -> .arm/bookworm-arm64
#   bash scripts/arm_sysroot.sh trixie armhf        -> .arm/trixie-armhf
#
# It NEVER installs a foreign-architecture package into the system and does not touch the
# host's apt or dpkg configuration: apt runs with its own sources list, package lists, cache
# and an empty dpkg status (all under .arm/apt-SUITE-ARCH), with ARCH as its only architecture,
# so `apt-cache depends --recurse` resolves the whole closure for ARCH; each package is fetched
# with `apt-get download` and unpacked with `dpkg-deb -x`.  Needs dpkg-deb and apt-get (any
# Debian or Ubuntu host) and the Debian archive keyring (package debian-archive-keyring).
set -euo pipefail
SUITE=${1:?usage: arm_sysroot.sh SUITE ARCH}
ARCH=${2:?usage: arm_sysroot.sh SUITE ARCH}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARM="${POPPINS_ARM_DIR:-$ROOT/.arm}"
SYS="$ARM/$SUITE-$ARCH"
APTD="$ARM/apt-$SUITE-$ARCH"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
case $ARCH in
    arm64) TRIPLET=aarch64-linux-gnu ;;
    armhf) TRIPLET=arm-linux-gnueabihf ;;
    *) echo "arm_sysroot: ARCH must be arm64 or armhf" >&2; exit 2 ;;
esac
# the Python minor version of each Debian release (Raspberry Pi OS follows the same release)
case $SUITE in
    bookworm) PYV=3.11 ;;
    trixie) PYV=3.13 ;;
    *) echo "arm_sysroot: SUITE must be bookworm or trixie" >&2; exit 2 ;;
esac
if [ -f "$SYS/.complete" ]; then echo "$SYS"; exit 0; fi
command -v dpkg-deb >/dev/null && command -v apt-get >/dev/null \
    || { echo "arm_sysroot: needs a Debian/Ubuntu host (apt-get, dpkg-deb)" >&2; exit 2; }
[ -f "$KEYRING" ] || { echo "arm_sysroot: needs $KEYRING (apt-get install debian-archive-keyring)" >&2; exit 2; }

rm -rf "$SYS" "$APTD"
mkdir -p "$APTD/none" "$APTD/lists/partial" "$APTD/cache/archives/partial" "$APTD/debs" "$SYS"
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" > "$APTD/sources.list"
: > "$APTD/status"
APT_OPTS=(-o "Dir::Etc::SourceList=$APTD/sources.list" -o "Dir::Etc::SourceParts=$APTD/none"
          -o "Dir::Etc::Preferences=$APTD/none" -o "Dir::Etc::PreferencesParts=$APTD/none"
          -o "Dir::State::Lists=$APTD/lists" -o "Dir::State::status=$APTD/status"
          -o "Dir::Cache=$APTD/cache" -o "APT::Architecture=$ARCH" -o "APT::Architectures::=$ARCH"
          -o "Acquire::Languages=none" -o "APT::Sandbox::User=root")
echo "arm_sysroot: apt-get update ($SUITE, $ARCH)" >&2
apt-get -qq "${APT_OPTS[@]}" update >&2
WANT=(python$PYV python3-numpy python3-regex python3-lxml python3-pytest libpython$PYV-dev
      libgomp1 libstdc++6)
# the closure of WANT (Depends and PreDepends only), one real package per line
mapfile -t PKGS < <(apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances "${WANT[@]}" \
    | grep -v '^ ' | grep -v '^<' | sed "s/:$ARCH\$//" | sort -u)
echo "arm_sysroot: apt-get download ${#PKGS[@]} packages" >&2
(cd "$APTD/debs" && apt-get -qq "${APT_OPTS[@]}" download "${PKGS[@]}" >&2)
for deb in "$APTD"/debs/*.deb; do dpkg-deb -x "$deb" "$SYS"; done
# links that maintainer scripts would make: the merged-/usr links (trixie's packages ship
# /usr/lib only; qemu looks for the loader at /lib/ld-linux-*.so) and update-alternatives'
for d in lib bin sbin; do [ -e "$SYS/$d" ] || ln -s "usr/$d" "$SYS/$d"; done
lib="$SYS/usr/lib/$TRIPLET"
[ -e "$lib/libblas.so.3" ] || ln -sf blas/libblas.so.3 "$lib/libblas.so.3"
[ -e "$lib/liblapack.so.3" ] || ln -sf lapack/liblapack.so.3 "$lib/liblapack.so.3"
[ -x "$SYS/usr/bin/python$PYV" ] || { echo "arm_sysroot: python$PYV was not extracted" >&2; exit 1; }
rm -rf "$APTD/debs"   # the sysroot is what is kept
touch "$SYS/.complete"
echo "$SYS"
