"""The inference engine's numeric core: ternary weights, their kernels, the model file.

- ``packing``: 2-bit codes (0b00 = 0, 0b01 = -1, 0b10 = +1), absmean and int8 quantizers.
- ``kernels``: ternary x int8 -> int32 products on the compiled kernels (runtime SIMD dispatch).
- ``reference``: the NumPy references of the compiled kernels.
- ``modelfile``: ``OUT/model.poppins`` (write_model_file / load_model_file).
"""
from .modelfile import ModelFile, load_model_file, write_model_file
from .packing import TernaryTensor, absmean_quantize, pack_codes, unpack_codes

__all__ = ["ModelFile", "TernaryTensor", "absmean_quantize", "load_model_file", "pack_codes",
           "unpack_codes", "write_model_file"]
