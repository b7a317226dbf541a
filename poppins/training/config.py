"""TrainConfig: the single source of training hyper-parameters, saved as JSON with every
checkpoint.  ``train`` flags win over train.xml constants, and constants over these defaults.

The defaults train the built-in bootstrap example to reproduce its answers in a few minutes
on two cores: a small model (d=128, 4 layers, about 1M parameters), samples packed into
windows of at least 256 tokens (more when the longest sample needs it), 40 epochs, and a
cosine schedule with a high peak learning rate (ternary weights need larger steps than float
ones).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional

from ..errors import PoppinsError

#: train.xml constant -> TrainConfig field (constants of the same meaning as the flags).
CONSTANT_FIELDS = {
    "embedding-dim": "dim", "layers": "layers", "heads": "heads", "kv-heads": "kv_heads",
    "attention": "attention", "context-length": "context", "steps": "steps", "epochs": "epochs",
    "batch-size": "batch_size", "learning-rate": "lr", "weight-decay": "weight_decay",
    "warmup-steps": "warmup_steps", "val-interval": "val_interval", "aim-loss": "aim_loss",
    "gradient-accumulation-steps": "grad_accum", "loss-scale-response": "loss_scale_response",
    "loss-scale-source": "loss_scale_source", "loss-scale-code": "loss_scale_code",
}


@dataclass
class TrainConfig:
    # model shape (vocab size and context come from the data unless set)
    dim: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: Optional[int] = None
    attention: str = "mha"
    quantize: bool = True
    context: Optional[int] = None     # None: max(256, longest sample), up to context_cap
    context_cap: int = 1024
    # run length
    steps: Optional[int] = None       # None: from epochs
    epochs: float = 40.0
    batch_size: int = 6
    grad_accum: int = 1
    # optimizer and schedule
    lr: float = 4e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    schedule: str = "cosine"          # cosine | two-stage (BitNet b1.58)
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0
    # loss weights (decisions.md: response / source / code)
    loss_scale_response: float = 1.0
    loss_scale_source: float = 0.2
    loss_scale_code: float = 1.0
    # loop
    val_interval: int = 100
    aim_loss: Optional[float] = None
    checkpoint_interval: int = 200
    log_interval: int = 10
    seed: int = 1337
    threads: Optional[int] = None

    def validate(self) -> "TrainConfig":
        def need(cond, msg):
            if not cond:
                raise PoppinsError(msg)
        for name in ("dim", "layers", "heads", "batch_size", "grad_accum", "val_interval",
                     "checkpoint_interval", "log_interval", "context_cap"):
            need(int(getattr(self, name)) >= 1, f"{name} must be at least 1")
        need(self.dim % self.heads == 0, f"dim {self.dim} must be a multiple of heads {self.heads}")
        need((self.dim // self.heads) % 2 == 0, "dim / heads must be even (rotary embeddings)")
        if self.kv_heads is not None:
            need(self.kv_heads >= 1 and self.heads % self.kv_heads == 0,
                 f"heads {self.heads} must be a multiple of kv-heads {self.kv_heads}")
        need(self.attention in ("mha", "mla"), "attention must be mha or mla")
        need(self.schedule in ("cosine", "two-stage"), "schedule must be cosine or two-stage")
        need(self.context is None or self.context >= 8, "context must be at least 8")
        need(self.steps is None or self.steps >= 1, "steps must be at least 1")
        need(self.epochs > 0, "epochs must be positive")
        need(0 < self.lr <= 10, "learning rate must be in (0, 10]")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]")
        need(self.warmup_steps >= 0 and self.weight_decay >= 0 and self.grad_clip >= 0,
             "warmup-steps, weight-decay and grad-clip must not be negative")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "betas must be in [0, 1)")
        for name in ("loss_scale_response", "loss_scale_source", "loss_scale_code"):
            need(getattr(self, name) >= 0, f"{name} must not be negative")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known}).validate()

    def with_constants(self, constants: Dict[str, Any]) -> "TrainConfig":
        """A copy with train.xml constants applied (only fields the user did not set)."""
        d = self.to_dict()
        for const, fld in CONSTANT_FIELDS.items():
            if const in constants:
                d[fld] = constants[const]
        return TrainConfig.from_dict(d)
