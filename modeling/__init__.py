"""Model families. Each subfolder is self-contained and ships verbatim to the Hub."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel

from .gpt2.configuration_lrt_gpt2 import LRTGPT2Config
from .gpt2.modeling_lrt_gpt2 import LRTGPT2ForCausalLM
from .nugpt.configuration_nugpt import NuGPTConfig
from .nugpt.modeling_nugpt import NuGPTForCausalLM

# family name -> (config class, causal-LM class); the one place that maps names to classes.
MODEL_FAMILIES: dict[str, tuple[type[PreTrainedConfig], type[PreTrainedModel]]] = {
    "gpt2": (LRTGPT2Config, LRTGPT2ForCausalLM),
    "nugpt": (NuGPTConfig, NuGPTForCausalLM),
}


def get_family(name: str) -> tuple[type[PreTrainedConfig], type[PreTrainedModel]]:
    if name not in MODEL_FAMILIES:
        raise ValueError(f"model_family={name!r} is unknown; allowed values: {sorted(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[name]


def register_auto_classes() -> None:
    """Register every family with the Auto classes, so no remote code is needed where lrtransfer is installed."""
    for config_cls, model_cls in MODEL_FAMILIES.values():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
