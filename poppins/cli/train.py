"""``python -m poppins train``: from train.xml to a trained ternary model.

    python -m poppins train -i train.xml -o .poppins

The data stage (validate train.xml, expand samples, train the tokenizer, write the corpus)
runs first; ``--data-only`` stops there.  Problems in train.xml are printed as
``FILE:LINE: message`` (up to 20) with exit code 2, and the previous output folder is left
untouched.  Flags win over train.xml constants, constants over the defaults.  Ctrl+C or
SIGTERM write a checkpoint and stop; ``--resume`` continues from it.
"""
from __future__ import annotations

import argparse



def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model from train.xml (the data stage with --data-only)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--input", default="train.xml", metavar="TRAIN_XML",
                   help="the train file (default: ./train.xml)")
    p.add_argument("-o", "--output", default=".poppins", metavar="OUT_DIR",
                   help="output folder (default: ./.poppins)")
    p.add_argument("-s", "--seed", type=int, default=1337,
                   help="seed of the train/validation split and of training (default: 1337)")
    p.add_argument("--val-fraction", type=_fraction, default=None, metavar="F",
                   help="hold out round(F x groups) whole samples for validation instead of one "
                        "phrase variant per group")
    p.add_argument("--max-xml-mb", type=_positive, default=256, metavar="MB",
                   help="size limit of train.xml with its imports (default: 256)")
    p.add_argument("--data-only", action="store_true",
                   help="stop after the data stage (tokenizer, corpus files and manifest)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT_DIR/checkpoints/last.ckpt (refused if the data changed)")
    p.add_argument("-t", "--threads", type=int, default=None,
                   help="threads (default: the physical cores)")
    g = p.add_argument_group("model and run (override train.xml constants)")
    g.add_argument("--dim", type=int, help="embedding dimension (embedding-dim)")
    g.add_argument("--layers", type=int, help="transformer blocks (layers)")
    g.add_argument("--heads", type=int, help="attention heads (heads)")
    g.add_argument("--kv-heads", type=int, help="key/value heads for grouped-query attention")
    g.add_argument("--attention", choices=("mha", "mla"), help="mha or mla (latent attention)")
    g.add_argument("--context", type=int,
                   help="context length (default: max(256, the longest sample), up to 1024)")
    g.add_argument("--steps", type=int, help="optimizer steps (default: from --epochs)")
    g.add_argument("--epochs", type=float, help="passes over the training samples")
    g.add_argument("--batch-size", type=int, help="packed sequences per step")
    g.add_argument("--grad-accum", type=int, help="micro-batches per step")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    g.add_argument("--warmup-steps", type=int, help="learning-rate warm-up steps")
    g.add_argument("--schedule", choices=("cosine", "two-stage"), help="learning-rate schedule")
    g.add_argument("--val-interval", type=int, help="validation loss every N steps")
    g.add_argument("--aim-loss", type=float, help="stop when the validation loss reaches this")
    g.add_argument("--checkpoint-interval", type=int, help="checkpoint every N steps")
    g.add_argument("--float", dest="quantize", action="store_false", default=None,
                   help="train a float model (quantizers bypassed)")
    p.set_defaults(run=run)


#: flags that map one-to-one onto TrainConfig fields
_FIELDS = ("dim", "layers", "heads", "kv_heads", "attention", "context", "steps", "epochs",
           "batch_size", "grad_accum", "lr", "weight_decay", "warmup_steps", "schedule",
           "val_interval", "aim_loss", "checkpoint_interval", "quantize", "threads")


def run(args) -> int:
    if args.data_only:
        from ..datastage import prepare_data

        prepare_data(args.input, args.output, seed=args.seed, val_fraction=args.val_fraction,
                     max_xml_mb=args.max_xml_mb)
        return 0
    from ..training import train

    overrides = {f: getattr(args, f) for f in _FIELDS if getattr(args, f) is not None}
    result = train(args.input, args.output, seed=args.seed, val_fraction=args.val_fraction,
                   max_xml_mb=args.max_xml_mb, resume=args.resume, overrides=overrides)
    return {"SIGINT": 130, "SIGTERM": 143}.get(result.stopped, 0)
