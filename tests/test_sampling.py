"""Sampling: every option on its own, llama.cpp's order, seeds, greedy."""
from __future__ import annotations

import math

import numpy as np
import pytest

from poppins.engine.sampling import Sampler, SamplingParams, apply_repeat_penalty, candidates
from poppins.errors import PoppinsError

OFF = dict(top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)


def P(**kw) -> SamplingParams:
    return SamplingParams.from_kwargs(**kw)


def logits(seed=0, V=50):
    return np.random.default_rng(seed).standard_normal(V).astype(np.float32) * 3


def test_greedy_is_argmax_and_ignores_seed():
    lg = logits()
    for seed in (0, 1, 2):
        assert Sampler(P(temperature=0, seed=seed)).sample(lg) == int(np.argmax(lg))


def test_top_k_1_equals_greedy():
    for s in range(20):
        lg = logits(s)
        want = Sampler(P(temperature=0)).sample(lg)
        assert Sampler(P(temperature=1.5, top_k=1, seed=s)).sample(lg) == want


def test_same_seed_same_tokens_other_seed_differs():
    lg = logits(3)
    p = dict(temperature=1.0, **OFF)
    a = [Sampler(P(seed=7, **p)).sample(lg) for _ in range(3)]
    assert len(set(a)) == 1
    s1, s2 = Sampler(P(seed=7, **p)), Sampler(P(seed=7, **p))
    seq1 = [s1.sample(lg) for _ in range(40)]
    assert seq1 == [s2.sample(lg) for _ in range(40)]
    s3 = Sampler(P(seed=8, **p))
    assert seq1 != [s3.sample(lg) for _ in range(40)]


def test_random_seed_is_reported_and_reproducible():
    s = Sampler(P(seed=-1, temperature=1.0, **OFF))
    assert s.seed >= 0
    lg = logits(4)
    seq = [s.sample(lg) for _ in range(20)]
    again = Sampler(P(seed=s.seed, temperature=1.0, **OFF))
    assert seq == [again.sample(lg) for _ in range(20)]


def test_temperature_distribution():
    lg = np.array([2.0, 1.0, 0.0, -1.0], np.float32)
    for temp in (0.5, 1.0, 2.0):
        s = Sampler(P(seed=1, temperature=temp, **OFF))
        counts = np.bincount([s.sample(lg) for _ in range(20000)], minlength=4) / 20000
        p = np.exp(lg / temp)
        p /= p.sum()
        assert np.max(np.abs(counts - p)) < 0.015, (temp, counts, p)


def test_top_k_keeps_the_k_largest():
    lg = logits(5)
    s = Sampler(P(seed=2, temperature=5.0, **dict(OFF, top_k=3)))
    seen = {s.sample(lg) for _ in range(500)}
    assert seen == set(np.argsort(-lg)[:3].tolist())


def test_top_k_ties_smaller_id_first():
    lg = np.zeros(10, np.float32)
    assert candidates(lg.astype(np.float64), P(**dict(OFF, top_k=3))).tolist() == [0, 1, 2]


def test_top_p():
    lg = np.log(np.array([0.5, 0.3, 0.15, 0.05])).astype(np.float64)
    assert candidates(lg, P(**dict(OFF, top_p=0.5))).tolist() == [0]
    assert candidates(lg, P(**dict(OFF, top_p=0.79))).tolist() == [0, 1]
    assert candidates(lg, P(**dict(OFF, top_p=0.81))).tolist() == [0, 1, 2]
    assert candidates(lg, P(**dict(OFF, top_p=1.0))).tolist() == [0, 1, 2, 3]
    s = Sampler(P(seed=3, temperature=1.0, **dict(OFF, top_p=0.81)))
    assert {s.sample(lg) for _ in range(500)} == {0, 1, 2}


def test_min_p():
    lg = np.log(np.array([0.5, 0.3, 0.15, 0.05])).astype(np.float64)
    assert candidates(lg, P(**dict(OFF, min_p=0.5))).tolist() == [0, 1]
    assert candidates(lg, P(**dict(OFF, min_p=0.2))).tolist() == [0, 1, 2]
    assert candidates(lg, P(**dict(OFF, min_p=0.99))).tolist() == [0]


def test_order_top_k_then_top_p_then_min_p():
    # top-k 3 renormalizes before top-p: [0.5, 0.3, 0.15] -> 0.526, 0.316, 0.158
    lg = np.log(np.array([0.5, 0.3, 0.15, 0.05])).astype(np.float64)
    assert candidates(lg, P(**dict(OFF, top_p=0.82))).tolist() == [0, 1, 2]
    assert candidates(lg, P(**dict(OFF, top_k=3, top_p=0.82))).tolist() == [0, 1]
    assert candidates(lg, P(**dict(OFF, top_k=3, top_p=0.85))).tolist() == [0, 1, 2]
    assert candidates(lg, P(**dict(OFF, top_k=3, top_p=0.9, min_p=0.4))).tolist() == [0, 1]


def test_temperature_applies_after_the_filters():
    # min-p on the untempered logits keeps {0, 1}; a high temperature cannot revive 2, 3
    lg = np.log(np.array([0.5, 0.3, 0.15, 0.05])).astype(np.float32)
    s = Sampler(P(seed=4, temperature=50.0, **dict(OFF, min_p=0.5)))
    assert {s.sample(lg) for _ in range(300)} == {0, 1}


def test_repeat_penalty():
    lg = np.array([2.0, -1.0, 1.0, 0.5], np.float64)
    x = lg.copy()
    apply_repeat_penalty(x, [0, 1, 1], 2.0)
    assert x.tolist() == [1.0, -2.0, 1.0, 0.5]
    # greedy with the penalty: token 0 (2.0 -> 0.8) loses to token 2 (1.0)
    s = Sampler(P(temperature=0, repeat_penalty=2.5))
    assert s.sample(lg.astype(np.float32), [0]) == 2
    assert Sampler(P(temperature=0)).sample(lg.astype(np.float32), [0]) == 0
    # only the last repeat_last_n tokens count
    s = Sampler(P(temperature=0, repeat_penalty=2.5, repeat_last_n=1))
    assert s.sample(lg.astype(np.float32), [0, 3]) == 0


def test_bad_options():
    for kw in (dict(temperature=-1), dict(top_p=1.5), dict(min_p=-0.1),
               dict(repeat_penalty=0), dict(top_k=1.5), dict(temperature=math.nan)):
        with pytest.raises(PoppinsError):
            P(**kw)
    with pytest.raises(PoppinsError, match="unknown sampling option"):
        P(tmperature=1)
    assert P(temp=0.3).temperature == 0.3


# ----------------------------------------------------------------------- compiled sampler
def _compiled():
    from poppins import native

    mod = native.load("engine")
    if mod is None or not hasattr(mod, "sample"):
        pytest.skip("poppins._engine is not built")
    return mod


@pytest.mark.parametrize("kw", [
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
    dict(temperature=1.0, **OFF),
    dict(temperature=1.7, top_k=0, top_p=0.9, min_p=0.0),
    dict(temperature=0.5, top_k=5, top_p=1.0, min_p=0.2, repeat_penalty=1.3),
    dict(temperature=0.0, repeat_penalty=1.5, repeat_last_n=3),
    dict(temperature=2.0, top_k=1),
])
def test_compiled_sampler_equals_reference(kw):
    from poppins.engine.sampling import sample_reference

    mod = _compiled()
    rng = np.random.default_rng(9)
    p = P(**kw)
    for trial in range(60):
        V = int(rng.choice([1, 7, 255, 257, 1000]))
        lg = (rng.standard_normal(V) * 4).astype(np.float32)
        if trial % 5 == 0:
            lg = np.round(lg)  # many ties
        recent = rng.integers(0, V, int(rng.integers(0, 20))).astype(np.int32)
        state = int(rng.integers(0, 2 ** 63))
        a = mod.sample(lg, p, state, recent)
        b = sample_reference(lg, p, state, recent)
        assert (int(a[0]), int(a[1])) == (int(b[0]), int(b[1])), (kw, trial, V)


def test_compiled_step_sample_equals_python_loop(tmp_path):
    """Session.next_token: fused compiled step + C sampler == forward() + reference sampler."""
    from test_engine import export, random_model
    from poppins.engine.runtime import Engine

    _compiled()
    export(random_model("gqa", seed=4), tmp_path)
    eng = Engine.load(tmp_path, threads=1)
    toks = {}
    for compiled in (True, False):
        s = eng.session(compiled_step=compiled)
        smp = Sampler(P(seed=11, temperature=1.1, top_k=20, top_p=0.9, min_p=0.01,
                        repeat_penalty=1.2))
        if not compiled:  # force the reference sampler too
            smp.sample = lambda lg, rec, smp=smp: _ref_sample(smp, lg, rec)
        hist = np.zeros(48, np.int32)
        hist[:5] = [130, 131, 132, 133, 134]
        n = 5
        t = smp.sample(s.forward(hist[:5]), hist[:5])
        out = [t]
        while n < 40:
            hist[n] = t
            n += 1
            t = s.next_token(t, smp, hist, n)
            out.append(t)
        toks[compiled] = out
    assert toks[True] == toks[False]


def _ref_sample(smp, lg, rec):
    from poppins.engine.sampling import sample_reference

    tok, smp.state = sample_reference(np.asarray(lg, np.float32), smp.params, smp.state,
                                      np.asarray(rec, np.int32))
    return tok
