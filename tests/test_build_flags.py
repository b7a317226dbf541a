"""Each SIMD unit is compiled with exactly the flags of the features its dispatcher checks.

The one table is poppins/_isa.py: setup.py compiles ``ext/<family>/*_<isa>.c`` with
``unit_flags(family, isa)`` and passes the same feature list as the mask POPPINS_NEED_<ISA>,
which the dispatcher checks with pp_cpu_has() (ext/common/poppins_cpu.h).  These tests check
the three ends against each other:

* the masks the compiled modules report (``build_info()["needs"]``) equal the table;
* the C feature names (bit order of poppins_cpu.h) equal the table's FEATURES;
* the compiler's own feature macros for a unit's flags are exactly the unit's features (the
  feature list is closed under what the flags imply, so the dispatcher checks everything the
  compiler may emit);
* every SIMD source file has a table entry and every entry has a source file.
"""
from __future__ import annotations

import platform
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest

from poppins import _isa, native

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("ops", "ternary", "engine")

#: the compiler macro each feature defines
X86_MACROS = {"__AVX2__": "avx2", "__FMA__": "fma", "__F16C__": "f16c",
              "__AVX512F__": "avx512f", "__AVX512BW__": "avx512bw", "__AVX512VL__": "avx512vl",
              "__AVX512DQ__": "avx512dq", "__AVX512VNNI__": "avx512vnni"}
ARM_MACROS = {"__ARM_NEON": "neon", "__ARM_FEATURE_DOTPROD": "dotprod"}


def _simd_sources():
    out = {}
    for fam in FAMILIES:
        for p in sorted((ROOT / "ext" / fam).glob("*.c")):
            for isa in _isa.ISAS:
                if p.stem.endswith("_" + isa):
                    out.setdefault((fam, isa), []).append(p.name)
    return out


def test_every_simd_source_has_a_table_entry_and_back():
    srcs = _simd_sources()
    assert set(srcs) == set(_isa.UNITS), (
        f"SIMD files without a table entry: {sorted(set(srcs) - set(_isa.UNITS))}; "
        f"table entries without a file: {sorted(set(_isa.UNITS) - set(srcs))}")


def test_setup_reads_the_one_table():
    table = runpy.run_path(str(ROOT / "setup.py"))["ISA"]
    assert table["UNITS"] == _isa.UNITS and table["FEATURES"] == _isa.FEATURES
    text = (ROOT / "setup.py").read_text()
    assert "-mavx" not in text and "-march" not in text, "flags belong in poppins/_isa.py"


def test_unit_flags_and_masks():
    for (fam, isa), feats in _isa.UNITS.items():
        assert _isa.names(_isa.mask(feats)) == [f for f in _isa.FEATURES if f in feats]
        flags = _isa.unit_flags(fam, isa)
        for f in _isa.FEATURES:
            for flag in _isa.FEATURES[f]:
                assert (flag in flags) == (f in feats), (fam, isa, f)


def _compiled(family):
    mod = native.load(family)
    if mod is None:
        pytest.skip(f"poppins._{family} is not built")
    return mod


@pytest.mark.parametrize("family", FAMILIES)
def test_dispatcher_masks_equal_the_table(family):
    mod = _compiled(family)
    # the C names of the PP_CPU_* bits are the table's FEATURES in the same order
    assert mod._feature_names((1 << len(_isa.FEATURES)) - 1) == list(_isa.FEATURES)
    needs = mod.build_info()["needs"]
    assert needs.pop("scalar") == []
    assert needs, "no SIMD path compiled in (is the compiler too old?)"
    for isa, feats in needs.items():
        want = [f for f in _isa.FEATURES if f in _isa.UNITS[(family, isa)]]
        assert feats == want, f"{family}/{isa}: dispatcher checks {feats}, table says {want}"
    # a path is offered only when the CPU has every feature it needs
    have = set(mod.cpu_features())
    avail = mod.build_info()["available"]
    for isa, feats in needs.items():
        assert (isa in avail) == (set(feats) <= have), (family, isa, feats, have)


def _macros(cc, flags):
    out = subprocess.run([cc, *flags, "-dM", "-E", "-x", "c", "-"], input="", text=True,
                         capture_output=True, check=True).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith("#define ")}


@pytest.mark.parametrize("unit", sorted(_isa.UNITS), ids=lambda u: "-".join(u))
def test_flags_enable_exactly_the_checked_features(unit):
    """What the compiler may emit for a unit's flags is what its dispatcher checks."""
    fam, isa = unit
    feats = set(_isa.UNITS[unit])
    if isa in ("avx2", "avx512"):
        cc = shutil.which("cc") or shutil.which("gcc")
        if platform.machine() not in ("x86_64", "AMD64", "i686") or not cc:
            pytest.skip("needs an x86 C compiler")
        table = X86_MACROS
    else:
        cc = (shutil.which("cc") if platform.machine() in ("aarch64", "arm64") else
              shutil.which("aarch64-linux-gnu-gcc"))
        if not cc:
            pytest.skip("needs an AArch64 C compiler")
        table = ARM_MACROS
    got = {f for m, f in table.items() if m in _macros(cc, _isa.unit_flags(fam, isa))}
    assert got == feats, f"{fam}/{isa}: flags enable {sorted(got)}, dispatcher checks {sorted(feats)}"


@pytest.mark.parametrize("family", FAMILIES)
def test_parallel_cutoff_is_the_one_of_threads_py(family):
    """The C code's "go parallel" cut-off is poppins/threads.py's (setup.py passes it)."""
    from poppins import threads

    assert _compiled(family).build_info()["par_min_elements"] == threads.PARALLEL_MIN_ELEMENTS
    text = "".join(p.read_text() for fam in FAMILIES for p in (ROOT / "ext" / fam).glob("*.[ch]"))
    text += "".join(p.read_text() for fam in FAMILIES for p in (ROOT / "ext" / fam).glob("*.pyx"))
    for literal in ("1 << 15", "1 << 18", "1 << 20", "32768"):
        assert literal not in text, f"a parallel cut-off literal {literal!r} is back in ext/"
