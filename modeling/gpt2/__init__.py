"""GPT-2 with SP / μP / CompleteP (model_type "lrt_gpt2"); this folder ships verbatim to the Hub."""

from .configuration_lrt_gpt2 import LRTGPT2Config
from .modeling_lrt_gpt2 import LRTGPT2ForCausalLM, LRTGPT2Model, Parameterization

__all__ = ["LRTGPT2Config", "LRTGPT2ForCausalLM", "LRTGPT2Model", "Parameterization"]
