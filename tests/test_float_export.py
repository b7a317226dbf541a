"""A ``--float`` model answers through model.poppins exactly as through the training forward
pass (issue 12, item 7): export keeps its weights as f32 (ternarizing them made another model,
which answered ``TheTheThe...``) and the engine runs it through the training forward."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from poppins.api import Model
from poppins.corpus import tokens as T
from poppins.engine.modelfile import load_model_file
from poppins.engine.packing import TernaryTensor
from poppins.samples import build_samples
from poppins.training import train
from poppins.training.export import export_from_out_dir
from poppins.training.generate import greedy
from poppins.training.trainer import load_trained
from poppins.trainxml import read_train_xml
from test_engine import TINY_TRAIN, TRAIN_XML


@pytest.fixture(scope="module", params=["mha", "mla"])
def float_dir(request):
    d = Path(tempfile.mkdtemp(prefix=f"poppins-float-{request.param}-"))
    kw = dict(TINY_TRAIN, quantize=False, attention=request.param, steps=80)
    try:
        with open(os.devnull, "w") as devnull:
            train(TRAIN_XML, d, overrides=kw, log=None, progress_stream=devnull)
        export_from_out_dir(d)
        yield d
    finally:
        shutil.rmtree(d, True)


def test_float_export_keeps_float_weights(float_dir):
    mf = load_model_file(float_dir / "model.poppins", mmap=False)
    assert mf.config["quantize"] is False
    trained = load_trained(float_dir, threads=1)
    for name, _shape, kind in trained.layout:
        t = mf[name]
        assert not isinstance(t, TernaryTensor), name
        assert np.array_equal(np.asarray(t, np.float32),
                              trained.params[name].astype(np.float32)), name


def test_float_engine_greedy_equals_training_forward(float_dir):
    trained = load_trained(float_dir, threads=1)
    model = Model.load(float_dir, threads=1)
    tok = model.tokenizer
    sset = build_samples(read_train_xml(TRAIN_XML), seed=1337)
    prompts = [T.prompt_ids(tok, s.prompt, s.system) for s in sset.train + sset.val]
    assert len(prompts) >= 5
    want = [greedy(trained, [p], max_new=24, batch_size=1)[0] for p in prompts]
    for p, w in zip(prompts, want):
        sess = model.engine.session()
        got, logits = [], sess.forward(p)
        for _ in range(len(w)):
            t = int(np.argmax(logits))
            got.append(t)
            if t in T.STOP_IDS:
                break
            logits = sess.forward([t])
        assert got == w
    # and the API's generation loop gives the same ids
    s = sset.train[0]
    c = model.complete(s.prompt, system=s.system or "", temperature=0, max_tokens=24)
    assert c.tokens == want[0][:len(c.tokens)] and len(c.tokens) == len(want[0])
