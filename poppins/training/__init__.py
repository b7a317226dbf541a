"""Training: config, packed batches, schedules, checkpoints, the loop.

    from poppins.training import train
    result = train("train.xml", ".poppins", overrides={"steps": 500})
"""
from .config import TrainConfig
from .trainer import TrainResult, evaluate, load_trained, train

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "load_trained"]
