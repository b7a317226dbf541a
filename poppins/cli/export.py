"""``python -m poppins export``: write a trained model as GGUF (llama.cpp) or as a Hugging
Face folder (transformers).

    python -m poppins export -m OUT_DIR --format gguf -o model.gguf
    python -m poppins export -m OUT_DIR --format hf -o my-model-hf [--dtype bfloat16]

Needs the optional packages of ``pip install 'poppins[export]'`` (gguf, safetensors).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

FORMATS = ("gguf", "hf")


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a trained model to GGUF (llama.cpp) or a Hugging "
                                      "Face folder (transformers)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", default=".poppins",
                   help="OUT folder holding model.poppins, or the model file (default .poppins)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="gguf: one file for llama.cpp; hf: a folder for transformers")
    p.add_argument("-o", "--output", required=True,
                   help="the .gguf file, or the folder of the Hugging Face export")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="hf only: weight type of model.safetensors (default float32)")
    p.set_defaults(run=run)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def run(args) -> int:
    from ..export import load_source

    t0 = time.perf_counter()
    src = load_source(args.model)
    if args.format == "gguf":
        from ..export.gguf import write_gguf
        rep = write_gguf(src, args.output)
        what = f"{rep['path']} {_size(rep['bytes'])}"
    else:
        from ..export.hf import export_hf
        rep = export_hf(src, args.output, dtype=args.dtype)
        what = f"{rep['path']}/ (model.safetensors {_size(rep['bytes'])})"
    own = Path(src.path).stat().st_size if src.path else 0
    print(f"exported {what} from {src.path} {_size(own)} in {time.perf_counter() - t0:.2f} s",
          file=sys.stderr)
    return 0
