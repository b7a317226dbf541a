"""Training checkpoints: ``OUT/checkpoints/last.ckpt``, written atomically.

A checkpoint is a poppins container (magic ``PPNSCKPT``, version 1; see poppins.container)
holding the model's flat parameters and the AdamW moments as arrays, and in its JSON header
the TrainConfig, the ModelConfig, the step, the data position (epoch, row), the loss history
and the sha256 of the data stage's manifest.json, so ``--resume`` continues bit-identically
and refuses when the data changed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from ..container import read_container, write_container

MAGIC = b"PPNSCKPT"
VERSION = 1
FORMAT = "poppins-checkpoint"
LAST = "last.ckpt"


def checkpoint_path(out_dir) -> Path:
    return Path(out_dir) / "checkpoints" / LAST


def save_checkpoint(path, header: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    write_container(path, MAGIC, VERSION, dict(header, format=FORMAT), arrays)


def load_checkpoint(path) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    return read_container(path, MAGIC, VERSION, "checkpoint")
