"""The package frame: version, console entry, backend reporting, reference fallback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import poppins
from poppins import native
from poppins.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_module(*args, env=None):
    e = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "poppins", *args], env=e, capture_output=True,
                          text=True, timeout=120)


def test_version():
    r = run_module("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"poppins {poppins.__version__}"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "bootstrap" in capsys.readouterr().err


def test_console_script_when_installed():
    exe = shutil.which("poppins")
    if exe is None:
        pytest.skip("the poppins console script is not installed (pip install -e .)")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and poppins.__version__ in r.stdout


def test_backend_info_shape():
    info = poppins.backend_info()
    assert info["version"] == poppins.__version__
    assert set(info["extensions"]) == set(native.FAMILIES)
    for entry in info["extensions"].values():
        assert entry["backend"] in ("compiled", "reference") and entry["reason"]
    assert info["threads"] >= 1


def test_no_ext_forces_references():
    r = run_module("info", env={"POPPINS_NO_EXT": "1"})
    info = json.loads(r.stdout)
    assert info["no_ext"] is True
    assert all(e["backend"] == "reference" and "POPPINS_NO_EXT" in e["reason"]
               for e in info["extensions"].values())


def test_missing_extension_warns_once(monkeypatch):
    monkeypatch.delenv("POPPINS_NO_EXT", raising=False)
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.setattr(native, "_cache", {})
    monkeypatch.setattr(native, "_reason", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.load("no_such_family") is None
        assert native.load("no_such_family_either") is None
    msgs = [str(w.message) for w in caught if "poppins._no_such" in str(w.message)]
    assert len(msgs) == 1 and "reference" in msgs[0]


def test_kernel_override_is_reported():
    info = json.loads(run_module("info", env={"POPPINS_KERNEL": "scalar"}).stdout)
    if info["extensions"]["ternary"]["backend"] != "compiled":
        pytest.skip("the ternary extension is not built")
    assert info["kernel_override"] == "scalar"
    assert info["extensions"]["ternary"]["kernel"] == "scalar"
