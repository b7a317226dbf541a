"""The inference engine's numeric core: ternary weights, their kernels, the model file.

- ``packing``: 2-bit codes (0b00 = 0, 0b01 = -1, 0b10 = +1), absmean and int8 quantizers.
- ``kernels``: ternary x int8 -> int32 products on the compiled kernels (runtime SIMD dispatch).
- ``reference``: the NumPy references of the compiled kernels.
- ``modelfile``: ``OUT/model.poppins`` (write_model_file / load_model_file).
- ``export``: a trained model -> model.poppins (export_model, export_from_out_dir).
- ``runtime``: the generation engine (Engine, Session: KV cache, prefill, decode step).
- ``sampling``, ``render``: next-token sampling (llama.cpp's rules) and answer rendering.
- ``ops`` / ``ops_ref``: the engine's small ops (compiled poppins._engine or NumPy).
"""
from .export import export_from_out_dir, export_model
from .modelfile import ModelFile, load_model_file, write_model_file
from .packing import TernaryTensor, absmean_quantize, pack_codes, unpack_codes

__all__ = ["Engine", "ModelFile", "TernaryTensor", "absmean_quantize", "export_from_out_dir",
           "export_model", "load_model_file", "pack_codes", "unpack_codes", "write_model_file"]


def __getattr__(name):
    if name == "Engine":
        from .runtime import Engine

        return Engine
    raise AttributeError(f"module 'poppins.engine' has no attribute {name!r}")
