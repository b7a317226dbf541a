"""The API additions the server builds on: logprobs and the cancel hook (same tokens)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from poppins.engine.sampling import token_logprobs
from test_server import FIRST, SYSTEM, model, trained  # noqa: F401  (fixtures)


def _msgs(p):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}]


def test_token_logprobs_is_a_log_softmax():
    rng = np.random.default_rng(0)
    lg = rng.normal(size=50).astype(np.float32)
    lg[7] = lg[9] = 5.0                       # a tie: the smaller id first
    lp, top = token_logprobs(lg, 3, 4)
    ref = lg.astype(np.float64) - np.log(np.sum(np.exp(lg.astype(np.float64))))
    assert math.isclose(lp, ref[3], rel_tol=1e-12)
    assert [i for i, _ in top][:2] == [7, 9] and len(top) == 4
    assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))
    assert token_logprobs(lg, 3, 0)[1] == []
    assert token_logprobs(lg, 3, 500)[1].__len__() == 50


@pytest.mark.parametrize("temperature", [0, 0.9])
def test_logprobs_and_cancel_give_the_same_tokens(model, temperature):
    kw = dict(temperature=temperature, seed=5, max_tokens=40)
    plain = model.chat(_msgs(FIRST), **kw)
    with_lp = model.chat(_msgs(FIRST), logprobs=3, **kw)
    assert with_lp.tokens == plain.tokens and with_lp.text == plain.text
    assert [e["id"] for e in with_lp.logprobs] == plain.tokens
    assert all(e["logprob"] <= 0 and len(e["top"]) == 3 for e in with_lp.logprobs)
    if temperature == 0:      # greedy: the chosen token is the likeliest
        assert all(e["top"][0][0] == e["id"] for e in with_lp.logprobs)
    never = model.chat(_msgs(FIRST), cancel=lambda: False, **kw)   # compiled loop in steps
    assert never.tokens == plain.tokens and never.stop_reason == plain.stop_reason
    s = model.chat_stream(_msgs(FIRST), logprobs=0, **kw)
    seen = []
    for _piece in s:
        seen.append(len(s.logprobs))
    assert s.completion.tokens == plain.tokens
    assert seen == sorted(seen) and s.logprobs is s.completion.logprobs


def test_cancel_stops_the_answer(model):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    kw = dict(temperature=3.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=200)
    for seed in range(20):                # a seed whose answer rambles on
        full = model.chat(_msgs("tell me everything"), seed=seed, **kw)
        if len(full.tokens) > 40:
            break
    kw["seed"] = seed
    c = model.chat(_msgs("tell me everything"), cancel=cancel, **kw)
    s = model.chat_stream(_msgs("tell me everything"), cancel=lambda: True, **kw)
    assert len(list(s)) <= 1              # at most the first token's text
    assert s.completion.stop_reason == "cancelled" and len(s.completion.tokens) == 1
    assert len(full.tokens) > 40
    assert c.stop_reason == "cancelled" and len(c.tokens) < len(full.tokens)
    assert c.tokens == full.tokens[:len(c.tokens)]
