"""The one table of CPU features, their compiler flags and what each SIMD unit needs.

Read by ``setup.py`` (with runpy: no package import at build time) and by the tests.
ggml's rule: a binary never executes an instruction the CPU lacks.  So a SIMD unit
``ext/<family>/*_<isa>.c`` is compiled with EXACTLY the flags of its feature list here, and
its dispatcher chooses it only when ``pp_cpu_features()`` (ext/common/poppins_cpu.h) reports
every feature of the same list: setup.py passes the list to the C code as the bitmask macro
``POPPINS_NEED_<ISA>`` of that family, and the dispatcher checks that mask.  The compiled
modules report the mask back (``build_info()["needs"]``) and tests/test_build_flags.py checks
it against this table and the flags against the compiler's own feature macros.

Bit i of a mask is FEATURES[i]; ext/common/poppins_cpu.h numbers its PP_CPU_* bits the same
way (and the test checks the names the C code reports).
"""

#: feature name -> the compiler flags that allow the compiler to emit its instructions
FEATURES = {
    "avx2": ["-mavx2"],
    "fma": ["-mfma"],
    "f16c": ["-mf16c"],
    "avx512f": ["-mavx512f"],
    "avx512bw": ["-mavx512bw"],
    "avx512vl": ["-mavx512vl"],
    "avx512dq": ["-mavx512dq"],
    "avx512vnni": ["-mavx512vnni"],
    "neon": [],                              # mandatory on AArch64 (32-bit ARM: -mfpu=neon)
    "dotprod": ["-march=armv8.2-a+dotprod"],
}

#: ISA families of the x86 / ARM units (the suffix of the file name)
ISAS = ("avx2", "avx512", "neon", "neondot")

#: (family, isa) -> the features that unit is compiled for and its dispatcher checks.
#: Every list is closed under what its flags imply (e.g. -mavx512bw implies avx512f, avx2).
UNITS = {
    ("ops", "avx2"): ("avx2", "fma"),
    ("ops", "avx512"): ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"),
    ("ternary", "avx2"): ("avx2",),
    ("ternary", "avx512"): ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512vnni"),
    ("ternary", "neon"): ("neon",),
    ("ternary", "neondot"): ("neon", "dotprod"),
    ("engine", "avx2"): ("avx2", "fma", "f16c"),
}


def mask(features) -> int:
    """The bitmask of a feature list (bit i = FEATURES' i-th name)."""
    names = list(FEATURES)
    m = 0
    for f in features:
        m |= 1 << names.index(f)
    return m


def names(m: int) -> list:
    """The feature names of a bitmask, in table order."""
    return [f for i, f in enumerate(FEATURES) if m >> i & 1]


def unit_flags(family: str, isa: str) -> list:
    """The compiler flags of one SIMD unit: the flags of its features, in table order."""
    need = UNITS[(family, isa)]
    out = []
    for f in FEATURES:
        if f in need:
            out += FEATURES[f]
    return out
