"""The AIRA-MoE peft method: config, layer, tuner model, and its registration with peft."""

from .config import AiraMoeConfig
from .layer import AiraMoeLayer, Linear
from .model import AiraMoeModel
from .registration import register_with_peft

register_with_peft()

__all__ = ["AiraMoeConfig", "AiraMoeLayer", "AiraMoeModel", "Linear", "register_with_peft"]
