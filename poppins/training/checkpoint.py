"""Training checkpoints: ``OUT/checkpoints/last.ckpt``, written atomically.

A checkpoint is a poppins container (magic ``PPNSCKPT``, version 1; see poppins.container)
holding the model's flat parameters and the AdamW moments as arrays, and in its JSON header
the TrainConfig, the ModelConfig, the step, the data position (epoch, row), the loss history
and the sha256 of the data stage's manifest.json, so ``--resume`` continues bit-identically
and refuses when the data changed.

``load_checkpoint`` checks every header field and array it returns (types, ranges, the
arrays' dtype and length against the ModelConfig) and raises a PoppinsError naming the file
and the field otherwise, so the trainer can use them without further checks.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from ..container import field_error, is_int, is_number, read_container, write_container
from ..errors import PoppinsError

MAGIC = b"PPNSCKPT"
VERSION = 1
FORMAT = "poppins-checkpoint"
LAST = "last.ckpt"
WHAT = "checkpoint"

#: the arrays a checkpoint holds, each one flat vector of the model's parameter count
ARRAYS = ("params", "adam_m", "adam_v")
#: integer header fields (all >= 0)
INT_FIELDS = ("step", "total_steps", "epoch", "row", "adam_t")


def checkpoint_path(out_dir) -> Path:
    return Path(out_dir) / "checkpoints" / LAST


def save_checkpoint(path, header: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    write_container(path, MAGIC, VERSION, dict(header, format=FORMAT), arrays)


def load_checkpoint(path) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    header, arrays = read_container(path, MAGIC, VERSION, WHAT)
    check_checkpoint(path, header, arrays)
    return header, arrays


def check_checkpoint(path, header: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    """Raise a PoppinsError naming ``path`` and the field unless the checkpoint is usable."""
    from ..model.config import ModelConfig
    from ..engine.config import param_shapes

    def bad(field: str, msg: str) -> PoppinsError:
        return field_error(path, WHAT, field, msg)

    for key in ("train_config", "model_config"):
        if not isinstance(header.get(key), dict):
            raise bad(key, "missing or not an object")
    for key in INT_FIELDS:
        v = header.get(key)
        if not is_int(v) or v < 0:
            raise bad(key, f"missing or not a non-negative integer (got {v!r})")
    if header["step"] > header["total_steps"]:
        raise bad("step", f"{header['step']} is past total_steps {header['total_steps']}")
    hist = header.get("history", [])
    if not isinstance(hist, list) or not all(
            isinstance(h, list) and len(h) == 3 and is_int(h[0])
            and all(x is None or is_number(x) for x in h[1:]) for h in hist):
        raise bad("history", "not a list of [step, train loss, val loss or null]")
    if not isinstance(header.get("manifest_sha256"), str):
        raise bad("manifest_sha256", "missing or not a string")
    try:
        mcfg = ModelConfig.from_dict(dict(header["model_config"]), source=str(path))
    except TypeError as exc:
        raise bad("model_config", str(exc)) from None
    except PoppinsError as exc:
        raise bad("model_config", "; ".join(p.message for p in exc.problems)) from None
    from ..engine.modelfile import check_runtime_limits
    from .config import TrainConfig

    check_runtime_limits(path, WHAT, "model_config", mcfg)

    try:
        TrainConfig.from_dict(dict(header["train_config"]))
    except (PoppinsError, TypeError, ValueError, OverflowError) as exc:
        msg = "; ".join(p.message for p in exc.problems) if isinstance(exc, PoppinsError) \
            else str(exc)
        raise bad("train_config", msg[:200]) from None
    # the parameter count, in time independent of the (possibly hostile) layer count
    def count(layers: int) -> int:
        n = 0
        for _name, shape, _kind in param_shapes(dataclasses.replace(mcfg, layers=layers)):
            k = 1
            for d in shape:
                k *= d
            n += k
        return n
    one, two = count(1), count(2)
    n = one + (mcfg.layers - 1) * (two - one)
    dtype = np.dtype(mcfg.dtype)
    for key in ARRAYS:
        a = arrays.get(key)
        if a is None:
            raise bad(f"arrays ({key!r})", "missing")
        if a.dtype != dtype:
            raise bad(f"arrays ({key!r}).dtype", f"{a.dtype}, the model config says {dtype}")
        if a.shape != (n,):
            raise bad(f"arrays ({key!r}).shape", f"{list(a.shape)}, the model config implies "
                      f"[{n}] parameters")
