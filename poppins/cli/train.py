"""``python -m poppins train``: from train.xml to a trained ternary model.

    python -m poppins train -i train.xml -o .poppins

The data stage (validate train.xml, expand samples, train the tokenizer, write the corpus)
runs first; ``--data-only`` stops there.  Problems in train.xml are printed as
``FILE:LINE: message`` (up to 20) with exit code 2, and the previous output folder is left
untouched.  Flags win over train.xml constants, constants over the defaults.  Ctrl+C or
SIGTERM write a checkpoint and stop; ``--resume`` continues from it.

The flags are generated from the knob table (poppins/knobs.py): the same names, ranges and
words as the train.xml constants and ``TrainConfig``.
"""
from __future__ import annotations

import argparse

from ..knobs import CONFIG, KNOBS, SECTIONS, Knob


def _type(knob: Knob):
    """argparse ``type``: the knob's own parser and range check."""
    def parse(text: str):
        value, problem = knob.parse(text)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value
    parse.__name__ = knob.kind
    return parse


def _help(knob: Knob) -> str:
    extra = []
    if knob.constant:
        extra.append(f"train.xml <{knob.constant}>")
    if knob.flag_value is None and knob.kind != "enum" and knob.range_text():
        extra.append(knob.range_text())
    if knob.default_words():
        extra.append(f"default: {knob.default_words()}")
    text = knob.help + (f" ({'; '.join(extra)})" if extra else "")
    return text.replace("%", "%%")


def _add(group, knob: Knob) -> None:
    # run options have their defaults here; knobs of TrainConfig default to None so that
    # train.xml constants apply unless a flag is given
    default = knob.default if knob.cli_section == "run" else None
    if knob.flag_value is not None:
        group.add_argument(*knob.flags, dest=knob.attr, action="store_const",
                           const=knob.flag_value, default=default, help=_help(knob))
        return
    group.add_argument(*knob.flags, dest=knob.attr, type=_type(knob), default=default,
                       metavar=knob.cli_metavar, help=_help(knob))


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model from train.xml (the data stage with --data-only)",
                       description=__doc__.split("\n\n")[0])
    for section, title in SECTIONS.items():
        group = p if section == "run" else p.add_argument_group(title)
        for knob in KNOBS:
            if knob.flags and knob.cli_section == section:
                _add(group, knob)
    p.set_defaults(run=run)


def run(args) -> int:
    if args.data_only:
        from ..datastage import prepare_data

        prepare_data(args.train_xml, args.out_dir, seed=args.seed,
                     val_fraction=args.val_fraction, max_xml_mb=args.max_xml_mb,
                     allow_outside_imports=args.allow_outside_imports,
                     surface_forms=args.surface_forms, augment=args.augment)
        return 0
    from ..training import train

    overrides = {name: getattr(args, name) for name, k in CONFIG.items()
                 if k.flags and getattr(args, name) is not None}
    result = train(args.train_xml, args.out_dir, seed=args.seed, val_fraction=args.val_fraction,
                   max_xml_mb=args.max_xml_mb, resume=args.resume, overrides=overrides,
                   allow_outside_imports=args.allow_outside_imports)
    return {"SIGINT": 130, "SIGTERM": 143}.get(result.stopped, 0)
