"""The knob table: every option of ``train``, defined once.

Each :class:`Knob` names its TrainConfig field (or ``train()`` argument), its train.xml
constant (current dialect ``<learning-rate>``; the early dialect's ``<constant
key="learning_rate">`` is the same name in snake_case), its command-line flags, its type,
range, default and help text.  Everything else is generated from this table:

* the train.xml constants check (:mod:`poppins.trainxml.constants`, FILE:LINE errors),
* :class:`poppins.training.TrainConfig` (a dataclass) and its validation,
* the check of ``poppins.train(..., overrides=...)`` (unknown keys and bad values refused
  before any work starts),
* the flags of ``python -m poppins train`` (:mod:`poppins.cli.train`),
* the README's ``train`` option table (``python -m poppins.knobs README.md`` rewrites it;
  a test fails when it drifts).

One rule per knob: a value the file refuses, the flag and the API refuse too, with the same
words.  Precedence: ``train`` flags (and ``overrides``) win over constants, constants over
the defaults here.
"""
from __future__ import annotations

import difflib
import math
import numbers
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .engine.attention import ATTENTION  # the attention types: their one registry

#: No whole-number knob may exceed this (they size memory or count loop iterations); the
#: memory-sizing ones have tighter bounds of their own below.
MAX_INT = (1 << 31) - 1

#: Knob scopes: a TrainConfig field, an argument of ``train()`` / the data stage, a constant
#: read by the data stage, or a constant accepted for compatibility that has no effect.
SCOPES = ("run", "config", "data", "compat")

#: Sections of ``train --help`` and of the README table, in order.
SECTIONS = {"run": "input, output and run",
            "config": "model and run (override train.xml constants)"}


@dataclass(frozen=True)
class Knob:
    name: str                         # dash-case name (the constant's name when it has one)
    kind: str                         # int | float | bool | enum | str | list
    default: Any = None
    help: str = ""
    scope: str = "config"
    attr: Optional[str] = None        # TrainConfig field / train() argument (None: constant only)
    constant: Optional[str] = None    # train.xml element (dash-case); early key in snake_case
    flags: Tuple[str, ...] = ()       # command-line flags of ``train``
    lo: Optional[float] = None        # range: lo <= x (lo < x when lo_open)
    lo_open: bool = False
    hi: Optional[float] = None        # x <= hi (x < hi when hi_open)
    hi_open: bool = False
    choices: Tuple[str, ...] = ()     # kind "enum"
    optional: bool = False            # None is allowed (its meaning is ``default_text``)
    flag_value: Any = None            # the flag takes no value and stores this one
    default_text: Optional[str] = None  # the default in words (help and README)
    metavar: Optional[str] = None
    early_keys: Tuple[str, ...] = ()  # extra early-dialect keys that name this constant
    section: str = ""                 # section of ``train --help`` (default: the scope)

    @property
    def cli_section(self) -> str:
        return self.section or self.scope

    @property
    def effect(self) -> bool:
        return self.scope != "compat"

    @property
    def early_key(self) -> Optional[str]:
        return self.constant.replace("-", "_") if self.constant else None

    # -- the one rule ------------------------------------------------------------------------
    def range_text(self) -> str:
        """The range in words, e.g. ``>= 1``, ``0 to 10``, ``> 0 and <= 10`` ('' if none)."""
        if self.kind == "enum":
            return " | ".join(self.choices)
        lo, hi = _num(self.lo), _num(self.hi)
        if self.lo is not None and self.hi is not None:
            if not self.lo_open and not self.hi_open:
                return f"{lo} to {hi}"
            return f"{'>' if self.lo_open else '>='} {lo} and {'<' if self.hi_open else '<='} {hi}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return ""

    def _range_problem(self, value, shown: str) -> Optional[str]:
        if self.kind == "int" and abs(value) > MAX_INT:
            return f"must be at most {MAX_INT}, got {shown[:40]}"
        lo_bad = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        hi_bad = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if not (lo_bad or hi_bad):
            return None
        lo, hi = _num(self.lo), _num(self.hi)
        if self.lo is not None and self.hi is not None:
            note = ""
            if self.lo_open and value == self.lo:
                note = f" ({lo} itself is excluded)"
            elif self.hi_open and value == self.hi:
                note = f" ({hi} itself is excluded)"
            return f"must be between {lo} and {hi}, got {shown}{note}"
        return f"must be {self.range_text()}, got {shown}"

    def parse(self, raw: str) -> Tuple[Any, Optional[str]]:
        """Text (a train.xml value or a flag's argument) -> (value, None) or (None, problem)."""
        text = raw.strip()
        if self.kind == "int":
            try:   # ASCII digits only ("²" is a digit to int()), and no 4,301-digit numbers
                value = int(text, 10) if text.isascii() and len(text) <= 40 else None
            except ValueError:
                value = None
            if value is None:
                return None, f"must be a whole number, got {raw[:40]!r}"
        elif self.kind == "float":
            try:
                value = float(text)
            except ValueError:
                return None, f"must be a number, got {raw!r}"
            if not math.isfinite(value):
                return None, f"must be a finite number, got {raw!r}"
        elif self.kind == "bool":
            if text in ("true", "1"):
                value = True
            elif text in ("false", "0"):
                value = False
            else:
                return None, f"must be true or false, got {raw!r}"
        elif self.kind == "enum":
            if text not in self.choices:
                return None, f"must be one of {', '.join(self.choices)}, got {raw!r}"
            value = text
        elif self.kind == "str":
            return raw, None
        else:  # lists are read element by element by the train.xml reader
            raise ValueError(f"knob {self.name}: a {self.kind} has no text form")
        problem = self._range_problem(value, text) if self.kind in ("int", "float") else None
        return (None, problem) if problem else (value, None)

    def check(self, value) -> Tuple[Any, Optional[str]]:
        """A Python value (API, JSON) -> (normalized value, None) or (None, problem)."""
        if value is None:
            return (None, None) if self.optional else (None, f"must be set, got None")
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                return None, f"must be a whole number, got {value!r}"
            value = int(value)
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                return None, f"must be a number, got {value!r}"
            value = float(value)
            if not math.isfinite(value):
                return None, f"must be a finite number, got {value!r}"
        elif self.kind == "bool":
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                return None, f"must be true or false, got {value!r}"
            value = bool(value)
        elif self.kind == "enum":
            if value not in self.choices:
                return None, f"must be one of {', '.join(self.choices)}, got {value!r}"
        elif self.kind == "str":
            if not isinstance(value, str):
                return None, f"must be a str, got {value!r}"
        elif self.kind == "list":
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                return None, f"must be a list of str, got {value!r}"
            return list(value), None
        if self.kind in ("int", "float"):
            problem = self._range_problem(value, repr(value))
            if problem:
                return None, problem
        return value, None

    # -- words for help and README -----------------------------------------------------------
    @property
    def cli_metavar(self) -> Optional[str]:
        """The flag's argument in ``--help`` and the README (None: the flag takes none)."""
        if self.flag_value is not None:
            return None
        if self.kind == "enum":
            return "{" + ",".join(self.choices) + "}"
        return self.metavar or {"int": "N", "float": "X"}.get(self.kind, "VALUE")

    def default_words(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if self.default is None or self.flag_value is not None:
            return ""
        return _num(self.default) if self.kind in ("int", "float") else str(self.default)


def _num(x) -> str:
    """A number as a person writes it: 10 not 10.0, 4e-3 as 0.004."""
    if x is None:
        return ""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return f"{x:g}" if isinstance(x, float) else str(x)


_K = Knob
#: The table.  Order: ``train --help`` and README order within a section; the ``config``
#: knobs in this order are TrainConfig's fields.
KNOBS: Tuple[Knob, ...] = (
    # -- run: arguments of train() / the data stage (not part of TrainConfig) ----------------
    _K("input", "str", "train.xml", "the train file (its imports are read too)", scope="run",
       attr="train_xml", flags=("-i", "--input"), metavar="TRAIN_XML",
       default_text="./train.xml"),
    _K("output", "str", ".poppins", "output folder", scope="run", attr="out_dir",
       flags=("-o", "--output"), metavar="OUT_DIR", default_text="./.poppins"),
    _K("val-fraction", "float", None, "hold out round(F x groups) whole samples for "
       "validation instead of one phrase variant per group", scope="run", attr="val_fraction",
       flags=("--val-fraction",), lo=0, hi=1, hi_open=True, optional=True, metavar="F",
       default_text="off"),
    _K("max-xml-mb", "float", 256.0, "size limit of train.xml with its imports", scope="run",
       attr="max_xml_mb", flags=("--max-xml-mb",), lo=0, lo_open=True, metavar="MB"),
    _K("outside-imports", "bool", True, "refuse imports outside train.xml's folder (by default "
       "each is allowed with a warning naming it)", scope="run", attr="allow_outside_imports",
       flags=("--no-outside-imports",), flag_value=False, default_text="allowed, warned"),
    _K("data-only", "bool", False, "stop after the data stage (tokenizer, corpus files and "
       "manifest)", scope="run", attr="data_only", flags=("--data-only",), flag_value=True),
    _K("resume", "bool", False, "continue from OUT_DIR/checkpoints/last.ckpt (refused if the "
       "data or an option other than -t changed)", scope="run", attr="resume", flags=("--resume",), flag_value=True),
    # -- config: TrainConfig fields -----------------------------------------------------------
    _K("embedding-dim", "int", 128, "model width (embedding dimension); a multiple of heads",
       attr="dim", constant="embedding-dim", flags=("--dim",), lo=8, hi=1 << 16),
    _K("layers", "int", 4, "transformer blocks", attr="layers", constant="layers",
       flags=("--layers",), lo=1, hi=1024),
    _K("heads", "int", 4, "attention heads (dim / heads must be even)", attr="heads",
       constant="heads", flags=("--heads",), lo=1, hi=1024),
    _K("kv-heads", "int", None, "key/value heads for grouped-query attention (heads must be "
       "a multiple)", attr="kv_heads", constant="kv-heads", flags=("--kv-heads",), lo=1, hi=1024,
       optional=True, default_text="= heads"),
    _K("attention", "enum", "mha", "mha (multi-head, optionally grouped-query) or mla "
       "(multi-head latent attention)", attr="attention", constant="attention",
       flags=("--attention",), choices=tuple(ATTENTION)),
    _K("quantize", "bool", True, "train without the ternary quantizers (a float model)",
       attr="quantize", flags=("--float",), flag_value=False),
    _K("context-length", "int", None, "context window in tokens; samples are packed into it",
       attr="context", constant="context-length", flags=("--context",), lo=8, hi=1 << 20,
       optional=True,
       default_text="max(256, longest sample), up to 1024"),
    _K("context-cap", "int", 1024, "the longest default context (when context is not set)",
       attr="context_cap", lo=8),
    _K("steps", "int", None, "planned optimizer steps (an upper bound when stop-when-learned)",
       attr="steps", constant="steps",
       flags=("--steps",), lo=1, optional=True, default_text="from epochs"),
    _K("epochs", "float", 80.0, "planned passes over the file's own training samples (when "
       "steps is not set; training stops earlier once the file is learned)",
       attr="epochs", constant="epochs", flags=("--epochs",), lo=0, lo_open=True),
    _K("min-steps", "int", 1000, "the fewest steps, also when the file is learned earlier "
       "(small files get enough)",
       attr="min_steps", constant="min-steps", flags=("--min-steps",), lo=1),
    _K("stop-when-learned", "bool", True, "train with no stop when learned: run every planned "
       "step", attr="stop_when_learned", constant="stop-when-learned",
       flags=("--no-stop-when-learned",), flag_value=False),
    _K("learned-margin", "float", 0.25, "once every training answer is reproduced by greedy "
       "decoding (checked every val-interval steps), train this fraction of the steps so far "
       "more, the learning rate annealed to its floor", attr="learned_margin",
       constant="learned-margin", flags=("--learned-margin",), lo=0, hi=10),
    _K("augment", "bool", True, "train on the file's samples only: no system-prompt copies, "
       "surface forms, synthetic conversations or off-topic refusals", attr="augment",
       constant="augment", flags=("--no-augment",), flag_value=False),
    _K("surface-forms", "int", None, "seeded surface variants (case, punctuation, typos, "
       "contractions, filler, asides, synonyms, dropped function words, keyword queries) added "
       "per training prompt (0: none)",
       attr="surface_forms", constant="surface-forms", flags=("--surface-forms",), lo=0, hi=64,
       optional=True, default_text="ceil(600 / training samples), 3 to 24"),
    _K("batch-size", "int", 6, "packed sequences per micro-batch", attr="batch_size",
       constant="batch-size", flags=("--batch-size",), lo=1, hi=1 << 16),
    _K("gradient-accumulation-steps", "int", 1, "micro-batches per optimizer step (per rank "
       "under mpirun)",
       attr="grad_accum", constant="gradient-accumulation-steps", flags=("--grad-accum",),
       lo=1),
    _K("learning-rate", "float", 4e-3, "peak learning rate (AdamW)", attr="lr",
       constant="learning-rate", flags=("--lr",), lo=0, lo_open=True, hi=10),
    _K("min-lr-ratio", "float", 0.1, "the final learning rate as a fraction of the peak",
       attr="min_lr_ratio", lo=0, hi=1),
    _K("warmup-steps", "int", 50, "linear learning-rate warm-up steps", attr="warmup_steps",
       constant="warmup-steps", flags=("--warmup-steps",), lo=0),
    _K("schedule", "enum", "cosine", "learning-rate schedule (two-stage: BitNet b1.58's)",
       attr="schedule", flags=("--schedule",), choices=("cosine", "two-stage")),
    _K("weight-decay", "float", 0.05, "AdamW weight decay", attr="weight_decay",
       constant="weight-decay", flags=("--weight-decay",), lo=0, hi=10),
    _K("beta1", "float", 0.9, "AdamW beta1", attr="beta1", lo=0, hi=1, hi_open=True),
    _K("beta2", "float", 0.99, "AdamW beta2", attr="beta2", lo=0, hi=1, hi_open=True),
    _K("eps", "float", 1e-8, "AdamW epsilon", attr="eps", lo=0, lo_open=True),
    _K("grad-clip", "float", 1.0, "gradient norm clip (0: off)", attr="grad_clip", lo=0),
    _K("loss-scale-response", "float", 1.0, "loss weight of answer tokens (text, line "
       "breaks, thoughts, tags)", attr="loss_scale_response", constant="loss-scale-response",
       lo=0),
    _K("loss-scale-source", "float", 0.2, "loss weight of tokens inside source ids",
       attr="loss_scale_source", constant="loss-scale-source", lo=0),
    _K("loss-scale-code", "float", 1.0, "loss weight of code blocks (tags included)",
       attr="loss_scale_code", constant="loss-scale-code", lo=0),
    _K("val-interval", "int", 100, "validation loss every N steps", attr="val_interval",
       constant="val-interval", flags=("--val-interval",), lo=1),
    _K("aim-loss", "float", None, "stop when the validation loss reaches this",
       attr="aim_loss", constant="aim-loss", flags=("--aim-loss",), lo=0, lo_open=True,
       optional=True, default_text="off"),
    _K("checkpoint-interval", "int", 200, "checkpoint every N steps",
       attr="checkpoint_interval", flags=("--checkpoint-interval",), lo=1),
    _K("log-interval", "int", 10, "a progress line every N steps (when not on a terminal)",
       attr="log_interval", lo=1),
    _K("seed", "int", 1337, "seed of the train/validation split and of training (same seed "
       "and threads, same bytes)", attr="seed", flags=("-s", "--seed"), lo=0, section="run"),
    _K("threads", "int", None, "threads (0: the default)", attr="threads",
       flags=("-t", "--threads"), lo=0, optional=True, metavar="N",
       default_text="physical cores (under mpirun: the rank's share)", section="run"),
    # -- data: constants read by the data stage ----------------------------------------------
    _K("bpe-vocab-size", "int", 8192, "total token ids: 125 special tokens + 256 bytes + "
       "requested tokens + merges", scope="data", constant="bpe-vocab-size", lo=381,
       hi=1 << 20),
    _K("bpe-min-merge-frequency", "int", 3, "stop merging when the most frequent pair occurs "
       "fewer times than this", scope="data", constant="bpe-min-merge-frequency", lo=0),
    _K("bpe-requested-tokens", "list", (), "strings that always become one token",
       scope="data", constant="bpe-requested-tokens", default_text="none"),
    # -- compat: the original's constants that mean nothing on a CPU-only trainer ------------
    _K("aim-train-gb", "float", scope="compat", constant="aim-train-gb", lo=0, lo_open=True),
    _K("aim-infer-gb", "float", scope="compat", constant="aim-infer-gb", lo=0, lo_open=True,
       early_keys=("aim_infer_f16_gb",)),
    _K("mixed-precision", "bool", scope="compat", constant="mixed-precision"),
    _K("activation-precision", "enum", scope="compat", constant="activation-precision",
       choices=("fp32", "int8")),
    _K("kv-cache-precision", "enum", scope="compat", constant="kv-cache-precision",
       choices=("int8", "int4", "fp8")),
    _K("rope-precision", "enum", scope="compat", constant="rope-precision",
       choices=("fp32", "fp16")),
    _K("num-workers", "int", scope="compat", constant="num-workers", lo=0),
    _K("use-flash-attention", "bool", scope="compat", constant="use-flash-attention"),
    _K("use-tensor-cores", "bool", scope="compat", constant="use-tensor-cores"),
) + tuple(
    _K(f"{fam}-{seg}", "float", scope="compat", constant=f"{fam}-{seg}", lo=0, **rng)
    for fam, rng in (("weight-decay", {}), ("dropout-rate", {"hi": 1, "hi_open": True}),
                     ("gradient-scale", {}), ("gradient-clip", {}))
    for seg in ("response", "source", "code"))

BY_NAME: Dict[str, Knob] = {k.name: k for k in KNOBS}
#: train.xml constant (dash-case) -> knob
BY_CONSTANT: Dict[str, Knob] = {k.constant: k for k in KNOBS if k.constant}
#: TrainConfig field -> knob, in field order
CONFIG: Dict[str, Knob] = {k.attr: k for k in KNOBS if k.scope == "config"}
#: early-dialect key -> constant
EARLY_KEYS: Dict[str, str] = dict(
    [(k.early_key, k.constant) for k in BY_CONSTANT.values()]
    + [(e, k.constant) for k in BY_CONSTANT.values() for e in k.early_keys])


def constant_for_key(key: str) -> Optional[str]:
    """The dash-case constant of an early-dialect snake_case key (None if unknown)."""
    return EARLY_KEYS.get(key)


# --------------------------------------------------------------------------- the API check
def _suggest(key: str) -> str:
    """' (did you mean 'epochs'?)' for a misspelled or differently spelled override key."""
    alias = {}
    for k in CONFIG.values():
        for spelling in (k.name, k.constant, k.early_key, *(f.lstrip("-") for f in k.flags)):
            if spelling:
                alias.setdefault(spelling, k.attr)
                alias.setdefault(spelling.replace("-", "_"), k.attr)
    if key in alias:
        return f" (did you mean {alias[key]!r}?)"
    close = difflib.get_close_matches(key, list(alias), n=1, cutoff=0.6)
    return f" (did you mean {alias[close[0]]!r}?)" if close else ""


def check_overrides(overrides: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``poppins.train(..., overrides=...)``: refuse unknown keys and bad values, before any
    work starts.  Keys are TrainConfig fields; values follow the same rule as the flags."""
    from .errors import PoppinsError

    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise PoppinsError(f"overrides must be a dict of TrainConfig fields, got "
                           f"{type(overrides).__name__}")
    run_args = {k.attr: k for k in KNOBS if k.scope == "run"}
    out = {}
    for key, value in overrides.items():
        knob = CONFIG.get(key) if isinstance(key, str) else None
        if knob is None:
            if key in run_args:
                raise PoppinsError(f"overrides: {key!r} is not a training knob; pass it as "
                                   f"poppins.train(..., {key}=...)")
            raise PoppinsError(f"overrides: unknown key {key!r}{_suggest(str(key))}; known: "
                               f"{', '.join(CONFIG)}")
        value, problem = knob.check(value)
        if problem:
            raise PoppinsError(f"overrides[{key!r}] {problem}")
        out[key] = value
    return out


# --------------------------------------------------------------------------- README table
README_BEGIN = "<!-- train options: generated from poppins/knobs.py by `python -m poppins.knobs README.md` -->"
README_END = "<!-- end of train options -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _option(k: Knob) -> str:
    flags = ", ".join(k.flags)
    return f"`{_cell(flags if k.cli_metavar is None else f'{flags} {k.cli_metavar}')}`"


def readme_table() -> str:
    """The README's ``train`` option table: the knobs with a flag, then the train.xml
    constants without one, then the fields only ``overrides`` sets."""
    rows = ["| option | train.xml constant | default | range | meaning |",
            "|---|---|---|---|---|"]
    shown = [k for section in SECTIONS for k in KNOBS if k.flags and k.cli_section == section]
    shown += [k for k in KNOBS if not k.flags and k.constant and k.effect]
    for k in shown:
        const = f"`<{k.constant}>`" if k.constant else ""
        rng = "" if k.kind == "enum" or k.flag_value is not None else k.range_text()
        rows.append(f"| {_option(k) if k.flags else ''} | {const} | {_cell(k.default_words())} "
                    f"| {_cell(rng)} | {_cell(k.help)} |")
    api = [k for k in CONFIG.values() if not k.flags and not k.constant]
    rows.append("")
    rows.append("Only through `poppins.train(..., overrides={...})` (TrainConfig fields): "
                + ", ".join(f"`{k.attr}` ({k.default_words()}, {k.range_text()})" for k in api)
                + ".  Accepted in train.xml for compatibility with the original, with no "
                "effect: " + ", ".join(f"`<{k.constant}>`" for k in KNOBS if not k.effect) + ".")
    return "\n".join(rows)


def readme_with_table(text: str) -> str:
    """``text`` (the README) with the part between the markers replaced by the table."""
    pattern = re.compile(re.escape(README_BEGIN) + r"\n.*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise ValueError("the README has no train options markers")
    return pattern.sub(lambda _m: f"{README_BEGIN}\n{readme_table()}\n{README_END}", text, 1)


def _main(argv: List[str]) -> int:
    if not argv:
        print(readme_table())
        return 0
    for path in argv:
        with open(path, encoding="utf-8") as f:
            old = f.read()
        new = readme_with_table(old)
        if new != old:
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write(new)
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
