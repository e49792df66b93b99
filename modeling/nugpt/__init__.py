"""nGPT / νGPT: the normalized transformer with a width / depth / horizon parameterization."""

from .configuration_nugpt import NuGPTConfig
from .modeling_nugpt import NuGPTForCausalLM, NuGPTModel, NuGPTPreTrainedModel, parameterization_rules

__all__ = ["NuGPTConfig", "NuGPTForCausalLM", "NuGPTModel", "NuGPTPreTrainedModel", "parameterization_rules"]
