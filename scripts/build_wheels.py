#!/usr/bin/env python3
"""make wheels: the sdist, then manylinux wheels for x86_64 (native), aarch64 and armv7l
(cross-compiled with Debian's cross toolchains), every wheel built from the unpacked sdist.

    python3 scripts/build_wheels.py                 # everything below, into dist/
    python3 scripts/build_wheels.py --targets x86_64,bookworm-arm64
    python3 scripts/build_wheels.py --check-reproducible   # build twice, compare sha256

Targets (CPython of the host, and of Raspberry Pi OS = Debian bookworm / trixie):
    x86_64           the host's CPython (the wheel for the laptop that trains)
    bookworm-arm64   cp311 aarch64   Raspberry Pi OS 64-bit (bookworm): Pi 3/4/5, Zero 2 W
    bookworm-armhf   cp311 armv7l    Raspberry Pi OS 32-bit (bookworm): Pi 2/3/4, Zero 2 W
    trixie-arm64     cp313 aarch64   Raspberry Pi OS 64-bit (trixie)
    trixie-armhf     cp313 armv7l    Raspberry Pi OS 32-bit (trixie)

How the cross build works (no crossenv, no Docker): scripts/arm_sysroot.sh extracts the target
release's Python and NumPy into .arm/SUITE-ARCH; the host Python runs setup.py with
``_PYTHON_SYSCONFIGDATA_NAME`` pointing at a copy of the target's own sysconfig data (its
EXT_SUFFIX, SOABI and CC/LDSHARED, which on Debian already name the cross compiler), with
INCLUDEPY moved into the sysroot, and ``_PYTHON_HOST_PLATFORM`` naming the target platform.
setup.py's compiler probes then run with the cross compiler, so the wheel gets the NEON units
(and dotprod on aarch64) and their run-time dispatch, exactly as a native ARM build would.
NumPy headers: trixie's NumPy 2 headers for the target architecture (setup.py's
POPPINS_NUMPY_INCLUDE hook), so one wheel imports under NumPy 1.x (bookworm's 1.24) and 2.x.

auditwheel (PyPI) then checks the tags and repairs each wheel: libgomp is not in any manylinux
policy, so it is bundled (poppins.libs/libgomp-HASH.so.1); the manylinux floor is the highest
glibc symbol version the extensions and the bundled libgomp need (printed, and stated in the
README).  SOURCE_DATE_EPOCH (default: the last commit's time) fixes every timestamp, and the
compile paths are mapped away (-ffile-prefix-map), so the same source gives the same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARM = Path(os.environ.get("POPPINS_ARM_DIR", ROOT / ".arm"))
WORK = ROOT / "build" / "wheels"

SUITE_PY = {"bookworm": "3.11", "trixie": "3.13"}
ARCHS = {  # Debian arch: (GNU triplet, Python platform, wheel platform)
    "arm64": ("aarch64-linux-gnu", "linux-aarch64", "linux_aarch64"),
    "armhf": ("arm-linux-gnueabihf", "linux-armv7l", "linux_armv7l"),
}
ALL_TARGETS = ["x86_64", "bookworm-arm64", "bookworm-armhf", "trixie-arm64", "trixie-armhf"]
# the sysroot whose NumPy headers every ARM wheel of that architecture is compiled against
NUMPY_HEADERS_SUITE = "trixie"


def log(msg: str) -> None:
    print(f"[wheels {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], **kw)
    if res.returncode:
        for stream in (res.stdout, res.stderr):
            if isinstance(stream, str):
                sys.stderr.write(stream[-6000:])
        raise SystemExit(f"build_wheels: failed ({res.returncode}): {' '.join(map(str, cmd))}")
    return res


def source_date_epoch() -> str:
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        return env
    try:
        return subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "315532800"   # 1980-01-01, the earliest time a zip file can hold


def sysroot(suite: str, arch: str) -> Path:
    out = run(["bash", ROOT / "scripts" / "arm_sysroot.sh", suite, arch],
              capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    return Path(out.stdout.strip().splitlines()[-1])


def numpy_include(arch: str) -> Path:
    sysr = sysroot(NUMPY_HEADERS_SUITE, arch)
    found = sorted(sysr.glob("usr/lib/**/numpy/_core/include/numpy/_numpyconfig.h"))
    if not found:
        raise SystemExit(f"build_wheels: no NumPy 2 headers in {sysr}")
    return found[0].parent.parent


def make_sdist(out: Path, env: dict) -> Path:
    log("sdist")
    tmp = WORK / "sdist"
    shutil.rmtree(tmp, ignore_errors=True)
    run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", tmp, ROOT],
        env=env, stdout=subprocess.DEVNULL)
    (sdist,) = tmp.glob("poppins-*.tar.gz")
    out.mkdir(parents=True, exist_ok=True)
    normalize_tar(sdist, out / sdist.name, int(env["SOURCE_DATE_EPOCH"]))
    return out / sdist.name


def normalize_tar(src: Path, dest: Path, epoch: int) -> None:
    """The sdist with reproducible bytes: setuptools writes PKG-INFO and SOURCES.txt with the
    current time and gzip stamps the time too; here every member gets mtime SOURCE_DATE_EPOCH,
    owner 0/0 and a fixed order, and the gzip header the same mtime."""
    import gzip
    import io

    members = []
    with tarfile.open(src) as tf:
        for m in tf.getmembers():
            data = tf.extractfile(m).read() if m.isfile() else None
            members.append((m, data))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        for m, data in sorted(members, key=lambda md: md[0].name):
            m.mtime = epoch
            m.uid = m.gid = 0
            m.uname = m.gname = ""
            m.mode = 0o755 if m.isdir() or m.mode & 0o111 else 0o644
            m.pax_headers = {}
            out.addfile(m, io.BytesIO(data) if data is not None else None)
    with open(dest, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=epoch,
                                              compresslevel=9) as gz:
        gz.write(buf.getvalue())


def unpack(sdist: Path, dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(sdist) as tf:
        tf.extractall(dest, filter="data")
    (src,) = dest.iterdir()
    return src


def cross_env(suite: str, arch: str, env: dict) -> tuple[dict, list[str]]:
    """The environment that makes the host Python's setuptools build for SUITE-ARCH."""
    triplet, py_plat, _ = ARCHS[arch]
    pyv = SUITE_PY[suite]
    sysr = sysroot(suite, arch)
    data_name = f"_sysconfigdata__linux_{triplet}"
    src = sysr / "usr" / "lib" / f"python{pyv}" / f"{data_name}.py"
    ns: dict = {}
    exec(compile(src.read_text(), str(src), "exec"), ns)
    cfg = dict(ns["build_time_vars"])
    inc = str(sysr / "usr" / "include" / f"python{pyv}")
    for key in ("INCLUDEPY", "CONFINCLUDEPY"):
        cfg[key] = inc
    # LIBDIR stays the target's own path (absent here): a -L into the sysroot would make the
    # linker follow its libc.so script to the host's absolute /lib paths; extensions do not
    # link libpython on Linux, and the cross compiler brings its own C library.
    cdir = WORK / f"cross-{suite}-{arch}"
    cdir.mkdir(parents=True, exist_ok=True)
    (cdir / f"{data_name}.py").write_text(
        f"# {src.name} of Debian {suite} {arch}, with its include paths moved into the sysroot\n"
        f"build_time_vars = {cfg!r}\n")
    for tool in ("gcc",):
        if not shutil.which(f"{triplet}-{tool}"):
            raise SystemExit(f"build_wheels: {triplet}-{tool} missing (make wheels installs the "
                             "cross toolchains: scripts/cross_tools.sh)")
    e = dict(env)
    e.update({
        "_PYTHON_SYSCONFIGDATA_NAME": data_name,
        "_PYTHON_HOST_PLATFORM": py_plat,
        "PYTHONPATH": str(cdir),
        "CC": f"{triplet}-gcc",
        "LDSHARED": f"{triplet}-gcc -shared",
        # Debian's multiarch pyconfig.h includes <TRIPLET/pythonX.Y/pyconfig.h>
        "CFLAGS": env.get("CFLAGS", "") + f" -idirafter {sysr}/usr/include",
        "POPPINS_NUMPY_INCLUDE": str(numpy_include(arch)),
    })
    return e, ["--python-tag", "cp" + pyv.replace(".", "")]


def build_wheel(target: str, src: Path, raw: Path, env: dict) -> Path:
    e = dict(env)
    e["CFLAGS"] = (e.get("CFLAGS", "") + f" -g0 -ffile-prefix-map={src}=.").strip()
    extra: list[str] = []
    if target != "x86_64":
        suite, arch = target.split("-")
        e, extra = cross_env(suite, arch, e)
    build_base = WORK / f"build-{target}"
    shutil.rmtree(build_base, ignore_errors=True)
    shutil.rmtree(src / "build", ignore_errors=True)
    before = set(raw.glob("*.whl"))
    log(f"wheel {target}")
    out = run([sys.executable, "setup.py", "-q", "build", "--build-base", build_base,
               "bdist_wheel", "--dist-dir", raw, *extra],
              cwd=src, env=e, capture_output=True, text=True)
    for line in sorted(set(out.stdout.splitlines())):
        if line.startswith("poppins build:"):
            log(f"  {target}: {line}")
    (whl,) = set(raw.glob("*.whl")) - before
    return whl


def repair(whl: Path, out: Path, target: str, env: dict) -> Path:
    e = dict(env)
    if target != "x86_64":   # auditwheel finds libgomp.so.1 of the target in the cross libc dir
        triplet = ARCHS[target.split("-")[1]][0]
        e["LD_LIBRARY_PATH"] = f"/usr/{triplet}/lib"
    show = run([sys.executable, "-m", "auditwheel", "show", whl], env=e, capture_output=True,
               text=True).stdout
    # with libgomp (in no policy) still external, auditwheel names the tag the glibc symbols
    # allow ("constrains the platform tag to"); repair bundles libgomp to reach it
    m = (re.search(r'constrains the platform tag to\s*"(manylinux[^"]+)"', show)
         or re.search(r'consistent with the\s+following platform tag:\s*"(manylinux[^"]+)"', show))
    if not m:
        raise SystemExit(f"build_wheels: auditwheel found no manylinux tag for {whl.name}:\n{show}")
    log(f"  auditwheel show {whl.name}: {m.group(1)}")
    before = set(out.glob("*.whl"))
    # --plat auto: auditwheel takes the architecture from the wheel (its --plat choices are
    # the host's); the result must carry the tag `show` predicted
    run([sys.executable, "-m", "auditwheel", "repair", "--plat", "auto", "-w", out, whl],
        env=e, capture_output=True, text=True)
    (fixed,) = set(out.glob("*.whl")) - before
    if m.group(1) not in fixed.name:
        raise SystemExit(f"build_wheels: {fixed.name} lacks the tag {m.group(1)}")
    return fixed


def build_all(targets: list[str], out: Path, epoch: str) -> list[Path]:
    env = dict(os.environ)
    env["SOURCE_DATE_EPOCH"] = epoch
    env.pop("POPPINS_NO_EXT", None)
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("poppins-*.whl")) + list(out.glob("poppins-*.tar.gz")):
        old.unlink()
    sdist = make_sdist(out, env)
    src = unpack(sdist, WORK / "src")
    raw = WORK / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    made = [sdist]
    for t in targets:
        made.append(repair(build_wheel(t, src, raw, env), out, t, env))
        log(f"  -> {made[-1].name}")
    return made


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default=",".join(ALL_TARGETS),
                    help=f"comma-separated, of {','.join(ALL_TARGETS)}")
    ap.add_argument("--out", default=str(ROOT / "dist"))
    ap.add_argument("--check-reproducible", nargs="?", const="all", default=None,
                    metavar="TARGETS", help="build the sdist and TARGETS (default: all of "
                    "--targets) a second time into build/wheels/again and compare sha256")
    args = ap.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in ALL_TARGETS]
    if bad:
        ap.error(f"unknown target(s) {bad}; known: {ALL_TARGETS}")
    t0 = time.time()
    epoch = source_date_epoch()
    log(f"SOURCE_DATE_EPOCH={epoch}")
    made = build_all(targets, Path(args.out), epoch)
    for p in made:
        print(f"{sha256(p)}  {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}")
    if args.check_reproducible:
        again_targets = targets if args.check_reproducible == "all" else \
            [t.strip() for t in args.check_reproducible.split(",") if t.strip()]
        log(f"second build of the sdist and {','.join(again_targets)}, to compare bytes")
        again = build_all(again_targets, WORK / "again", epoch)
        first = {p.name: sha256(p) for p in made}
        diff = [p.name for p in again if first.get(p.name) != sha256(p)]
        if diff:
            print(f"build_wheels: NOT reproducible (sha256 differs): {diff}")
            return 1
        log(f"reproducible: {len(again)} files, identical sha256 in both builds")
    log(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
