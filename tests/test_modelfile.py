"""The model file: bit-exact round trip through mmap, and clear errors for bad files."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from poppins.engine import kernels as K
from poppins.engine.modelfile import (ALIGN, FORMAT_VERSION, MAGIC, PREFIX_SIZE, TRAILER_SIZE,
                                      load_model_file, write_model_file)
from poppins.engine.packing import TernaryTensor
from poppins.errors import PoppinsError

TOKENIZER = json.dumps({"version": 1, "vocab": ["<sample>", "é", "ab"], "merges": [["a", "b"]]})
SOURCES = {"0": {"url": "https://example.org/a", "title": "Ä title"}, "x1": {"url": "u", "title": "t"}}
CONFIG = {"d_model": 64, "n_layers": 2, "vocab_size": 300, "rope_theta": 10000.0, "name": "tiny"}


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "embed": rng.standard_normal((300, 64)).astype(np.float32),
        "layers.0.attn.wq": TernaryTensor.from_float(rng.standard_normal((64, 64)).astype(np.float32)),
        "layers.0.mlp.w1": TernaryTensor.from_float(rng.standard_normal((171, 65)).astype(np.float32)),
        "norm": rng.standard_normal(64).astype(np.float16),
        "head_q": rng.integers(-128, 128, (7, 3)).astype(np.int8),
        "empty": np.zeros((0, 5), np.float32),
        "scalar": np.array(3.5, np.float32),
    }


def _write(path, tensors=None, **kw):
    args = dict(config=CONFIG, tensors=_tensors() if tensors is None else tensors,
                tokenizer_json=TOKENIZER, sources=SOURCES, default_system="Be brief.",
                extra={"seed": 7})
    args.update(kw)
    return write_model_file(path, **args)


@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_bit_exact(tmp_path, mmap):
    path = tmp_path / "model.poppins"
    tensors = _tensors()
    _write(path, tensors)
    mf = load_model_file(path, mmap=mmap)
    assert mf.version == FORMAT_VERSION
    assert mf.config == CONFIG
    assert mf.tokenizer_json == TOKENIZER
    assert mf.sources == SOURCES
    assert mf.default_system == "Be brief."
    assert mf.extra == {"seed": 7}
    assert list(mf.tensors) == list(tensors)
    for name, orig in tensors.items():
        got = mf[name]
        if isinstance(orig, TernaryTensor):
            assert isinstance(got, TernaryTensor)
            assert got.shape == orig.shape and got.scale == orig.scale
            assert got.codes.tobytes() == orig.codes.tobytes()
            assert not got.codes.flags.writeable
        else:
            assert got.dtype == orig.dtype and got.shape == orig.shape
            assert got.tobytes() == orig.tobytes()
            assert not got.flags.writeable
    if mmap:
        assert isinstance(mf["embed"].base, np.memmap) or isinstance(mf["embed"], np.memmap)
        for name in ("embed", "norm", "head_q"):
            assert mf[name].ctypes.data % ALIGN == 0
        assert mf["layers.0.attn.wq"].codes.ctypes.data % ALIGN == 0


def test_file_layout_and_determinism(tmp_path):
    a, b = tmp_path / "a.poppins", tmp_path / "b.poppins"
    _write(a)
    _write(b)
    raw = a.read_bytes()
    assert raw == b.read_bytes()  # no timestamps: same inputs, same bytes
    magic, version, reserved, hlen = struct.unpack("<8sIIQ", raw[:PREFIX_SIZE])
    assert (magic, version, reserved) == (MAGIC, 1, 0)
    header = json.loads(raw[PREFIX_SIZE:PREFIX_SIZE + hlen])
    assert header["format"] == "poppins-model"
    wq = next(e for e in header["tensors"] if e["name"] == "layers.0.attn.wq")
    assert wq["dtype"] == "ternary2" and wq["layout"] == {"name": "rows", "version": 1}
    assert wq["shape"] == [64, 64] and wq["nbytes"] == 64 * 16
    assert isinstance(wq["scale"], float)
    assert {e["dtype"] for e in header["tensors"]} == {"ternary2", "f32", "f16", "i8"}
    assert all(e["offset"] % ALIGN == 0 for e in header["tensors"])
    assert len(raw) % ALIGN == TRAILER_SIZE % ALIGN
    # the written ternary codes are the documented 2-bit codes
    data_start = -(-(PREFIX_SIZE + hlen) // ALIGN) * ALIGN
    t = _tensors()["layers.0.attn.wq"]
    off = data_start + wq["offset"]
    assert raw[off:off + wq["nbytes"]] == t.codes.tobytes()


def test_write_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "out" / "model.poppins"
    _write(path, default_system=None)
    _write(path, tensors={"x": np.ones(3, np.float32)}, default_system=None)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.poppins"]
    mf = load_model_file(path)
    assert list(mf.tensors) == ["x"] and mf.default_system is None
    with pytest.raises(TypeError, match="float64"):
        _write(path, tensors={"bad": np.ones(3)})
    # a failed write leaves the old file and no temporary behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.poppins"]
    assert list(load_model_file(path).tensors) == ["x"]


def test_kernels_run_on_the_mapped_file(tmp_path):
    path = tmp_path / "model.poppins"
    tensors = _tensors()
    _write(path, tensors)
    mf = load_model_file(path)
    w = K.PackedTernary.from_tensor(mf["layers.0.mlp.w1"])
    x = np.random.default_rng(1).integers(-128, 128, (3, 65)).astype(np.int8)
    t = tensors["layers.0.mlp.w1"].values()
    np.testing.assert_array_equal(K.matmul_int(w, x), x.astype(np.int64) @ t.T.astype(np.int64))


# ---------------------------------------------------------------- bad files

def _err(path, **kw) -> str:
    with pytest.raises(PoppinsError) as exc:
        load_model_file(path, **kw)
    msg = str(exc.value)
    assert str(path) in msg
    return msg


def test_missing_file(tmp_path):
    assert "cannot read" in _err(tmp_path / "nope.poppins")


def test_wrong_magic(tmp_path):
    path = tmp_path / "m.poppins"
    _write(path)
    raw = bytearray(path.read_bytes())
    raw[:8] = b"GGUF\x03\x00\x00\x00"
    path.write_bytes(raw)
    assert "not a poppins model file" in _err(path)


def test_wrong_version(tmp_path):
    path = tmp_path / "m.poppins"
    _write(path)
    raw = bytearray(path.read_bytes())
    raw[8:12] = struct.pack("<I", 2)
    path.write_bytes(raw)
    msg = _err(path)
    assert "unsupported model file format version 2" in msg and "version 1" in msg


@pytest.mark.parametrize("cut", [0, 5, 20, 100, 1000, -TRAILER_SIZE, -1])
def test_truncated(tmp_path, cut):
    path = tmp_path / "m.poppins"
    _write(path)
    raw = path.read_bytes()
    n = cut if cut >= 0 else len(raw) + cut
    path.write_bytes(raw[:n])
    assert "truncated" in _err(path)


def test_trailing_bytes(tmp_path):
    path = tmp_path / "m.poppins"
    _write(path)
    path.write_bytes(path.read_bytes() + b"\0" * 64)
    assert "corrupted" in _err(path)


def test_corrupted_data_and_header(tmp_path):
    path = tmp_path / "m.poppins"
    _write(path)
    good = path.read_bytes()
    # one flipped bit in the tensor data
    raw = bytearray(good)
    raw[len(raw) - TRAILER_SIZE - 70] ^= 0x10
    path.write_bytes(raw)
    assert "checksum mismatch" in _err(path)
    load_model_file(path, verify=False)  # skipping the check loads the (wrong) data
    # a changed digit inside the JSON header (still valid JSON)
    raw = bytearray(good)
    i = good.index(b'"d_model":64') + len(b'"d_model":')
    raw[i] = ord("9")
    path.write_bytes(raw)
    assert "checksum mismatch" in _err(path)
    # garbage inside the header
    raw = bytearray(good)
    raw[PREFIX_SIZE] = ord("#")
    path.write_bytes(raw)
    assert "header is not valid JSON" in _err(path)
    assert "header is not valid JSON" in _err(path, verify=False)
    # a damaged trailer
    raw = bytearray(good)
    raw[-TRAILER_SIZE] ^= 0xFF
    path.write_bytes(raw)
    assert "bad trailer" in _err(path)


def test_bad_tensor_table(tmp_path):
    """A header that passes the checksum but describes impossible tensors (a buggy writer)."""
    path = tmp_path / "m.poppins"
    _write(path, tensors={"w": TernaryTensor.from_values(np.ones((2, 5), np.int8))})
    import hashlib

    raw = path.read_bytes()
    hlen = struct.unpack("<Q", raw[16:24])[0]
    header = json.loads(raw[PREFIX_SIZE:PREFIX_SIZE + hlen])
    for mutate, expect in [(lambda e: e.update(nbytes=3), "do not hold"),
                           (lambda e: e.update(dtype="q4"), "unknown dtype"),
                           (lambda e: e.update(offset=4096), "outside the data"),
                           (lambda e: e.update(layout={"name": "rows", "version": 9}), "layout")]:
        h = json.loads(json.dumps(header))
        mutate(h["tensors"][0])
        dump = lambda: json.dumps(h, ensure_ascii=False, separators=(",", ":")).encode()
        extra = len(dump()) - hlen
        if extra > 0:  # keep the header length so the data stays where it was
            h["default_system"] = h["default_system"][:-extra]
        hb = dump()
        hb += b" " * (hlen - len(hb))
        assert len(hb) == hlen
        body = raw[:PREFIX_SIZE] + hb + raw[PREFIX_SIZE + hlen:-TRAILER_SIZE]
        trailer = raw[-TRAILER_SIZE:-32] + hashlib.sha256(body).digest()
        path.write_bytes(body + trailer)
        assert expect in _err(path)


# ---------------------------------------------------------------- issue 13: hostile headers

def _fuzz():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("poppins_fuzz", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A real exported model and checkpoint (scripts/fuzz.py's fixture) and the fuzz module."""
    fz = _fuzz()
    return fz, fz.make_fixture(tmp_path_factory.mktemp("real"))


def _resealed(real, tmp_path, raw: bytes, mutate, name="m.poppins"):
    fz, _ = real
    head12, header, data = fz._frame_parts(raw)
    mutate(header)
    p = tmp_path / name
    p.write_bytes(fz.seal(head12, header, data))
    return p


def _tensor(header, name):
    return next(e for e in header["tensors"] if e["name"] == name)


@pytest.mark.parametrize("mutate,field", [
    (lambda h: h["config"].update(context_length=2 ** 31 - 1), "config.context_length"),
    (lambda h: h["config"].update(context_length=2 ** 20, dim=4096, heads=32), "KV cache"),
    (lambda h: h["config"].update(ffn_dim=10 ** 9), "ffn.w_up').shape"),
    (lambda h: h["config"].update(layers=10 ** 9), "field config"),
    (lambda h: h["config"].update(layers=2), "config.layers"),
    (lambda h: h["tensors"].remove(_tensor(h, "layers.0.ffn_norm")), "is missing"),
    (lambda h: h["config"].update(kv_heads=1), "attn.wqkv').shape"),
    (lambda h: h["config"].update(vocab_size=100), "tok_emb').shape"),
    (lambda h: h["config"].update(heads="2"), "heads must be a positive integer"),
    (lambda h: _tensor(h, "layers.0.attn.wo").update(scale=float("nan")), ".scale"),
    (lambda h: _tensor(h, "layers.0.attn.wo").update(scale=-1.0), ".scale"),
    (lambda h: _tensor(h, "layers.0.attn.wo").update(offset=-64), ".offset"),
    (lambda h: _tensor(h, "layers.0.attn.wo").update(offset=_tensor(h, "layers.0.attn.wqkv")["offset"]),
     "overlap"),
    (lambda h: _tensor(h, "final_norm").update(shape=[10 ** 12], nbytes=4 * 10 ** 12), ".offset"),
    (lambda h: _tensor(h, "final_norm").update(shape="16"), ".shape"),
    (lambda h: _tensor(h, "final_norm").update(dtype=["f32"]), ".dtype"),
    (lambda h: h["tensors"].append(dict(_tensor(h, "final_norm"), name="extra", shape=[0],
                                        nbytes=0)), "does not belong"),
    (lambda h: h.update(tensors={"a": 1}), "field tensors: not a list"),
    (lambda h: h.update(sources=[]), "field sources"),
    (lambda h: h.update(data_bytes="12"), "data_bytes"),
])
def test_hostile_model_header_is_a_clean_error(real, tmp_path, mutate, field):
    """A valid checksum around a hostile header: a PoppinsError naming the file and the field,
    quickly, before anything the header sizes is allocated."""
    import time

    from poppins.engine.runtime import Engine

    fz, fx = real
    p = _resealed(real, tmp_path, fx.model_bytes, mutate)
    t0 = time.monotonic()
    with pytest.raises(PoppinsError) as e:
        Engine.load(p, threads=1)
    assert time.monotonic() - t0 < 5
    assert str(p) in str(e.value) and field in str(e.value), str(e.value)


def test_the_untouched_real_model_loads(real, tmp_path):
    from poppins.engine.runtime import Engine

    fz, fx = real
    p = _resealed(real, tmp_path, fx.model_bytes, lambda h: None)
    assert p.read_bytes() == fx.model_bytes     # sealing is the writer's framing
    eng = Engine.load(p, threads=1)
    assert eng.session().forward([1, 2, 3]).shape[-1] == eng.cfg.vocab_size


def test_invalid_ternary_codes_name_the_file(real, tmp_path):
    from poppins.engine.runtime import Engine

    fz, fx = real
    head12, header, data = fz._frame_parts(fx.model_bytes)
    e = _tensor(header, "layers.0.attn.wo")
    data = bytearray(data)
    data[e["offset"]] = 0xFF
    p = tmp_path / "m.poppins"
    p.write_bytes(fz.seal(head12, header, bytes(data)))
    with pytest.raises(PoppinsError, match=r"m\.poppins.*invalid 2-bit codes"):
        Engine.load(p, threads=1)


@pytest.mark.parametrize("mutate,field", [
    (lambda h: h["arrays"].pop(0), "arrays ('params')"),
    (lambda h: h["arrays"][0].pop("dtype"), ".dtype"),
    (lambda h: h["arrays"][0].update(dtype="<f8", nbytes=h["arrays"][0]["nbytes"] * 2), "overlap"),
    (lambda h: h["arrays"][0].update(dtype="<f8"), ".nbytes"),
    (lambda h: h["arrays"][1].update(offset=-64), ".offset"),
    (lambda h: h["arrays"][1].update(offset=0), "overlap"),
    (lambda h: h["arrays"][0].update(dtype="|O"), "unknown dtype"),
    (lambda h: h["arrays"][0].update(shape=[1, 2, 3, 4, 5, 6, 7, 8, 9]), ".shape"),
    (lambda h: h.pop("model_config"), "model_config"),
    (lambda h: h["model_config"].update(layers=10 ** 4), "arrays ('params').shape"),
    (lambda h: h["model_config"].update(layers=10 ** 9), "field model_config"),
    (lambda h: h["model_config"].update(context_length=2 ** 31 - 1), "model_config.context_length"),
    (lambda h: h["model_config"].update(dim="x"), "model_config"),
    (lambda h: h["train_config"].update(lr="fast"), "train_config"),
    (lambda h: h.update(step=-1), "field step"),
    (lambda h: h.update(step=11), "past total_steps"),
    (lambda h: h.update(adam_t=1.5), "field adam_t"),
    (lambda h: h.update(history=[[1, "x", None]]), "history"),
    (lambda h: h.update(arrays=None), "field arrays"),
])
def test_hostile_checkpoint_is_a_clean_error(real, tmp_path, mutate, field):
    from poppins.training.checkpoint import load_checkpoint

    fz, fx = real
    p = _resealed(real, tmp_path, fx.ckpt_bytes, mutate, "last.ckpt")
    with pytest.raises(PoppinsError) as e:
        load_checkpoint(p)
    assert str(p) in str(e.value) and field in str(e.value), str(e.value)


def test_the_untouched_checkpoint_loads(real, tmp_path):
    from poppins.training.checkpoint import load_checkpoint

    fz, fx = real
    header, arrays = load_checkpoint(fx.ckpt_path)
    assert header["step"] == 3 and set(arrays) == {"params", "adam_m", "adam_v"}
