"""The ternary transformer: config, API, and gradient checks by finite differences (float64)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from poppins.errors import PoppinsError
from poppins.model import AdamW, Model, ModelConfig, segment_starts
from poppins.model import kernels as K
from poppins.model import reference as R

V, CTX = 37, 9


def small(**kw) -> ModelConfig:
    base = dict(vocab_size=V, dim=16, layers=2, heads=2, context_length=CTX, quantize=False,
                dtype="float64", ffn_dim=24)
    base.update(kw)
    return ModelConfig(**base)


CONFIGS = {
    "mha": small(),
    "gqa": small(heads=4, kv_heads=2, tie_embeddings=False),
    "mla": small(attention="mla", kv_latent_dim=6, rope_dim=4),
    "mla_qlat": small(attention="mla", kv_latent_dim=6, q_latent_dim=10, rope_dim=2,
                      tie_embeddings=False),
}


def batch(seed=0, B=2, T=CTX, packed=True):
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, V, (B, T))
    tg = rng.integers(0, V, (B, T))
    mask = (rng.random((B, T)) < 0.8).astype(np.float64)
    mask[0, 0] = 1
    w = rng.choice([0.5, 1.0, 2.0], size=(B, T))
    seg = None
    if packed:
        seg = np.zeros((B, T), dtype=np.int64)
        seg[0, 4:] = 1          # row 0: two packed samples
        seg[1, 2:] = 1
        seg[1, 7:] = 2          # row 1: three
    return tok, tg, mask, w, seg


def perturbed_params(model, seed):
    """Norm gains away from 1 and larger weights, so every gradient is well above the
    finite-difference noise (~1e-11 here)."""
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        if p.ndim == 1:
            p[...] = 1.0 + 0.3 * rng.standard_normal(p.shape)
        else:
            p *= 8.0


def fd_check(model, loss_fn, n_samples=6, h=1e-5, seed=0, tol=1e-5):
    """Central differences on sampled entries of every parameter tensor vs flat_grads."""
    rng = np.random.default_rng(seed)
    analytic = model.flat_grads.copy()
    for name, sl in model.slices.items():
        idx = rng.choice(np.arange(sl.start, sl.stop), size=min(n_samples, sl.stop - sl.start),
                         replace=False)
        num = np.empty(len(idx))
        for j, k in enumerate(idx):
            old = model.flat_params[k]
            model.flat_params[k] = old + h
            lp = loss_fn()
            model.flat_params[k] = old - h
            lm = loss_fn()
            model.flat_params[k] = old
            num[j] = (lp - lm) / (2 * h)
        ana = analytic[idx]
        err = np.linalg.norm(ana - num) / max(np.linalg.norm(num), 1e-8)
        assert err < tol, f"{name}: relative error {err:.2e}\nanalytic {ana}\nnumeric {num}"
        assert np.linalg.norm(num) > 0 or name.startswith("tok_emb"), name


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_model_gradients_float(kind):
    cfg = CONFIGS[kind]
    m = Model(cfg, seed=3, threads=2)
    perturbed_params(m, 4)
    tok, tg, mask, w, seg = batch(1)
    m.loss_and_grad(tok, tg, mask=mask, weights=w, segments=seg)
    fd_check(m, lambda: m.forward(tok, tg, mask=mask, weights=w, segments=seg))


# ----------------------------------------------------------------------------- STE
class FrozenQuantizers:
    """Replace every quantizer by y -> y + c, with c = Q(y0) - y0 recorded at the base point.

    The straight-through estimator is exactly the gradient of this surrogate at the base
    point, so finite differences on it check the quantized model's backward pass."""

    NAMES = ("weight_quant", "rmsnorm_quant_fwd", "act_quant", "relu2_quant_fwd")

    def __init__(self, monkeypatch):
        self.mp = monkeypatch
        self.offsets = []
        self.k = 0
        self.recording = True
        self.orig = {n: getattr(K, n) for n in self.NAMES}
        for n in self.NAMES:
            monkeypatch.setattr(K, n, getattr(self, "_" + n))

    def start(self, recording):
        self.recording = recording
        self.k = 0

    def _offset(self, y, q):
        if self.recording:
            self.offsets.append(q - y)
        off = self.offsets[self.k]
        self.k += 1
        return off

    def _weight_quant(self, w, out, threads=1):
        q = np.empty_like(w)
        scale = R.weight_quant(w, q)
        out[...] = w + self._offset(w, q)
        return scale

    def _rmsnorm_quant_fwd(self, x, g, out, rstd, eps, quant, threads=1):
        R.rmsnorm_quant_fwd(x, g, out, rstd, eps, False)
        if quant:
            y = out.copy()
            q = np.empty_like(y)
            R.act_quant(y, q)
            out[...] = y + self._offset(y, q)

    def _act_quant(self, x, out, threads=1):
        q = np.empty_like(x)
        R.act_quant(x, q)
        out[...] = x + self._offset(np.array(x), q)

    def _relu2_quant_fwd(self, u, out, quant, threads=1):
        R.relu2_quant_fwd(u, out, False)
        if quant:
            y = out.copy()
            q = np.empty_like(y)
            R.act_quant(y, q)
            out[...] = y + self._offset(y, q)


@pytest.mark.parametrize("kind", ["mha", "gqa", "mla_qlat"])
def test_model_gradients_quantized_equal_straight_through(kind, monkeypatch):
    cfg = CONFIGS[kind].replace(quantize=True)
    m = Model(cfg, seed=5, threads=2)
    perturbed_params(m, 6)
    tok, tg, mask, w, seg = batch(2)
    loss_q = m.loss_and_grad(tok, tg, mask=mask, weights=w, segments=seg)
    fz = FrozenQuantizers(monkeypatch)
    fz.start(recording=True)
    loss_frozen = m.forward(tok, tg, mask=mask, weights=w, segments=seg)
    assert abs(loss_frozen - loss_q) < 1e-12 * max(1.0, abs(loss_q))

    def loss_fn():
        fz.start(recording=False)
        return m.forward(tok, tg, mask=mask, weights=w, segments=seg)

    fd_check(m, loss_fn)


def test_quantized_forward_uses_ternary_weights_and_int8_activations():
    cfg = small(quantize=True)
    m = Model(cfg, seed=1)
    tok, tg, mask, w, seg = batch(0)
    m.forward(tok, tg)
    for n in m.bitlinear:
        s = m.wscale[n]
        codes = m.wq[n] / s
        assert np.allclose(codes, np.rint(codes)) and set(np.unique(np.rint(codes))) <= {-1, 0, 1}
        assert s == pytest.approx(np.mean(np.abs(m.params[n])))
    bf = m._cache
    a = bf.a[0]
    step = np.max(np.abs(a), axis=1, keepdims=True) / 127.0
    codes = a / np.where(step > 0, step, 1)
    assert np.allclose(codes, np.rint(codes), atol=1e-6)


def test_segments_isolate_packed_samples():
    """Changing one packed sample leaves the other samples' losses unchanged."""
    cfg = small(quantize=True, dtype="float32")
    m = Model(cfg, seed=2)
    tok, tg, mask, w, seg = batch(0)
    m.forward(tok, tg, segments=seg)
    l1 = m.per_token_loss()
    tok2 = tok.copy()
    tok2[0, :4] = (tok2[0, :4] + 1) % V   # first sample of row 0
    m.forward(tok2, tg, segments=seg)
    l2 = m.per_token_loss()
    assert np.array_equal(l1[0, 4:], l2[0, 4:])
    assert not np.array_equal(l1[0, :4], l2[0, :4])
    assert np.array_equal(l1[1], l2[1])
    # a lone sample at the start of the window gives the same losses as packed
    m.forward(tok[:, :4], tg[:, :4])
    assert np.allclose(m.per_token_loss()[0], l1[0, :4], rtol=1e-5, atol=1e-6)


def test_segment_starts():
    seg = np.array([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, 5, 5], [1, 2, 1, 1, 3, 3]])
    st = segment_starts(seg, 3, 6)
    assert st.tolist() == [[0, 0, 2, 2, 2, 5], [0] * 6, [0, 1, 2, 2, 4, 4]]
    assert segment_starts(None, 2, 3).tolist() == [[0, 0, 0]] * 2


def test_loss_definition_weights_and_mask():
    cfg = small()
    m = Model(cfg, seed=0)
    tok, tg, mask, w, seg = batch(3)
    loss = m.forward(tok, tg, mask=mask, weights=w, segments=seg)
    ce = m.per_token_loss()
    assert loss == pytest.approx(np.sum(mask * w * ce) / np.sum(mask), rel=1e-12)
    # a negative target is ignored
    tg2 = tg.copy()
    tg2[0, 1] = -1
    m.forward(tok, tg2)
    assert m.per_token_loss()[0, 1] == 0


def test_buffers_are_reused_across_steps():
    m = Model(small(dtype="float32", quantize=True), seed=0)
    tok, tg, *_ = batch(0)
    m.loss_and_grad(tok, tg)
    bf = m._bufs[(2, CTX)]
    ids = [id(a) for a in bf.x + bf.h1 + bf.u] + [id(bf.logits)]
    m.loss_and_grad(tok, tg)
    assert m._bufs[(2, CTX)] is bf
    assert [id(a) for a in bf.x + bf.h1 + bf.u] + [id(bf.logits)] == ids


def test_float32_matches_float64():
    c64 = small(quantize=False)
    m64 = Model(c64, seed=7)
    m32 = Model(c64.replace(dtype="float32"), seed=7)
    tok, tg, mask, w, seg = batch(4)
    l64 = m64.loss_and_grad(tok, tg, mask=mask, weights=w, segments=seg)
    l32 = m32.loss_and_grad(tok, tg, mask=mask, weights=w, segments=seg)
    assert l32 == pytest.approx(l64, rel=1e-5)
    g64 = m64.flat_grads
    assert np.linalg.norm(m32.flat_grads - g64) / np.linalg.norm(g64) < 1e-4


def test_training_reduces_loss_and_is_deterministic():
    def run():
        cfg = small(dtype="float32", quantize=True, dim=32, heads=4)
        m = Model(cfg, seed=0, threads=2)
        opt = AdamW(m, lr=3e-3, weight_decay=0.1)
        rng = np.random.default_rng(0)
        seq = np.tile(rng.integers(0, V, 5), 4)[: CTX + 1]
        tok = np.stack([seq[:-1]] * 3)
        tg = np.stack([seq[1:]] * 3)
        losses = []
        for _ in range(40):
            losses.append(m.loss_and_grad(tok, tg))
            opt.step()
        return losses, m.flat_params.copy()

    a, pa = run()
    b, pb = run()
    assert a == b and np.array_equal(pa, pb)
    assert a[-1] < 0.5 * a[0]


def test_last_logits_match_forward():
    m = Model(small(dtype="float64", quantize=True), seed=0)
    tok, tg, *_ = batch(0)
    last = m.last_logits(tok)
    m.forward(tok, tg)
    # recompute logits from forward's hidden state
    bf = m._cache
    full = bf.hf @ m.params["tok_emb"].T
    assert np.allclose(last, full.reshape(2, CTX, V)[:, -1], rtol=1e-10, atol=1e-12)


def test_state_dict_roundtrip_and_accumulate():
    m = Model(small(), seed=0)
    sd = m.state_dict()
    m2 = Model(small(), seed=99)
    m2.load_state_dict(sd)
    assert np.array_equal(m.flat_params, m2.flat_params)
    tok, tg, *_ = batch(0)
    m.loss_and_grad(tok, tg)
    g = m.flat_grads.copy()
    m.forward(tok, tg)
    m.backward(accumulate=True)
    assert np.allclose(m.flat_grads, 2 * g)
    with pytest.raises(PoppinsError):
        m2.load_state_dict({"tok_emb": sd["tok_emb"]})


# ----------------------------------------------------------------------------- config
def test_config_json_roundtrip(tmp_path):
    cfg = ModelConfig(vocab_size=4096, dim=256, layers=6, heads=8, attention="mla",
                      kv_latent_dim=64, rope_dim=16, context_length=256)
    p = tmp_path / "model.json"
    cfg.save(p)
    assert ModelConfig.load(p) == cfg
    doc = json.loads(p.read_text())
    assert doc["magic"] == "poppins-model-config" and doc["version"] == 1
    assert ModelConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("kw, msg", [
    (dict(dim=130, heads=4), "multiple of heads"),
    (dict(heads=4, kv_heads=3), "kv_heads"),
    (dict(attention="gqa"), "attention"),
    (dict(dim=0), "dim"),
    (dict(dtype="float16"), "dtype"),
    (dict(dim=12, heads=4), "even"),
    (dict(norm_eps=-1.0), "norm_eps"),
    (dict(quantize="yes"), "quantize"),
])
def test_config_validation(kw, msg):
    with pytest.raises(PoppinsError, match=msg):
        ModelConfig(**kw)


def test_config_load_errors(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"magic": "poppins-model-config", "version": 1, "config": {"dimm": 3}}')
    with pytest.raises(PoppinsError, match="dimm") as ei:
        ModelConfig.load(p)
    assert str(p) in str(ei.value)
    p.write_text('{"magic": "poppins-model-config", "version": 9, "config": {}}')
    with pytest.raises(PoppinsError, match="version"):
        ModelConfig.load(p)
    p.write_text("{oops")
    with pytest.raises(PoppinsError, match="JSON"):
        ModelConfig.load(p)


def test_model_input_errors():
    m = Model(small(dtype="float32"), seed=0)
    tok, tg, *_ = batch(0)
    with pytest.raises(PoppinsError, match="context_length"):
        m.forward(np.zeros((1, CTX + 1), dtype=np.int64), np.zeros((1, CTX + 1), dtype=np.int64))
    with pytest.raises(PoppinsError, match="out of range"):
        m.forward(tok + V, tg)
    with pytest.raises(PoppinsError, match="targets"):
        m.forward(tok, tg[:, :3])


def test_greedy_oracle_learns_a_sequence():
    from poppins.training.generate import greedy

    cfg = small(dtype="float32", quantize=True, dim=32, heads=4)
    m = Model(cfg, seed=1, threads=1)
    opt = AdamW(m, lr=1e-2, weight_decay=0.0)
    seq = np.array([3, 7, 11, 5, 2, 9, 30, 1, 4, 8])
    tok, tg = seq[None, :-1], seq[None, 1:]
    for _ in range(150):
        m.loss_and_grad(tok, tg)
        opt.step()
    assert greedy(m, [seq[:3]], 20, stop_ids=[8], slide=True) == [list(seq[3:])]
    assert len(greedy(m, [[3]], 4, stop_ids=())[0]) == 4
