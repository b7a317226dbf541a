"""Greedy answers of the training prompts, to compare an export with poppins itself.

The prompts are the data stage's own streams (``OUT/train_corpus.bin`` up to each sample's
boundary: ``<sample> [<system>..</system>] <prompt>..</prompt>``), so every runtime starts from
exactly the ids training used.  :func:`agreement` reports the share of prompts whose greedy
answer ids are equal and, for the others, the first differing position and token.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Sequence

from ..corpus import tokens as T


def training_prompts(out_dir, split: str = "train") -> List[List[int]]:
    """The distinct prompt streams of ``split``, in file order."""
    ids, index = T.read_bins(Path(out_dir), split)
    seen, out = set(), []
    for off, _count, boundary in index.tolist():
        p = [int(i) for i in ids[off // 4: off // 4 + boundary]]
        if tuple(p) not in seen:
            seen.add(tuple(p))
            out.append(p)
    return out


def poppins_greedy(engine, prompt: Sequence[int], max_new: int) -> List[int]:
    """Greedy answer ids through poppins' engine, up to and including a stop id."""
    import numpy as np
    sess = engine.session()
    logits = sess.forward(list(prompt))
    out: List[int] = []
    room = min(max_new, sess.context - len(prompt))
    while len(out) < room:
        t = int(np.argmax(logits))
        out.append(t)
        if t in T.STOP_IDS or len(out) >= room:
            break
        logits = sess.forward([t])
    return out


def agreement(ours: Sequence[Sequence[int]], theirs: Sequence[Sequence[int]]) -> Dict:
    """{"share", "equal", "total", "differ": [{"prompt", "position", "ours", "theirs"}]}."""
    differ = []
    for n, (a, b) in enumerate(zip(ours, theirs)):
        a, b = list(a), list(b)
        if a == b:
            continue
        pos = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        differ.append({"prompt": n, "position": pos,
                       "ours": a[pos] if pos < len(a) else None,
                       "theirs": b[pos] if pos < len(b) else None})
    total = len(ours)
    return {"share": (total - len(differ)) / total if total else 1.0,
            "equal": total - len(differ), "total": total, "differ": differ}


def describe(rep: Dict, what: str) -> str:
    lines = [f"{what}: greedy answers equal for {rep['equal']}/{rep['total']} training prompts "
             f"({100 * rep['share']:.1f} %)"]
    for d in rep["differ"]:
        lines.append(f"  prompt {d['prompt']}: first difference at answer token {d['position']}"
                     f" (poppins {d['ours']}, {what} {d['theirs']})")
    return "\n".join(lines)


def greedy_all(fn: Callable[[List[int]], List[int]], prompts) -> List[List[int]]:
    return [fn(p) for p in prompts]
