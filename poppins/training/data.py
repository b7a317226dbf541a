"""Batches from the corpus bins: whole samples packed into context windows.

Every epoch visits the training samples in a seeded order (``random.Random`` seeded with the
run seed and the epoch, stable across Python versions) and packs them first-fit, in that
order, into rows of ``context`` tokens.  A sample never spans two rows, and samples packed
into one row do not attend to each other (each gets its own segment id; the padding too).
A step takes the next ``batch_size`` rows, continuing into the next epoch when one ends, so
the position in the data is just (epoch, row): that is what a checkpoint records.

Targets are the next tokens.  The loss mask is 1 for targets from the index's boundary (the
first token after ``</prompt>``) to ``</sample>`` inclusive, except the later prompts of a
conversation; the weight of each target is the loss scale of its segment (source ids, code
blocks, everything else).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from ..corpus import tokens as T

PAD_ID = 0   # <unknown>; never a target, never attended to
LOOKBACK = 32


@dataclass
class Batch:
    tokens: np.ndarray    # int32 [B, T]
    targets: np.ndarray   # int32 [B, T], -1 where there is no target
    mask: np.ndarray      # float32 [B, T]
    weights: np.ndarray   # float32 [B, T]
    segments: np.ndarray  # int32 [B, T]
    real_tokens: int      # tokens that are not padding


class PackedSamples:
    """Samples of one split (from the bins), packed into rows of ``context`` tokens."""

    def __init__(self, ids: np.ndarray, index: np.ndarray, context: int,
                 scales=(1.0, 0.2, 1.0)):
        self.ids = ids
        self.context = context
        starts = (index["offset"] // 4).astype(np.int64)
        counts = index["count"].astype(np.int64)
        keep = counts <= context
        #: positions (in the split) of samples longer than the context: skipped
        self.too_long = np.flatnonzero(~keep)
        self.too_long_counts = counts[~keep]
        self.starts = starts[keep]
        self.counts = counts[keep]
        self.bounds = index["boundary"].astype(np.int64)[keep]
        self.scales = np.asarray(tuple(scales) + (0.0,), dtype=np.float32)  # + SEG_PROMPT
        self._rows_cache: Tuple[int, List[np.ndarray]] = (-1, [])

    def __len__(self) -> int:
        return len(self.counts)

    @property
    def tokens(self) -> int:
        return int(self.counts.sum())

    def rows(self, order: np.ndarray) -> List[np.ndarray]:
        """First-fit packing of samples (in ``order``) into rows; each row: sample positions.
        Only the last ``LOOKBACK`` rows are candidates, which keeps packing linear in the
        number of samples while leaving little padding."""
        rows: List[List[int]] = []
        room: List[int] = []
        for s in order.tolist():
            n = int(self.counts[s])
            first = max(0, len(rows) - LOOKBACK)
            for r in range(first, len(rows)):
                if n <= room[r]:
                    rows[r].append(s)
                    room[r] -= n
                    break
            else:
                rows.append([s])
                room.append(self.context - n)
        return [np.asarray(r, dtype=np.int64) for r in rows]

    def fill(self, rows: List[np.ndarray]) -> Batch:
        """Arrays for a batch of packed rows."""
        B, Tn = len(rows), self.context
        tokens = np.full((B, Tn), PAD_ID, dtype=np.int32)
        targets = np.full((B, Tn), -1, dtype=np.int32)
        mask = np.zeros((B, Tn), dtype=np.float32)
        weights = np.zeros((B, Tn), dtype=np.float32)
        segments = np.zeros((B, Tn), dtype=np.int32)
        real = 0
        for b, row in enumerate(rows):
            o = 0
            for k, s in enumerate(row.tolist()):
                n, start, bound = int(self.counts[s]), int(self.starts[s]), int(self.bounds[s])
                seq = np.asarray(self.ids[start:start + n], dtype=np.int32)
                tokens[b, o:o + n] = seq
                targets[b, o:o + n - 1] = seq[1:]
                # target j+1 is learned when j+1 >= boundary
                mask[b, o + bound - 1:o + n - 1] = 1.0
                labels = T.segment_labels(seq[1:])
                weights[b, o:o + n - 1] = self.scales[labels]
                mask[b, o:o + n - 1] *= labels != T.SEG_PROMPT   # later turns' prompts
                segments[b, o:o + n] = k
                o += n
                real += n
            segments[b, o:] = len(row)   # padding: a segment of its own
        weights *= mask
        return Batch(tokens, targets, mask, weights, segments, real)


class EpochStream:
    """The training rows, epoch after epoch, in a seeded order; position = (epoch, row)."""

    def __init__(self, packed: PackedSamples, seed: int):
        self.packed = packed
        self.seed = seed
        self._epoch = -1
        self._rows: List[np.ndarray] = []

    def epoch_rows(self, epoch: int) -> List[np.ndarray]:
        if epoch != self._epoch:
            order = list(range(len(self.packed)))
            random.Random(f"poppins-epoch:{self.seed}:{epoch}").shuffle(order)
            self._rows = self.packed.rows(np.asarray(order, dtype=np.int64))
            self._epoch = epoch
        return self._rows

    def take(self, epoch: int, row: int, n: int) -> Tuple[List[np.ndarray], int, int]:
        """``n`` rows starting at (epoch, row); returns them and the position after them."""
        out: List[np.ndarray] = []
        while len(out) < n:
            rows = self.epoch_rows(epoch)
            need = n - len(out)
            out += rows[row:row + need]
            row += need
            if row >= len(rows):
                epoch, row = epoch + 1, 0
        return out, epoch, row


def batches_in_order(packed: PackedSamples, batch_size: int):
    """Every sample once, in file order (validation): yields Batch."""
    rows = packed.rows(np.arange(len(packed), dtype=np.int64))
    for i in range(0, len(rows), batch_size):
        yield packed.fill(rows[i:i + batch_size])
