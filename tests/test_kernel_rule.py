"""One POPPINS_KERNEL rule (poppins/native.py): every family, the same errors.

An unknown name, or a path this machine cannot run, is a PoppinsError with the same message
from every loader; a family without a path of the requested name keeps its best one;
backend_info() reports the request and the error instead of raising.
"""
from __future__ import annotations

import pytest

from poppins import native
from poppins.engine import kernels as TK
from poppins.errors import PoppinsError

DISPATCHING = ("ternary", "ops", "engine")


@pytest.fixture
def fresh(monkeypatch):
    """Each test starts from freshly applied paths and leaves the best ones behind."""
    if any(native.load(f, check_kernel=False) is None for f in DISPATCHING):
        pytest.skip("the kernel extensions are not built")
    native.reset()
    yield monkeypatch
    monkeypatch.delenv("POPPINS_KERNEL", raising=False)
    native.reset()
    for f in DISPATCHING:
        native.load(f)


def _error(call):
    with pytest.raises(PoppinsError) as e:
        call()
    return str(e.value)


def test_unknown_name_is_the_same_error_everywhere(fresh):
    fresh.setenv("POPPINS_KERNEL", "sse9")
    msgs = {_error(lambda f=f: native.load(f)) for f in DISPATCHING}
    msgs.add(_error(TK.resolve_kernel))
    assert len(msgs) == 1 and "POPPINS_KERNEL='sse9': unknown kernel path" in msgs.pop()
    info = native.backend_info()   # reports, never raises
    assert info["kernel_override"] == "sse9"
    assert all("unknown kernel path" in info["extensions"][f]["kernel_error"] for f in DISPATCHING)


def test_unavailable_path_is_an_error_for_every_family(fresh):
    tern = native.load("ternary")
    missing = [k for k in native.KERNEL_PATHS if k not in tern.available()]
    if not missing:
        pytest.skip("this machine runs every path")
    fresh.setenv("POPPINS_KERNEL", missing[0])
    for f in DISPATCHING:
        assert "is not available on this machine" in _error(lambda f=f: native.load(f))
    assert "is not available on this machine" in _error(TK.resolve_kernel)
    assert all("not available" in native.backend_info()["extensions"][f]["kernel_error"]
               for f in DISPATCHING)


def test_a_path_applies_to_every_family_that_has_it(fresh):
    fresh.setenv("POPPINS_KERNEL", "scalar")
    info = native.backend_info()
    assert [info["extensions"][f]["kernel"] for f in DISPATCHING] == ["scalar"] * 3
    assert TK.active_kernel() == "scalar"
    tern = native.load("ternary")
    if "avx512" in tern.available():
        # the engine's dot products have no avx512 path: they keep their best
        fresh.setenv("POPPINS_KERNEL", "avx512")
        info = native.backend_info()
        assert info["extensions"]["ternary"]["kernel"] == "avx512"
        assert info["extensions"]["engine"]["kernel"] == info["extensions"]["engine"]["available"][-1]
        assert "kernel_error" not in info["extensions"]["engine"]
    fresh.setenv("POPPINS_KERNEL", "auto")
    info = native.backend_info()
    assert info["extensions"]["ternary"]["kernel"] == tern.best_kernel()
