"""One rule for tests whose peer (a client library, a browser, llama.cpp, MPI) is optional.

Without the peer a test skips, so a developer's machine runs the rest; CI installs every peer
and sets ``POPPINS_REQUIRE_<KIND>=1`` (see .ci/run), which turns that skip into a failure, so
a peer that silently went missing cannot make a green run that tested nothing."""
from __future__ import annotations

import importlib
import os

import pytest


def required(kind: str) -> bool:
    return os.environ.get(f"POPPINS_REQUIRE_{kind.upper()}") == "1"


def missing(kind: str, msg: str):
    """Skip (or, when CI requires this kind of peer, fail) with ``msg``."""
    if required(kind):
        pytest.fail(f"{msg} (POPPINS_REQUIRE_{kind.upper()}=1)")
    pytest.skip(msg, allow_module_level=True)


def need_module(kind: str, name: str):
    """``pytest.importorskip`` under the rule above."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        missing(kind, f"{name} is not installed ({e})")
