"""Golden end-to-end: ``bootstrap`` then the data stage, offline, in a temporary folder.

The expected figures and file hashes live in tests/golden/bootstrap.json.  After a deliberate
change of the example or of the corpus format, regenerate them with
``POPPINS_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py`` and review the diff.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lxml import etree

from poppins.trainxml import schema

GOLDEN = Path(__file__).parent / "golden" / "bootstrap.json"
REPO = Path(__file__).resolve().parent.parent


def poppins(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "poppins", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bootstrap_then_data_stage(tmp_path):
    r = poppins("bootstrap", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "train.xml" in names and "train.xsd" in names and len(names) >= 5
    for xml in tmp_path.glob("*.xml"):
        assert schema().validate(etree.parse(str(xml))), xml
    # the XSD it writes is the one poppins validates with, loadable on its own
    etree.XMLSchema(etree.parse(str(tmp_path / "train.xsd")))

    again = poppins("bootstrap", cwd=tmp_path)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    assert poppins("bootstrap", "--force", cwd=tmp_path).returncode == 0

    r = poppins("train", "--data-only", cwd=tmp_path)          # the defaults: ./train.xml, ./.poppins
    assert r.returncode == 0, r.stderr
    out = tmp_path / ".poppins"
    lines = r.stdout.splitlines()
    assert [l.split()[0] for l in lines if l.split()[0] in ("read", "expand", "corpus", "wrote")] == \
        ["read", "expand", "corpus", "wrote"]
    manifest = json.loads((out / "manifest.json").read_text())
    got = {"samples": manifest["samples"],
           "files": {k: v["sha256"] for k, v in sorted(manifest["files"].items())},
           "default_system": manifest["default_system"]}
    assert manifest["samples"]["originals"] >= 150
    if os.environ.get("POPPINS_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=2) + "\n")
    assert got == json.loads(GOLDEN.read_text())
