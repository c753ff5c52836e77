"""The adder model and its plain PyTorch training loop. Only ``tune_adapter`` imports Ray."""
from .config import ConfigError, TrainConfig, field_specs
from .loop import CheckpointError, load_checkpoint, load_model, save_checkpoint, train
from .model import AdderNet

__all__ = ["AdderNet", "CheckpointError", "ConfigError", "TrainConfig", "field_specs", "load_checkpoint",
           "load_model", "save_checkpoint", "train"]
