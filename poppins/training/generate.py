"""The test oracle: greedy decoding through the training forward pass (no KV cache).

:func:`greedy` is the one no-cache greedy loop of the package; tests use it as the oracle
(the engine's KV-cached answers must equal it) and to check training on its own: does the
model reproduce its training answers (:func:`exact_answer_rate`)?  The inference engine
answers prompts fast from the packed model file; this slower path uses the training model
directly.  Prompts are left-padded into one batch; the padding is a segment of its
own, so it is never attended to, and rotary embeddings depend only on relative positions, so
padding does not change the result.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..corpus import tokens as T
from ..corpus.tokens import STOP_IDS
from ..errors import PoppinsError
from ..special_tokens import SPECIAL_IDS as S


def greedy(model, prompts: Sequence[Sequence[int]], max_new: int = 256,
           batch_size: int = 64, stop_ids: Iterable[int] = STOP_IDS,
           slide: bool = False) -> List[List[int]]:
    """Greedy continuations of ``prompts`` (non-empty token id lists) by a
    poppins.model.Model, each up to and including the first id of ``stop_ids`` (default
    ``</ai>`` or ``</sample>``), ``max_new`` tokens, or the context end (as the engine
    stops).  With ``slide`` a continuation does not stop at the context end but goes on
    reading its last ``context_length`` tokens (a sliding window)."""
    stops = {int(t) for t in stop_ids}
    if any(len(p) == 0 for p in prompts):
        raise PoppinsError("greedy needs at least one prompt token")
    ctx = model.cfg.context_length
    out: List[List[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        seqs = [list(prompts[i]) for i in idx]
        done = [len(s) >= ctx and not slide for s in seqs]
        for _ in range(max_new):
            if all(done):
                break
            L = max(min(len(s), ctx) for s in seqs)
            tokens = np.zeros((len(seqs), L), dtype=np.int32)
            segments = np.zeros((len(seqs), L), dtype=np.int32)
            for r, s in enumerate(seqs):
                w = s[-ctx:]
                tokens[r, L - len(w):] = w
                segments[r, L - len(w):] = 1
            nxt = np.argmax(model.last_logits(tokens, segments), axis=1)
            for r, t in enumerate(nxt.tolist()):
                if done[r]:
                    continue
                seqs[r].append(t)
                out[idx[r]].append(t)
                if t in stops or (len(seqs[r]) >= ctx and not slide):
                    done[r] = True
    model.release_buffers()
    return out


def expected_answers(ids: np.ndarray, index: np.ndarray,
                     all_turns: bool = False) -> List[Tuple[List[int], List[int]]]:
    """(context ids, answer ids up to and including ``</ai>``) of every sample in the bins:
    the first turn only, or with ``all_turns`` every turn of a conversation, its context being
    the conversation so far up to that turn's ``</prompt>``."""
    pairs = []
    for off, count, bound in index.tolist():
        s = np.asarray(ids[off // 4: off // 4 + count]).tolist()
        start = bound
        while True:
            end = s.index(S["</ai>"], start) + 1
            pairs.append((s[:start], s[start:end]))
            if not all_turns or s[end] != S["<prompt>"]:
                break
            start = s.index(S["</prompt>"], end) + 1
    return pairs


def exact_answer_rate(model, out_dir, split: str = "train", limit: Optional[int] = None,
                      max_new: int = 256, all_turns: bool = False) -> Tuple[float, List[Dict]]:
    """Share of samples of ``split`` whose greedy answer equals the training answer exactly
    (with ``all_turns``: every turn of every conversation, replayed with its history)."""
    ids, index = T.read_bins(out_dir, split)
    pairs = expected_answers(ids, index, all_turns)
    seen, unique = set(), []
    for p, a in pairs:        # each distinct prompt once
        if tuple(p) not in seen:
            seen.add(tuple(p))
            unique.append((p, a))
    if limit:
        unique = unique[:limit]
    got = greedy(model, [p for p, _ in unique], max_new=max_new)
    misses = [{"prompt": p, "expected": a, "got": g} for (p, a), g in zip(unique, got) if g != a]
    return (1.0 - len(misses) / max(len(unique), 1)), misses
