"""Build script for poppins' compiled extensions.

Every kernel family lives in its own folder under ``ext/`` and is built as one extension
module: ``ext/<family>/_<name>.pyx`` becomes ``poppins._<name>``, linked with every plain
``*.c`` file of that folder.  SIMD variants live in their own translation units and are
compiled with their own flags only (never a native-CPU flag for the whole build).  The
flags come from ONE table, ``poppins/_isa.py``: ``UNITS[(family, isa)]`` lists the CPU
features a unit ``ext/<family>/*_<isa>.c`` may use; the unit is compiled with exactly the
flags of those features, and the extension gets ``-DPOPPINS_NEED_<ISA>=<mask>`` (the same
list as a bitmask), which its dispatcher checks with ``pp_cpu_has()`` (ext/common/
poppins_cpu.h) before choosing the unit.  ggml's rule: a binary never executes an
instruction the CPU lacks.

A variant is compiled only when the compiler accepts its flags (probed once), and the
extension then gets ``-DPOPPINS_HAVE_<ISA>=1`` so its dispatcher knows the variant exists;
which one runs is decided at import time from the CPU's features.

``POPPINS_ONLY=bpe,ops`` builds only the named families (handy while working on one).

OpenMP is used when the compiler supports it (``-fopenmp``); set ``POPPINS_NO_OPENMP=1`` to
build without it.  The build never fails for lack of OpenMP or of a SIMD variant; the
portable scalar path is always there, and the package falls back to its NumPy/Python
references when an extension cannot be imported at all.
"""
from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
EXT_DIR = ROOT / "ext"
COMMON_INCLUDE = EXT_DIR / "common"

#: The one table of features, flags and units (read without importing the package).
ISA = runpy.run_path(str(ROOT / "poppins" / "_isa.py"))
#: The "go parallel" cut-off of element-wise work, defined beside the thread count.
PAR_MIN_ELEMENTS = runpy.run_path(str(ROOT / "poppins" / "threads.py"))["PARALLEL_MIN_ELEMENTS"]


def _probe_flags(isa: str) -> list[str]:
    """The union of the flags of every unit of one ISA (the compiler must accept them all)."""
    out: list[str] = []
    for (_family, i), _need in ISA["UNITS"].items():
        if i == isa:
            out += [f for f in ISA["unit_flags"](_family, i) if f not in out]
    return out

# A tiny program per ISA: it compiles only when the compiler can target that ISA.
ISA_PROBES = {
    "avx2": "#include <immintrin.h>\nint main(void){__m256i a=_mm256_set1_epi8(1);"
            "a=_mm256_maddubs_epi16(a,a);return _mm256_extract_epi16(a,0)!=2;}\n",
    "avx512": "#include <immintrin.h>\nint main(void){__m512i a=_mm512_set1_epi8(1);"
              "__m512i s=_mm512_dpbusd_epi32(_mm512_setzero_si512(),a,a);"
              "return _mm512_reduce_add_epi32(s)!=64;}\n",
    "neon": "#include <arm_neon.h>\nint main(void){int8x16_t a=vdupq_n_s8(1);"
            "return vgetq_lane_s8(vaddq_s8(a,a),0)!=2;}\n",
    "neondot": "#include <arm_neon.h>\nint main(void){int8x16_t a=vdupq_n_s8(1);"
               "int32x4_t s=vdotq_s32(vdupq_n_s32(0),a,a);return vgetq_lane_s32(s,0)!=4;}\n",
}
OPENMP_PROBE = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\nreturn n<1;}\n"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class PoppinsBuildExt(build_ext):
    """build_ext that probes the compiler once and compiles SIMD files with their own flags."""

    def _try_compile(self, source: str, flags: list[str], link: bool = False) -> bool:
        tmp = Path(tempfile.mkdtemp(prefix="poppins-probe-"))
        saved = os.dup(2)   # a probe that fails is expected: keep the compiler's complaint quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            src = tmp / "probe.c"
            src.write_text(source)
            objs = self.compiler.compile([str(src)], output_dir=str(tmp), extra_postargs=flags)
            if link:
                self.compiler.link_executable(objs, "probe", output_dir=str(tmp), extra_postargs=flags)
            return True
        except Exception:
            return False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
            shutil.rmtree(tmp, ignore_errors=True)

    def build_extensions(self):
        # Quiet probes: distutils prints the failing compiler's stderr, which is noise here.
        self.openmp = (not _truthy("POPPINS_NO_OPENMP")) and self._try_compile(
            OPENMP_PROBE, ["-fopenmp"], link=True)
        self.isas = [isa for isa, src in ISA_PROBES.items()
                     if not _truthy(f"POPPINS_NO_{isa.upper()}") and _target_can(isa)
                     and self._try_compile(src, self._isa_flags(_probe_flags(isa), isa))]
        print(f"poppins build: openmp={'on' if self.openmp else 'off'} "
              f"simd={','.join(self.isas) or 'none'}")
        super().build_extensions()

    def _isa_flags(self, flags: list[str], isa: str = "") -> list[str]:
        flags = list(flags)
        if isa == "neon" and sysconfig.get_platform().startswith(("linux-armv7", "linux-arm")) \
                and "aarch64" not in sysconfig.get_platform():
            flags += ["-mfpu=neon"]
        return flags

    def build_extension(self, ext: Extension):
        base = ["-O3", "-std=c11", "-fno-strict-aliasing", "-Wno-unused-function"]
        omp = ["-fopenmp"] if self.openmp else []
        macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                  ("POPPINS_PAR_MIN_ELEMENTS", str(int(PAR_MIN_ELEMENTS)))]
        if self.openmp:
            macros.append(("POPPINS_OPENMP", "1"))
        objects = []
        tmp_dir = Path(self.build_temp) / "simd" / ext.name
        for src in getattr(ext, "simd_sources", []):
            isa = _isa_of(src)
            if isa not in self.isas:
                continue
            family = Path(src).parent.name
            need = (f"POPPINS_NEED_{isa.upper()}", hex(ISA["mask"](ISA["UNITS"][(family, isa)])))
            for m in (("POPPINS_HAVE_" + isa.upper(), "1"), need):
                if m not in macros:
                    macros.append(m)
            objects += self.compiler.compile(
                [src], output_dir=str(tmp_dir), include_dirs=ext.include_dirs,
                macros=[m for m in macros if not m[0].startswith("POPPINS_HAVE_")],
                extra_postargs=base + omp + self._isa_flags(ISA["unit_flags"](family, isa), isa))
        ext.define_macros = list(ext.define_macros) + macros
        ext.extra_compile_args = base + omp
        ext.extra_link_args = omp
        ext.extra_objects = list(ext.extra_objects) + objects
        super().build_extension(ext)


def _isa_of(path: str) -> str | None:
    stem = Path(path).stem
    for isa in ("avx512", "avx2", "neondot", "neon"):
        if stem.endswith("_" + isa):
            return isa
    return None


def _target_can(isa: str) -> bool:
    """Cross-compilation hook: False for a SIMD unit the target architecture never runs.
    The dot-product units are AArch64-only (their files compile to nothing on 32-bit ARM),
    yet a 32-bit ARM compiler accepts the dot-product flag: without this the armv7l
    build would declare POPPINS_HAVE_NEONDOT for code that is not there."""
    plat = sysconfig.get_platform()     # follows _PYTHON_HOST_PLATFORM when cross-compiling
    arm32 = plat.startswith("linux-arm") and "aarch64" not in plat
    return not (isa == "neondot" and arm32)


def _numpy_include() -> str:
    """Cross-compilation hook: the NumPy headers to compile against.

    A native build uses the running NumPy's.  scripts/build_wheels.py cross-compiles for ARM
    with the host Python (CC, LDSHARED and the target's sysconfig data: EXT_SUFFIX, platform,
    Python headers) and points ``POPPINS_NUMPY_INCLUDE`` at the target architecture's NumPy
    headers (their _numpyconfig.h holds the target's type sizes).  The SIMD probes need no hook:
    they run with the configured (cross) compiler, and ``sysconfig.get_platform()`` follows
    ``_PYTHON_HOST_PLATFORM`` for the 32-bit NEON flags.
    """
    inc = os.environ.get("POPPINS_NUMPY_INCLUDE", "").strip()
    if inc:
        return inc
    import numpy

    return numpy.get_include()


def _extensions() -> list[Extension]:
    only = {f.strip() for f in os.environ.get("POPPINS_ONLY", "").split(",") if f.strip()}
    exts = []
    for pyx in sorted(EXT_DIR.glob("*/_*.pyx")):
        family = pyx.parent
        if only and family.name not in only:
            continue
        c_files = sorted(str(p.relative_to(ROOT)) for p in family.glob("*.c")
                         if not p.name.startswith("_"))
        plain = [c for c in c_files if _isa_of(c) is None]
        simd = [c for c in c_files if _isa_of(c) is not None]
        ext = Extension(
            name=f"poppins.{pyx.stem}",
            sources=[str(pyx.relative_to(ROOT))] + plain,
            include_dirs=[str(family.relative_to(ROOT)), str(COMMON_INCLUDE.relative_to(ROOT)),
                          _numpy_include()],
            depends=[str(p.relative_to(ROOT)) for p in family.glob("*.h")]
            + [str(p.relative_to(ROOT)) for p in COMMON_INCLUDE.glob("*.h")] + simd
            + [str(ROOT / "poppins" / "_isa.py"), str(ROOT / "poppins" / "threads.py")],
        )
        ext.simd_sources = simd
        exts.append(ext)
    if not exts:
        return []
    from Cython.Build import cythonize

    simd_of = {e.name: e.simd_sources for e in exts}
    out = cythonize(
        exts,
        build_dir="build/cython",
        include_path=[str(COMMON_INCLUDE)],
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False,
                             "cdivision": True, "initializedcheck": False},
        quiet=True,
    )
    for e in out:   # cythonize returns new Extension objects without our attribute
        e.simd_sources = simd_of.get(e.name, [])
    return out


if __name__ == "__main__":
    setup(ext_modules=_extensions(), cmdclass={"build_ext": PoppinsBuildExt})
