"""The ternary transformer (BitNet b1.58 QAT) in NumPy + Cython.

    from poppins.model import ModelConfig, Model, AdamW
    cfg = ModelConfig(vocab_size=381, dim=128, layers=4, heads=4, context_length=64)
    model = Model(cfg, seed=1, threads=2)
    opt = AdamW(model, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    loss = model.loss_and_grad(tokens, targets, mask=mask, weights=weights, segments=segs)
    opt.step()
"""
from ..engine.config import ModelConfig
from ..numerics import rope_tables
from .model import Model, param_shapes, segment_starts
from .optim import AdamW, adamw_step

__all__ = ["ModelConfig", "Model", "AdamW", "adamw_step", "param_shapes", "rope_tables",
           "segment_starts"]
