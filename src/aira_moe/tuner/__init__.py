"""The AIRA-MoE peft method (config -> layer -> model), registered with peft here, once.

After this import, peft's own `get_peft_model`, `save_pretrained`, `PeftModel.from_pretrained` and
`merge_and_unload` handle `AIRA_MOE` adapters in this process, and the FSDP wrap policy the HF Trainer takes
from peft wraps their layers (`fsdp.py`).
"""

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import PeftType, register_peft_method

from .config import AiraMoeConfig
from .fsdp import extend_peft_fsdp_policy
from .layer import AiraMoeLayer, Linear
from .model import AiraMoeModel
from .peft_type import METHOD_NAME, PEFT_TYPE, PREFIX

if PeftType(PEFT_TYPE) not in PEFT_TYPE_TO_TUNER_MAPPING:
    register_peft_method(name=METHOD_NAME, config_cls=AiraMoeConfig, model_cls=AiraMoeModel, prefix=PREFIX)
extend_peft_fsdp_policy()

__all__ = ["AiraMoeConfig", "AiraMoeLayer", "AiraMoeModel", "Linear"]
