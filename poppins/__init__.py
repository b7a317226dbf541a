"""poppins: train your own small ternary language model on a CPU from a train.xml file.

The public API::

    import poppins
    poppins.bootstrap("my-model")          # example train.xml + train.xsd + topic files
    poppins.train("my-model/train.xml", "my-model/.poppins")
    model = poppins.Model.load("my-model/.poppins")
    print(model.generate("What is poppins?", temperature=0))
    poppins.backend_info()                 # which compiled kernels are active

Heavier pieces are imported on first use, so ``import poppins`` stays fast.
"""
from __future__ import annotations

from ._version import __version__
from .errors import PoppinsError
from .native import backend_info

__all__ = ["__version__", "PoppinsError", "backend_info", "bootstrap", "prepare_data",
           "Tokenizer", "train", "TrainConfig", "Memory", "Model", "evaluate"]

_LAZY = {
    "bootstrap": ("poppins.bootstrap", "bootstrap"),
    "prepare_data": ("poppins.datastage", "prepare_data"),
    "Tokenizer": ("poppins.tokenizer", "Tokenizer"),
    "train": ("poppins.training", "train"),
    "Memory": ("poppins.memory", "Memory"),
    "Model": ("poppins.api", "Model"),
    "TrainConfig": ("poppins.training", "TrainConfig"),
    "evaluate": ("poppins.evaluation", "evaluate"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'poppins' has no attribute {name!r}")
