"""``python -m poppins train``: validate train.xml, expand its samples and write the corpus.

    python -m poppins train -i train.xml -o .poppins --data-only

Problems in train.xml are printed as ``FILE:LINE: message`` (up to 20) with exit code 2, and
the previous output folder is left untouched.
"""
from __future__ import annotations

import argparse

from ..errors import PoppinsError


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
                   help="stop after the data stage (corpus files and manifest)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..datastage import prepare_data

    if not args.data_only:
        raise PoppinsError("this version of poppins has no model trainer yet; "
                           "run the data stage with --data-only")
    prepare_data(args.input, args.output, seed=args.seed, val_fraction=args.val_fraction,
                 max_xml_mb=args.max_xml_mb)
    return 0
