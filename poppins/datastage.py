"""The data stage: train.xml -> samples -> tokenizer -> corpus files in the output folder.

    python -m poppins train -i train.xml -o .poppins --data-only

Everything is built in a staging folder inside the output folder and swapped in only when
the whole stage succeeded, so a failed run leaves the previous good output untouched.  The
swap replaces only the data stage's own files (never ``checkpoints/`` or ``model.poppins``);
``manifest.json`` goes last, and is removed first, so an interrupted swap never leaves a
manifest that describes files it does not match.  The same input and seed give byte-identical
files.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ._version import __version__
from .corpus import dump_samples_xml
from .corpus import tokens as T
from .errors import PoppinsError
from .fileio import sha256_file
from .export.template import set_in_tokenizer_config as set_chat_template
from .samples import DEFAULT_SEED, SampleSet, build_samples
from .samples.augment import augment as augment_samples, auto_surface_forms
from .trainxml import DEFAULT_MAX_XML_MB, TrainDoc, read_train_xml
from .trainxml.constants import SPECS

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "poppins-data"
MANIFEST_VERSION = 1
#: Every file the data stage owns in the output folder (manifest last).
DATA_FILES = ("train_corpus.xml", "val_corpus.xml", "tokenizer.json", "tokenizer_config.json",
              "train_corpus.bin", "train_index.bin", "val_corpus.bin", "val_index.bin", MANIFEST)
STAGING_PREFIX = ".staging-"
DEFAULT_VOCAB_SIZE = SPECS["bpe-vocab-size"].default                 # the knob table's
DEFAULT_MIN_MERGE_FREQUENCY = SPECS["bpe-min-merge-frequency"].default
#: The default context is at least this long, so several samples pack into one window; an
#: augmented sample longer than this and than the file's longest sample is not kept.
MIN_CONTEXT = 256


@dataclass
class DataResult:
    out_dir: Path
    doc: TrainDoc
    samples: SampleSet
    manifest: Dict
    files: List[str] = field(default_factory=list)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _constants_for_manifest(doc: TrainDoc) -> Dict:
    return {name: doc.constants[name].value for name in sorted(doc.constants)}


def _train_tokenizer(doc: TrainDoc, sset: SampleSet):
    from .tokenizer import Tokenizer

    def const(name, default):
        c = doc.constants.get(name)
        return (c.value, c.loc) if c else (default, None)

    requested, _ = const("bpe-requested-tokens", [])
    # duplicates dropped, order kept; then one token per source id (T.source_token)
    requested = list(dict.fromkeys(list(requested) + T.source_tokens(sset.train + sset.val)))
    vocab_size, loc = const("bpe-vocab-size", DEFAULT_VOCAB_SIZE)
    need = 125 + 256 + len(requested)
    if vocab_size < need:
        where = (loc.file, loc.line) if loc else (doc.files[0].display, 1)
        raise PoppinsError(f"bpe-vocab-size {vocab_size} is too small: the 125 special tokens, "
                           f"{len(requested)} requested tokens and 256 bytes need {need}", *where)
    min_freq, _ = const("bpe-min-merge-frequency", DEFAULT_MIN_MERGE_FREQUENCY)
    return Tokenizer.train(T.training_texts(sset.train), vocab_size=vocab_size,
                           min_frequency=min_freq, requested_tokens=requested)


def _sources(doc: TrainDoc) -> Dict:
    """The file's sources as the model file records them (id -> url, title)."""
    return {i: {"url": d.url, "title": d.title} for i, d in doc.definitions["source"].items()}


def _write(path: Path, data) -> None:
    mode = "w" if isinstance(data, str) else "wb"
    kwargs = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
    with open(path, mode, **kwargs) as f:
        f.write(data)


def _swap(staging: Path, out_dir: Path, produced: List[str]) -> None:
    manifest = out_dir / MANIFEST
    if manifest.exists():
        manifest.unlink()
    for name in DATA_FILES:
        if name == MANIFEST:
            continue
        src, dst = staging / name, out_dir / name
        if name in produced:
            os.replace(src, dst)
        elif dst.exists():
            dst.unlink()      # a file of an earlier run that this run does not produce
    os.replace(staging / MANIFEST, manifest)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def prepare_data(train_xml="train.xml", out_dir=".poppins", seed: int = DEFAULT_SEED,
                 val_fraction: Optional[float] = None, max_xml_mb: float = DEFAULT_MAX_XML_MB,
                 log: Optional[Callable[[str], None]] = print,
                 allow_outside_imports: bool = True,
                 surface_forms: Optional[int] = None,
                 augment: Optional[bool] = None) -> DataResult:
    """Run the data stage; raises PoppinsError (with FILE:LINE problems) on bad input.
    ``surface_forms``: surface variants per training prompt (None: the train.xml constant
    ``<surface-forms>`` or its default); ``augment``: False for the file's samples only (None:
    the constant ``<augment>`` or its default, on).
    ``allow_outside_imports=False`` refuses imports outside train.xml's folder (else each
    is a warning naming the path)."""
    say = log or (lambda _msg: None)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PoppinsError(f"output path {out_dir} exists and is not a folder")

    t0 = time.perf_counter()
    doc = read_train_xml(train_xml, max_xml_mb=max_xml_mb,
                         allow_outside_imports=allow_outside_imports)
    for w in doc.warnings:
        say(w)
    n_imports = len(doc.files) - 1
    n_defined = len(doc.samples)
    bs = doc.beyond_scope
    say(f"read     {doc.files[0].display}"
        + (f" + {n_imports} import{'s' if n_imports != 1 else ''}" if n_imports else "")
        + f" ({'/'.join(doc.dialects)} dialect): {n_defined} samples, {len(doc.phrases)} phrases"
        + (", beyond-scope" if bs else "")
        + f"  [{time.perf_counter() - t0:.2f} s]")
    ignored = sorted(n for n in doc.constants if not SPECS[n].effect)
    if ignored:
        say(f"note     constants with no effect in poppins (accepted for compatibility): "
            f"{', '.join(ignored)}")

    t1 = time.perf_counter()
    sset = build_samples(doc, seed=seed, val_fraction=val_fraction)
    for w in sset.warnings:
        say(w)
    rule = (f"val-fraction {val_fraction:g}" if val_fraction is not None
            else "one per group with variants")
    say(f"expand   {sset.originals} originals + {sset.variants} variants + {sset.beyond_scope} "
        f"beyond-scope = {sset.total} samples in {len(sset.groups)} groups -> train "
        f"{len(sset.train)}, validation {len(sset.val)} ({rule}, seed {seed})"
        f"  [{time.perf_counter() - t1:.2f} s]")
    if not sset.val:
        say("note     the validation set is empty: no sample has phrase variants. Add <phrases> "
            "or pass --val-fraction (e.g. 0.1) to hold out whole samples.")

    if surface_forms is None:
        c = doc.constants.get("surface-forms")
        surface_forms = c.value if c else auto_surface_forms(len(sset.train))
    if augment is None:
        c = doc.constants.get("augment")
        augment = c.value if c else SPECS["augment"].default

    t2 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(STAGING_PREFIX + "*"):   # left by a killed run
        shutil.rmtree(old, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    try:
        produced: List[str] = []
        tok = _train_tokenizer(doc, sset)      # the file's own texts only
        t3 = time.perf_counter() - t2
        t_aug = time.perf_counter()
        if augment:
            from .engine.render import render_answer
            sources = _sources(doc)
            extra, aug_counts = augment_samples(
                sset, seed, surface_forms,
                render=lambda items, thought: render_answer(tok, items, thought, sources)[0])
        else:
            extra, aug_counts = [], {"system": 0, "surface": 0, "chains": 0, "off_topic": 0}
        own_longest = max(int(T.encode_samples(part, tok)[1]["count"].max())
                          for part in (sset.train, sset.val) if part)
        limit = max(MIN_CONTEXT, own_longest)
        if extra:
            counts = T.encode_samples(extra, tok)[1]["count"]
            kept = [s for s, n in zip(extra, counts.tolist()) if n <= limit]
            for s, n in zip(extra, counts.tolist()):
                if n > limit:
                    fam = s.variant.split(":")[-1].replace("-", "_")
                    fam = {"conversation": "chains", "off_topic": "off_topic"}.get(fam, fam)
                    aug_counts[fam] -= 1
            extra = kept
        train_samples = list(sset.train) + extra
        say(f"augment  +{len(extra)} training samples: {aug_counts['system']} with other system "
            f"prompts, {aug_counts['surface']} surface forms ({surface_forms} per prompt), "
            f"{aug_counts['chains']} conversations, {aug_counts['off_topic']} off-topic "
            f"refusals  [{time.perf_counter() - t_aug:.2f} s]")
        for split, samples in (("train", train_samples), ("val", sset.val)):
            name = f"{split}_corpus.xml"
            _write(staging / name, dump_samples_xml(samples))
            produced.append(name)
        say(f"corpus   train_corpus.xml {_human((staging / 'train_corpus.xml').stat().st_size)}, "
            f"val_corpus.xml {_human((staging / 'val_corpus.xml').stat().st_size)}"
            f"  [{time.perf_counter() - t2:.2f} s]")

        tok.save(staging)
        set_chat_template(staging / "tokenizer_config.json", sset.default_system)
        produced += ["tokenizer.json", "tokenizer_config.json"]
        say(f"tokenizer {tok.vocab_size} ids: 125 special + {len(tok.requested_ids)} requested + "
            f"256 bytes + {tok.num_merges} merges ({tok.backend})"
            f"  [{t3:.2f} s]")

        t4 = time.perf_counter()
        token_stats = {}
        for split, samples in (("train", train_samples), ("val", sset.val)):
            ids, index = T.encode_samples(samples, tok)
            T.write_bins(staging / f"{split}_corpus.bin", staging / f"{split}_index.bin", ids, index)
            produced += [f"{split}_corpus.bin", f"{split}_index.bin"]
            token_stats[split] = {"tokens": int(len(ids)),
                                  "longest_sample": int(index["count"].max()) if len(index) else 0}
        longest = max(v["longest_sample"] for v in token_stats.values())
        say(f"tokens   train {token_stats['train']['tokens']:,}, validation "
            f"{token_stats['val']['tokens']:,}; longest sample {longest} tokens"
            f"  [{time.perf_counter() - t4:.2f} s]")

        base = doc.files[0].path.parent
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "poppins_version": __version__,
            "seed": seed,
            "val_fraction": val_fraction,
            "inputs": [{"file": os.path.relpath(f.path, base), "bytes": f.path.stat().st_size,
                        "sha256": sha256_file(f.path)} for f in doc.files],
            "dialects": doc.dialects,
            "samples": {"originals": sset.originals, "variants": sset.variants,
                        "beyond_scope": sset.beyond_scope, "groups": len(sset.groups),
                        "train": len(sset.train), "val": len(sset.val),
                        "augmented": dict(aug_counts, total=len(extra))},
            "surface_forms": surface_forms if augment else 0,
            "constants": _constants_for_manifest(doc),
            "tokenizer": {"vocab_size": tok.vocab_size, "merges": tok.num_merges,
                          "requested_tokens": list(tok.requested_tokens)},
            "tokens": token_stats,
            "corpus_format_version": T.CORPUS_FORMAT_VERSION,
            "index_format_version": T.INDEX_FORMAT_VERSION,
            "default_system": sset.default_system,
            "sources": _sources(doc),
            "files": {name: {"bytes": (staging / name).stat().st_size,
                             "sha256": sha256_file(staging / name)} for name in produced},
        }
        _write(staging / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        for name in produced + [MANIFEST]:
            with open(staging / name, "rb") as f:
                os.fsync(f.fileno())
        _swap(staging, out_dir, produced)
        _fsync_dir(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"wrote    {out_dir / MANIFEST} ({len(produced) + 1} files)  "
        f"[total {time.perf_counter() - t0:.2f} s]")
    return DataResult(out_dir=out_dir, doc=doc, samples=sset, manifest=manifest,
                      files=produced + [MANIFEST])
