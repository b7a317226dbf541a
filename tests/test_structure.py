"""The package's structure stays as designed (issue 11):

- the engine (poppins.engine) imports nothing from poppins.training or poppins.model: it only
  reads model files; export lives on the writing side (poppins.training.export);
- no module outside the attention units branches on the attention type;
- no caller outside poppins/api.py uses a private method of poppins.Model.
"""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "poppins"
FORBIDDEN = ("poppins.training", "poppins.model")


def _imports(path: Path):
    """(line, absolute module) of every import in ``path``, function-level ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield node.lineno, mod
            for a in node.names:        # from .. import model
                yield node.lineno, f"{mod}.{a.name}"


def test_import_scan_resolves_relative_imports():
    # the scanner itself: a relative import of the training model is seen as one
    found = dict((m, ln) for ln, m in _imports(PKG / "training" / "trainer.py"))
    assert "poppins.model" in found and "poppins.training.export" in found


def test_engine_source_imports_nothing_from_training_or_model():
    bad = []
    for path in sorted((PKG / "engine").glob("*.py")):
        for line, mod in _imports(path):
            if mod in FORBIDDEN or mod.startswith(tuple(f + "." for f in FORBIDDEN)):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {mod}")
    assert not bad, "\n".join(bad)


def test_loading_and_running_the_engine_loads_no_training_module(tmp_path):
    # every engine module imported, an Engine built from a model file and run: the training
    # side never enters sys.modules (the model file is written by a separate process)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    write = (
        "import sys\n"
        "from poppins.model import Model, ModelConfig\n"
        "from poppins.training.export import export_model\n"
        "for att in ('mha', 'mla'):\n"
        "    cfg = ModelConfig(vocab_size=400, dim=32, layers=1, heads=2, attention=att,\n"
        "                      context_length=16)\n"
        f"    export_model(Model(cfg, seed=1, threads=1), r'{tmp_path}/' + att + '.poppins',\n"
        "                 tokenizer_json='{}', sources={}, default_system=None)\n")
    subprocess.run([sys.executable, "-c", write], check=True, env=env, cwd=tmp_path)
    run = (
        "import pkgutil, importlib, sys\n"
        "import poppins.engine as E\n"
        "for m in pkgutil.iter_modules(E.__path__):\n"
        "    importlib.import_module('poppins.engine.' + m.name)\n"
        "for att in ('mha', 'mla'):\n"
        f"    eng = E.Engine.load(r'{tmp_path}/' + att + '.poppins', threads=1)\n"
        "    s = eng.session()\n"
        "    s.forward([1, 2, 3]); s.forward([4])\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('poppins.training', "
        "'poppins.model')))\n"
        "print(' '.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", run], check=True, env=env, cwd=tmp_path,
                         capture_output=True, text=True).stdout
    assert out.strip() == "", f"the engine loaded {out.strip()}"


_BRANCH = re.compile(r"\battention\s*(==|!=)")
UNITS = {PKG / "engine" / "attention.py", PKG / "model" / "attention.py"}


def test_no_attention_branch_outside_the_attention_units():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        if path in UNITS:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if _BRANCH.search(code):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)
def test_no_private_model_method_outside_the_api():
    bad = []
    private = re.compile(r"\b(model|m|self\.server\.model)\._(run|split|stop)\w*\(")
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "api.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if private.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_conversation_ids_are_the_training_stream(tmp_path):
    """The token layout has one definition: a conversation rebuilt with the helpers the API
    uses (sample_head_ids, turn_ids) is the data stage's training stream."""
    import numpy as np

    from poppins.corpus import tokens as T
    from poppins.datastage import prepare_data
    from poppins.special_tokens import SPECIAL_IDS as S
    from poppins.tokenizer import Tokenizer

    prepare_data(ROOT / "tests" / "data" / "conversation" / "train.xml", tmp_path / "out",
                 log=None)
    tok = Tokenizer.from_file(tmp_path / "out")
    checked = 0
    meta = json.loads((tmp_path / "out" / "manifest.json").read_text())["samples"]
    own = {"train": meta["train"], "val": meta["val"]}
    for split in ("train", "val"):
        ids, index = T.read_bins(tmp_path / "out", split)
        for k, (off, count, bound) in enumerate(index.tolist()):
            s = np.asarray(ids[off // 4: off // 4 + count]).tolist()
            if S["<thought>"] in s:      # an answer with a thought is replayed from its ids
                continue

            def inner(a, b, start):
                i = s.index(a, start)
                j = s.index(b, i)
                return tok.decode(s[i + 1:j]), j + 1

            system, pos = inner(S["<system>"], S["</system>"], 0) if S["<system>"] in s \
                else (None, 1)
            rebuilt, first, ends = T.sample_head_ids(tok, system), None, []
            while s[pos] == S["<prompt>"]:
                user, pos = inner(S["<text>"], S["</text>"], pos)
                first = user if first is None else first
                pos = s.index(S["</prompt>"], pos) + 1
                ends.append(pos)
                answer, pos = inner(S["<text>"], S["</text>"], pos)
                pos = s.index(S["</ai>"], pos) + 1
                rebuilt += T.turn_ids(tok, "user", user) + T.turn_ids(tok, "assistant", answer)
            assert rebuilt + [S["</sample>"]] == s
            # the file's own samples learn from their first turn; a replayed conversation
            # (augmentation: earlier turns as a client sends them back) from a later one
            if k < own[split]:
                assert T.prompt_ids(tok, first, system) == s[:bound]
            else:
                assert bound in ends
            checked += 1
    assert checked >= 1
