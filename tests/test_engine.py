"""The generation engine against the training forward pass: logits, greedy tokens, caches,
heads, the model file round trip and the user-facing errors."""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from poppins.engine import ops, ops_ref
from poppins.training.export import export_model, ternarize
from poppins.engine.runtime import Engine
from poppins.errors import PoppinsError
from poppins.model import Model, ModelConfig

DATA = Path(__file__).parent / "data"
TRAIN_XML = DATA / "current" / "train.xml"
#: a tiny model that learns the example by heart in ~10 s on one thread
TINY_TRAIN = dict(dim=64, layers=2, heads=4, steps=120, batch_size=8, lr=1.5e-2, warmup_steps=20,
                  val_interval=1000, checkpoint_interval=1000, threads=1, augment=False)

CONFIGS = {
    "mha": dict(),
    "gqa": dict(kv_heads=2),
    "mla": dict(attention="mla"),
    "mla-q": dict(attention="mla", q_latent_dim=24, rope_dim=6),
}


@functools.lru_cache(maxsize=None)
def trained_dir() -> Path:
    """Train the tiny model once per test process; export it (int8 head) to model.poppins."""
    from poppins.training.export import export_from_out_dir
    from poppins.training import train

    d = Path(tempfile.mkdtemp(prefix="poppins-engine-test-"))
    atexit.register(shutil.rmtree, d, True)
    with open(os.devnull, "w") as devnull:
        train(TRAIN_XML, d, overrides=TINY_TRAIN, log=None, progress_stream=devnull)
    export_from_out_dir(d)
    return d


def random_model(kind: str, seed: int = 3, **kw) -> Model:
    cfg = ModelConfig(vocab_size=300, dim=64, layers=2, heads=4, context_length=48,
                      **dict(CONFIGS[kind], **kw))
    m = Model(cfg, seed=seed, threads=1)
    # larger embeddings than the 0.02 init: logits of a useful size, activations not tiny
    m.params["tok_emb"][...] *= 25
    return m


def export(m: Model, tmp_path, head_dtype="f32") -> Path:
    return export_model(m, tmp_path / "model.poppins", tokenizer_json="{}", sources={},
                        default_system=None, head_dtype=head_dtype)


def rel_err(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("use_reference", [False, True], ids=["compiled", "reference"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_logits_match_training_forward(kind, use_reference, tmp_path):
    m = random_model(kind)
    export(m, tmp_path)
    eng = Engine.load(tmp_path, threads=1, use_reference=use_reference)
    toks = np.random.default_rng(0).integers(0, 300, 33)
    s = eng.session()
    pre = s.forward(toks[:17], all_logits=True)          # prefill (matrix-matrix)
    dec = np.array([s.forward([t]) for t in toks[17:]])  # decode (matrix-vector, cache)
    got = np.concatenate([pre, dec])
    assert s.pos == 33
    for T in range(1, 34):
        want = m.last_logits(toks[None, :T])[0]
        assert rel_err(got[T - 1], want) < 1e-3, (kind, T)


@pytest.mark.parametrize("kind", ["mha", "gqa", "mla"])
def test_threads_and_chunking_agree(kind, tmp_path):
    """Prefill in one chunk or several, 1 or 2 threads: the same logits."""
    m = random_model(kind, seed=5)
    export(m, tmp_path)
    toks = np.random.default_rng(1).integers(0, 300, 20)
    outs = []
    for th in (1, 2):
        eng = Engine.load(tmp_path, threads=th)
        s = eng.session()
        outs.append(s.forward(toks, all_logits=True)[-1])
        s2 = eng.session()
        s2.forward(toks[:7])
        s2.forward(toks[7:13])
        outs.append(s2.forward(toks[13:]))
    for o in outs[1:]:
        assert rel_err(o, outs[0]) < 1e-5


def _greedy_engine(eng, prompt, n):
    s = eng.session()
    lg = s.forward(prompt)
    out = []
    for _ in range(n):
        t = int(np.argmax(lg))
        out.append(t)
        if s.pos >= s.context:
            break
        lg = s.forward([t])
    return out


def _greedy_nocache(eng, prompt, n):
    """Every step recomputes the whole sequence in a fresh session (no cache reuse)."""
    seq = list(prompt)
    out = []
    for _ in range(n):
        t = int(np.argmax(eng.session().forward(seq)))
        out.append(t)
        seq.append(t)
    return out


@pytest.mark.parametrize("kind", ["mla", "mla-q", "mha"])
def test_cache_gives_same_tokens_as_no_cache(kind, tmp_path):
    m = random_model(kind, seed=11)
    export(m, tmp_path)
    eng = Engine.load(tmp_path, threads=1)
    prompt = np.random.default_rng(2).integers(0, 300, 9).tolist()
    a = _greedy_engine(eng, prompt, 20)
    assert a == _greedy_nocache(eng, prompt, 20)
    # and the training forward, step by step, agrees
    seq = list(prompt)
    for t in a:
        assert int(np.argmax(m.last_logits(np.array([seq]))[0])) == t
        seq.append(t)


def test_mla_cache_is_the_latent(tmp_path):
    m = random_model("mla")
    export(m, tmp_path)
    eng = Engine.load(tmp_path, threads=1)
    s = eng.session()
    cfg = m.cfg
    assert s.ckv[0].shape == (cfg.context_length, cfg.kv_latent)
    assert s.kr[0].shape == (cfg.context_length, cfg.rope_width)
    mha = Engine.load(export(random_model("mha"), tmp_path / "b"), threads=1).session()
    assert s.cache_bytes() < mha.cache_bytes() / 2


def test_export_ternary_codes_are_the_training_weights(tmp_path):
    m = random_model("gqa")
    m.quantize_weights()
    for n in m.bitlinear:
        t = ternarize(m.params[n])
        deq = t.values().astype(np.float32) * np.float32(t.scale)
        np.testing.assert_array_equal(deq, m.wq[n])


@pytest.mark.parametrize("head", ["f16", "int8"])
def test_head_dtypes_close(head, tmp_path):
    m = random_model("mha")
    export(m, tmp_path, head_dtype=head)
    eng = Engine.load(tmp_path, threads=1)
    assert eng.head_dtype == head
    toks = np.random.default_rng(3).integers(0, 300, 12)
    got = eng.session().forward(toks)
    want = m.last_logits(toks[None])[0]
    assert rel_err(got, want) < (2e-2 if head == "int8" else 2e-3)


def test_trained_greedy_answers_all_heads(tmp_path):
    """The tiny trained model: training's greedy answers == the engine's, for f32, f16 and
    int8 heads, on every distinct training prompt."""
    from poppins.corpus import tokens as T
    from poppins.training.generate import expected_answers, greedy
    from poppins.training.trainer import load_trained

    d = trained_dir()
    model = load_trained(d, threads=1)
    ids, index = T.read_bins(d, "train")
    pairs, seen = [], set()
    for p, a in expected_answers(ids, index):
        if tuple(p) not in seen:
            seen.add(tuple(p))
            pairs.append((p, a))
    train_greedy = greedy(model, [p for p, _ in pairs], max_new=64)
    tok = (d / "tokenizer.json").read_text()
    for head in ("f32", "f16", "int8"):
        path = export_model(model, tmp_path / f"{head}.poppins", tokenizer_json=tok, sources={},
                            default_system=None, head_dtype=head)
        eng = Engine.load(path, threads=1)
        for (p, a), g in zip(pairs, train_greedy):
            got = _greedy_engine(eng, p, len(g))
            assert got == g, (head, p)
    assert sum(g == a for (p, a), g in zip(pairs, train_greedy)) == len(pairs)


def test_context_and_errors(tmp_path):
    m = random_model("mha")
    export(m, tmp_path)
    eng = Engine.load(tmp_path, threads=1)
    s = eng.session(context=10)
    s.forward(list(range(130, 140)))
    with pytest.raises(PoppinsError, match="context"):
        s.forward([5])
    with pytest.raises(PoppinsError, match="longer than the model"):
        eng.session(context=49)
    with pytest.raises(PoppinsError, match="out of range"):
        eng.session().forward([300])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PoppinsError, match="no model.poppins"):
        Engine.load(empty)
    with pytest.raises(PoppinsError, match="no such"):
        Engine.load(tmp_path / "missing.poppins")


def test_weights_are_read_only_memmaps(tmp_path):
    m = random_model("mha")
    export(m, tmp_path)
    eng = Engine.load(tmp_path, threads=1)
    assert isinstance(eng.emb.base, np.memmap) or not eng.emb.flags.writeable
    assert not eng.final_norm.flags.writeable


# ----------------------------------------------------------------------- ops vs reference
def _ops_pair(name):
    comp = ops.impl(name)
    if comp is getattr(ops_ref, name):
        pytest.skip("poppins._engine is not built")
    return comp, getattr(ops_ref, name)


def _readonly(a):
    a = np.array(a)
    a.setflags(write=False)
    return a


@pytest.mark.parametrize("n,d", [(1, 1), (1, 7), (3, 17), (2, 255), (5, 257)])
@pytest.mark.parametrize("threads", [1, 2])
def test_ops_norm_quant_exact(n, d, threads):
    rng = np.random.default_rng(n * 1000 + d)
    x = _readonly(rng.standard_normal((n, d)).astype(np.float32) * 3)
    g = _readonly(rng.standard_normal(d).astype(np.float32))
    for name in ("rmsnorm_quant", "quant_rows", "relu2_quant"):
        comp, ref = _ops_pair(name)
        outs = []
        for f in (comp, ref):
            q = np.empty((n, d), np.int8)
            s = np.empty(n, np.float32)
            if name == "rmsnorm_quant":
                f(x, g, 1e-5, q, s, threads)
            else:
                f(x, q, s, threads)
            outs.append((q, s))
        np.testing.assert_array_equal(outs[0][0], outs[1][0], err_msg=name)
        np.testing.assert_array_equal(outs[0][1], outs[1][1], err_msg=name)
    comp, ref = _ops_pair("rmsnorm")
    a, b = np.empty((n, d), np.float32), np.empty((n, d), np.float32)
    comp(x, g, 1e-5, a, threads)
    ref(x, g, 1e-5, b, threads)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_ops_zero_rows():
    for name in ("quant_rows", "relu2_quant"):
        comp, ref = _ops_pair(name)
        x = np.zeros((2, 9), np.float32)
        x[1] = -1  # relu2 of it is zero
        for f in (comp, ref):
            q = np.ones((2, 9), np.int8)
            s = np.zeros(2, np.float32)
            f(x, q, s, 1)
            zero_scale = np.float32(127) / np.float32(1e-5)  # max|y| clamped at 1e-5
            if name == "relu2_quant":
                assert not q.any() and (s == zero_scale).all()
            else:
                assert not q[0].any() and s[0] == zero_scale


@pytest.mark.parametrize("n,m", [(1, 1), (1, 255), (4, 257), (7, 17)])
def test_ops_dequant_embed_head(n, m):
    rng = np.random.default_rng(m)
    acc = _readonly(rng.integers(-5000, 5000, (n, m)).astype(np.int32))
    xs = _readonly(rng.uniform(1, 50, n).astype(np.float32))
    comp, ref = _ops_pair("dequant")
    for accumulate in (False, True):
        a = np.ones((n, m), np.float32)
        b = np.ones((n, m), np.float32)
        comp(acc, 0.37, xs, a, accumulate, 2)
        ref(acc, 0.37, xs, b, accumulate, 1)
        np.testing.assert_allclose(a, b, rtol=1e-6)
    V, d = m + 3, 17
    h = _readonly(rng.standard_normal((n, d)).astype(np.float32))
    rs = _readonly(rng.uniform(0.01, 0.1, V).astype(np.float32))
    toks = rng.integers(0, V, n).astype(np.int32)
    for table in (rng.standard_normal((V, d)).astype(np.float32),
                  rng.standard_normal((V, d)).astype(np.float16),
                  rng.integers(-127, 128, (V, d)).astype(np.int8)):
        table = _readonly(table)
        for name, args in (("head_logits", (h, table, rs)), ("embed", (table, rs, toks))):
            comp, ref = _ops_pair(name)
            shape = (n, V) if name == "head_logits" else (n, d)
            a, b = np.empty(shape, np.float32), np.empty(shape, np.float32)
            comp(*args, a, 2)
            ref(*args, b, 1)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("n,pos0", [(1, 0), (1, 16), (5, 0), (3, 9)])
@pytest.mark.parametrize("threads", [1, 2])
def test_ops_rope_attention(n, pos0, threads):
    from poppins.model.model import rope_tables

    rng = np.random.default_rng(n + pos0)
    H, Hk, hd, ctx = 4, 2, 8, 32
    cos, sin = rope_tables(ctx, hd, 10000.0, np.float32)
    comp, ref = _ops_pair("rope")
    x = rng.standard_normal((n, (H + Hk) * hd)).astype(np.float32)
    a, b = x.copy(), x.copy()
    comp(a, cos, sin, pos0, H + Hk, hd, 0, threads)
    ref(b, cos, sin, pos0, H + Hk, hd, 0, threads)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    comp, ref = _ops_pair("attention")
    q = _readonly(rng.standard_normal((n, H * hd)).astype(np.float32))
    kc = _readonly(rng.standard_normal((ctx, Hk * hd)).astype(np.float32))
    vc = _readonly(rng.standard_normal((ctx, Hk * hd)).astype(np.float32))
    oa, ob = np.empty((n, H * hd), np.float32), np.empty((n, H * hd), np.float32)
    comp(q, kc, vc, oa, pos0, H, Hk, 0.3, threads)
    ref(q, kc, vc, ob, pos0, H, Hk, 0.3, threads)
    np.testing.assert_allclose(oa, ob, rtol=1e-5, atol=1e-5)
    comp, ref = _ops_pair("mla_attention")
    kvl, r = 12, 4
    qf = _readonly(rng.standard_normal((n, H * (hd + r))).astype(np.float32))
    ckv = _readonly(rng.standard_normal((ctx, kvl)).astype(np.float32))
    kr = _readonly(rng.standard_normal((ctx, r)).astype(np.float32))
    wb = _readonly(rng.integers(-1, 2, (2 * H * hd, kvl)).astype(np.float32))
    oa, ob = np.empty((n, H * hd), np.float32), np.empty((n, H * hd), np.float32)
    comp(qf, ckv, kr, wb, 0.05, oa, pos0, H, hd, 0.2, threads)
    ref(qf, ckv, kr, wb, 0.05, ob, pos0, H, hd, 0.2, threads)
    np.testing.assert_allclose(oa, ob, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------- the compiled step
def _need_step():
    from poppins import native

    mod = native.load("engine")
    if mod is None or not hasattr(mod, "DecodePlan"):
        pytest.skip("poppins._engine is not built")
    return mod


@pytest.mark.parametrize("head", ["f32", "f16", "int8"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_compiled_step_equals_python_path(kind, head, tmp_path):
    """One token at a time: the compiled step (1 and 2 threads) gives the Python path's
    logits (the same ops in the same order; attention/head dot products may differ in the
    last bits only) and fills the same cache."""
    _need_step()
    m = random_model(kind, seed=21)
    export(m, tmp_path, head_dtype=head)
    eng = Engine.load(tmp_path, threads=2)
    assert eng.plan is not None
    toks = np.random.default_rng(5).integers(0, 300, 40)
    py = eng.session(compiled_step=False)
    c1 = eng.session(threads=1)
    c2 = eng.session(threads=2, team="fixed")   # every step on the team
    ca = eng.session(threads=2, team="auto")    # each step on the faster size
    for s in (py, c1, c2, ca):
        s.forward(toks[:3])
    for t in toks[3:]:
        a = py.forward([t])
        for s in (c1, c2, ca):
            b = s.forward([t])
            assert rel_err(b, a) < 1e-5
    n = len(toks) - 3
    assert c1.thread_steps == (0, n) and c2.thread_steps == (n, 0)
    assert sum(ca.thread_steps) == n and py.thread_steps == (0, 0)
    caches = (lambda s: s.k + s.v) if m.cfg.attention == "mha" else (lambda s: s.ckv + s.kr)
    for x, y in zip(caches(py), caches(c2)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_compiled_step_errors(tmp_path):
    _need_step()
    export(random_model("mha"), tmp_path)
    eng = Engine.load(tmp_path, threads=1)
    s = eng.session(context=4)
    s.forward([1, 2, 3, 4])
    with pytest.raises(PoppinsError, match="context"):
        s.forward([5])
    lg = np.empty(300, np.float32)
    with pytest.raises(ValueError):
        s._step.step(1, 4, lg, 1)          # position past the cache
    with pytest.raises(ValueError):
        s._step.step(300, 0, lg, 1)        # token out of range
    with pytest.raises(PoppinsError, match="needs the poppins._engine"):
        Engine.load(tmp_path, use_reference=True).session(compiled_step=True)


@pytest.mark.parametrize("m,k", [(1, 1), (7, 17), (5, 255), (9, 257), (17, 1024), (33, 300),
                                 (64, 2049)])
def test_decode_matvec_exact(m, k):
    mod = _need_step()
    if not mod.decode_matvec_available():
        pytest.skip("no AVX-512 VNNI here")
    from poppins.engine import kernels as TK

    rng = np.random.default_rng(m * 7 + k)
    t = rng.integers(-1, 2, (m, k), dtype=np.int8)
    for x in (rng.integers(-128, 128, k, dtype=np.int8), np.full(k, -128, np.int8),
              np.full(k, 127, np.int8)):
        w = TK.PackedTernary.from_values(t)
        y = np.empty(m, np.int32)
        mod.decode_matvec(_readonly(w.data), k, _readonly(x), y)
        np.testing.assert_array_equal(y, t.astype(np.int64) @ x.astype(np.int64))


def test_team_policy(monkeypatch):
    """POPPINS_TEAM picks how a decode session uses its threads; a bad value is one clear
    error naming the variable."""
    from poppins.threads import TEAM_POLICIES, team_policy
    assert TEAM_POLICIES == ("auto", "fixed")
    monkeypatch.delenv("POPPINS_TEAM", raising=False)
    assert team_policy() == "auto"
    monkeypatch.setenv("POPPINS_TEAM", "Fixed")
    assert team_policy() == "fixed" and team_policy("auto") == "auto"
    monkeypatch.setenv("POPPINS_TEAM", "both")
    with pytest.raises(PoppinsError, match="POPPINS_TEAM"):
        team_policy()


def test_team_choice_carries_to_the_next_session(tmp_path):
    """A finished session hands its team choice to the engine; the next session starts from
    it; a state that is not the chooser's is ignored; the numbers never depend on it."""
    _need_step()
    export(random_model("gqa", seed=3), tmp_path)
    eng = Engine.load(tmp_path, threads=2)
    toks = [5, 9, 11, 2, 7, 3, 8, 1]
    ref = eng.session(threads=1)
    want = [ref.forward([t]) for t in toks]
    a = eng.session(team="auto")
    got = [a.forward([t]) for t in toks]
    a.keep_team_choice()
    c = eng.team_choice
    assert isinstance(c, tuple) and len(c) == 5 and c[0] in (0, 1)
    b = eng.session(team="auto")
    assert b._step.choice()[:3] == c[:3]
    b._step.set_choice((1, -5, -5, 0, 0))          # not a choice: ignored
    assert b._step.choice()[:3] == c[:3]
    for t, w, g in zip(toks, want, got):
        assert rel_err(g, w) < 1e-5 and rel_err(b.forward([t]), w) < 1e-5
    assert sum(b.thread_steps) == len(toks)
