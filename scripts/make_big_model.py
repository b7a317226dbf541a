#!/usr/bin/env python3
"""A model file of about N million parameters with random weights, for memory and speed
figures on small boards (the weights are untrained: the answers are noise).

    python3 scripts/make_big_model.py -o /tmp/m100 --like demo/.poppins          # ~100 M
    python -m poppins bench -m /tmp/m100 -p 0 -n 8 -r 1   # prints infer's peak RSS

The tokenizer (and so the vocabulary) is taken from a trained model (--like); the weights go
through the ordinary writer (poppins.engine.export.export_model), so the file is exactly what
training would write for that shape.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SHAPES = {  # million parameters -> (dim, layers, heads, context)
    100: (768, 14, 12, 512),
    25: (512, 8, 8, 256),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, help="model directory to write")
    ap.add_argument("--like", required=True, help="a trained model (its tokenizer is reused)")
    ap.add_argument("--million", type=int, default=100, choices=sorted(SHAPES))
    args = ap.parse_args()

    from poppins.engine.export import export_model
    from poppins.engine.modelfile import load_model_file
    from poppins.model.config import ModelConfig
    from poppins.model.model import Model

    like = Path(args.like)
    mf = load_model_file(like / "model.poppins" if like.is_dir() else like, verify=False)
    tok = mf.header["tokenizer"]
    vocab = int(mf.header["config"]["vocab_size"])
    dim, layers, heads, ctx = SHAPES[args.million]
    cfg = ModelConfig(vocab_size=vocab, dim=dim, layers=layers, heads=heads, context_length=ctx)
    model = Model(cfg, seed=1, threads=1)
    n = sum(int(p.size) for p in model.params.values())
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = export_model(model, out / "model.poppins", tokenizer_json=tok, sources={},
                        default_system=None)
    print(json.dumps({"path": str(path), "parameters": n, "dim": dim, "layers": layers,
                      "vocab": vocab, "bytes": path.stat().st_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
