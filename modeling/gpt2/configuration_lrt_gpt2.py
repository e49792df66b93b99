"""Configuration of lrtransfer's GPT-2 with SP, μP and CompleteP parameterizations.

Self-contained (torch, transformers, stdlib only): this file ships verbatim next to the weights.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

PARAMETERIZATIONS = ("sp", "mup", "completep")


@strict
class LRTGPT2Config(PreTrainedConfig):
    r"""GPT-2 (learned positions, pre-LayerNorm, GELU-tanh MLP) with a width/depth parameterization.

    parameterization (`str`, defaults to `"sp"`):
        `"sp"` (standard), `"mup"` (μP in width) or `"completep"` (μP in width + depth, α = `depth_alpha`).
        The rules are in `modeling_lrt_gpt2.Parameterization`.
    base_hidden_size / base_num_layers (`int`):
        The base shape: width multiplier m_N = hidden_size / base_hidden_size, depth multiplier
        m_L = num_hidden_layers / base_num_layers. Ignored by `"sp"` except for the group spec's bookkeeping.
    base_head_dim (`int`, *optional*):
        d_h of the base model for μP's attention scale √d_h,base / d_h. `None` means this model's head dim
        (width grows by adding heads at a fixed head dim, so the scale is 1/√d_h).
    depth_alpha (`float`, defaults to 1.0):
        CompleteP's depth exponent α (residual branches are scaled by m_L^-α).
    input_multiplier / output_multiplier (`float`):
        α_in scales the token embedding; the logits are scaled by ω = α_out (SP) or α_out / m_N (μP, CompleteP).
    zero_init_lm_head (`bool`):
        Zero-initialize an untied lm_head (a common μP choice); not allowed with tied embeddings.
    """

    model_type = "lrt_gpt2"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 50257
    max_position_embeddings: int = 1024
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    layer_norm_epsilon: float = 1e-5
    bias: bool = True
    initializer_range: float = 0.02
    parameterization: str = "sp"
    base_hidden_size: int = 768
    base_num_layers: int = 12
    base_head_dim: int | None = None
    depth_alpha: float = 1.0
    input_multiplier: float = 1.0
    output_multiplier: float = 1.0
    zero_init_lm_head: bool = False
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self._check()
        super().__post_init__(**kwargs)

    def _check(self) -> None:
        """Reject bad shapes and multipliers at construction, naming the field and the allowed values."""
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization={self.parameterization!r} is unknown; allowed values: {list(PARAMETERIZATIONS)}"
            )
        for name in (
            "vocab_size",
            "max_position_embeddings",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "base_hidden_size",
            "base_num_layers",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} is invalid; allowed values: integers > 0")
        for name in ("initializer_range", "depth_alpha", "input_multiplier", "output_multiplier", "layer_norm_epsilon"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"{name}={value!r} is invalid; allowed values: finite numbers > 0")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}; "
                "allowed values: hidden_size a multiple of num_attention_heads"
            )
        if self.base_head_dim is not None and (isinstance(self.base_head_dim, bool) or self.base_head_dim <= 0):
            raise ValueError(f"base_head_dim={self.base_head_dim!r} is invalid; allowed values: None or integers > 0")
        base_head_dim = self.base_head_dim or self.head_dim
        if self.parameterization != "sp" and self.base_hidden_size % base_head_dim:
            raise ValueError(
                f"base_hidden_size={self.base_hidden_size} is not a multiple of the base head dim {base_head_dim} "
                "(base_head_dim, or hidden_size // num_attention_heads when unset); allowed values: multiples of it"
            )
        if self.zero_init_lm_head and self.tie_word_embeddings:
            raise ValueError(
                "zero_init_lm_head=True needs an untied lm_head; allowed values: zero_init_lm_head=False, "
                "or tie_word_embeddings=False"
            )

    @property
    def width_mult(self) -> float:
        """m_N = d / d_base."""
        return self.hidden_size / self.base_hidden_size

    @property
    def depth_mult(self) -> float:
        """m_L = L / L_base."""
        return self.num_hidden_layers / self.base_num_layers

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


__all__ = ["LRTGPT2Config"]
