"""The contents of what `make wheels` wrote to dist/ (skips when nothing was built): every wheel
holds all four extension families for its own architecture, py.typed and the bundled libgomp,
under a manylinux tag; the sdist holds every source a wheel is built from.  Running the wheels
is `make test-wheels` (scripts/test_wheels.py)."""
from __future__ import annotations

import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DIST = REPO / "dist"
WHEELS = sorted(DIST.glob("poppins-*.whl")) if DIST.is_dir() else []
SDISTS = sorted(DIST.glob("poppins-*.tar.gz")) if DIST.is_dir() else []
FAMILIES = sorted(p.stem for p in (REPO / "ext").glob("*/_*.pyx"))
# ELF e_machine of each wheel platform
MACHINE = {"x86_64": 62, "aarch64": 183, "armv7l": 40}


@pytest.mark.skipif(not WHEELS, reason="no wheels in dist/ (make wheels)")
@pytest.mark.parametrize("wheel", WHEELS, ids=[w.name for w in WHEELS])
def test_wheel_contents(wheel):
    m = re.match(r"poppins-[^-]+-(cp\d+)-(cp\d+)-manylinux_(\d+)_(\d+)_(x86_64|aarch64|armv7l)"
                 r"\.whl$", wheel.name)
    assert m, f"{wheel.name}: not a manylinux wheel name"
    py, abi, arch = m.group(1), m.group(2), m.group(5)
    assert py == abi
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        sos = [n for n in names if n.startswith("poppins/_") and n.endswith(".so")]
        got = sorted(Path(n).name.split(".")[0] for n in sos)
        assert got == FAMILIES, f"{wheel.name}: extensions {got}, expected {FAMILIES}"
        for n in sos:
            assert f".cpython-{py[2:]}-" in n, n
            head = zf.read(n)[:20]
            assert head[:4] == b"\x7fELF"
            assert int.from_bytes(head[18:20], "little") == MACHINE[arch], n
        assert "poppins/py.typed" in names
        assert any(re.match(r"poppins\.libs/libgomp-[0-9a-f]+\.so", n) for n in names), \
            f"{wheel.name}: libgomp is not bundled"
        wheel_meta = zf.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
        assert f"Tag: {py}-{abi}-manylinux_{m.group(3)}_{m.group(4)}_{arch}" in wheel_meta


@pytest.mark.skipif(not SDISTS, reason="no sdist in dist/ (make wheels)")
def test_sdist_holds_every_source():
    try:
        tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "ext", "poppins"],
                                 capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    with tarfile.open(SDISTS[-1]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    missing = [t for t in tracked if t not in names and (REPO / t).exists()]
    assert not missing, f"the sdist lacks {missing[:10]}"
    assert not [n for n in names if n.endswith((".so", ".o"))]
