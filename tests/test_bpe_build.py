"""The BPE extension builds and works without OpenMP (POPPINS_NO_OPENMP=1).

Slow (a C build into a temporary directory, ~15 s): ``pytest -m slow tests/test_bpe_build.py``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CHECK = r"""
import json
from poppins import _bpe, native
from poppins.tokenizer import Tokenizer
t = Tokenizer.train(["hello world, hello there"] * 4, vocab_size=125 + 256 + 10, min_frequency=0)
texts = ["hello world", "there there", "x"] * 20
one = [a.tolist() for a in t.encode_batch(texts, threads=1)]
two = [a.tolist() for a in t.encode_batch(texts, threads=2)]
print(json.dumps({"build": _bpe.build_info(), "file": _bpe.__file__, "same": one == two,
                  "backend": native.backend_info()["extensions"]["bpe"],
                  "merges": t.merges}))
"""


@pytest.mark.slow
def test_build_without_openmp(tmp_path):
    pytest.importorskip("Cython")
    env = dict(os.environ, POPPINS_NO_OPENMP="1", POPPINS_ONLY="bpe")
    res = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "openmp=off" in res.stdout
    so = list((tmp_path / "lib" / "poppins").glob("_bpe*"))
    assert len(so) == 1
    pkg = tmp_path / "pkg"
    shutil.copytree(REPO / "poppins", pkg / "poppins",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    shutil.copy(so[0], pkg / "poppins" / so[0].name)
    env = dict(os.environ, PYTHONPATH=str(pkg), POPPINS_NO_EXT="")
    res = subprocess.run([sys.executable, "-c", CHECK], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout)
    assert got["file"].startswith(str(pkg))
    assert got["build"]["openmp"] is False and got["backend"]["openmp"] is False
    assert got["backend"]["backend"] == "compiled" and got["same"]
    from poppins.tokenizer import Tokenizer

    here = Tokenizer.train(["hello world, hello there"] * 4, vocab_size=125 + 256 + 10,
                           min_frequency=0)
    assert [list(m) for m in here.merges] == got["merges"]
