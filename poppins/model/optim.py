"""AdamW over the model's flat parameter buffer (fused kernel, PyTorch's update formula)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import kernels as K


def adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, threads=1) -> None:
    """One AdamW update in place on flat arrays (see :func:`poppins.model.reference.adamw`)."""
    K.adamw(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, threads)


class AdamW:
    """AdamW for a :class:`~poppins.model.model.Model`: weight decay on the matrices
    (embedding, BitLinear weights, head), none on the norm gains.

    ``opt.step(lr=None, weight_decay=None)`` applies one update from ``model.flat_grads``
    (the trainer clips / scales the gradients before); ``state_dict()`` /
    ``load_state_dict()`` for checkpoints.
    """

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.1):
        self.model = model
        self.lr = float(lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.m = np.zeros_like(model.flat_params)
        self.v = np.zeros_like(model.flat_params)
        self.t = 0

    def step(self, lr: Optional[float] = None, weight_decay: Optional[float] = None) -> None:
        lr = self.lr if lr is None else float(lr)
        wd = self.weight_decay if weight_decay is None else float(weight_decay)
        self.t += 1
        mdl = self.model
        for sl, decay in zip(mdl.decay_slices, (wd, 0.0)):
            if sl.stop > sl.start:
                K.adamw(mdl.flat_params[sl], mdl.flat_grads[sl], self.m[sl], self.v[sl], lr,
                        self.beta1, self.beta2, self.eps, decay, self.t, mdl.threads)

    def state_dict(self):
        return {"m": self.m.copy(), "v": self.v.copy(), "t": self.t}

    def load_state_dict(self, state) -> None:
        self.m[...] = state["m"]
        self.v[...] = state["v"]
        self.t = int(state["t"])
