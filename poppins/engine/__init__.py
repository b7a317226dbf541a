"""The inference engine: ternary weights, their kernels, the model file (read side), generation.

The engine imports nothing from poppins.training or poppins.model (tests/test_structure.py
checks it): training writes model files through ``modelfile`` (export lives in
poppins.training.export), the engine reads them.

- ``packing``: 2-bit codes (0b00 = 0, 0b01 = -1, 0b10 = +1), absmean and int8 quantizers.
- ``kernels``: ternary x int8 -> int32 products on the compiled kernels (runtime SIMD dispatch).
- ``reference``: the NumPy references of the compiled kernels.
- ``modelfile``: ``OUT/model.poppins`` (write_model_file / load_model_file), the one format.
- ``config``: ModelConfig, the model's sizes (the model file's and the checkpoint's config).
- ``attention``: attention units (MHA/GQA, MLA): config rules, weights, KV-cache layout, step.
- ``runtime``: the generation engine (Engine, Session: KV cache, prefill, decode step).
- ``sampling``, ``render``: next-token sampling (llama.cpp's rules) and answer rendering.
- ``ops`` / ``ops_ref``: the engine's small ops (compiled poppins._engine or NumPy).
"""
from .config import ModelConfig
from .modelfile import ModelFile, load_model_file, write_model_file
from .packing import TernaryTensor, absmean_quantize, pack_codes, unpack_codes

__all__ = ["Engine", "ModelConfig", "ModelFile", "TernaryTensor", "absmean_quantize",
           "load_model_file", "pack_codes", "unpack_codes", "write_model_file"]


def __getattr__(name):
    if name == "Engine":
        from .runtime import Engine

        return Engine
    raise AttributeError(f"module 'poppins.engine' has no attribute {name!r}")
