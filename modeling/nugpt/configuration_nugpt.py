"""Configuration of nGPT / νGPT, the normalized transformer (Loshchilov et al. 2024, arXiv 2410.01131).

Every exponent and constant of the νGPT parameterization (arXiv 2604.27077) is a field here, with the
paper's values as defaults, so a study can vary them without touching the model code. The rules that
turn these fields into init values and learning-rate multipliers live in `modeling_nugpt.py`
(`parameterization_rules`), the one place that defines them.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

PARAMETERIZATIONS = ("ngpt", "nugpt")


@strict
class NuGPTConfig(PreTrainedConfig):
    r"""
    Args:
        vocab_size: tokens in the vocabulary (rows of `embed_tokens`, `lm_head` and the logit scale s_z).
        hidden_size: d; every hidden state lives on the unit sphere in R^d.
        intermediate_size: d_ff of the SwiGLU MLP; `None` means 4·d.
        num_hidden_layers: L.
        num_attention_heads: H; the head size d/H must be even (RoPE).
        max_position_embeddings: the longest context the model is meant for (RoPE has no table to outgrow).
        rope_theta: RoPE base (Llama's rotate-half convention).
        parameterization: "ngpt" (the reference constants of NVIDIA/ngpt) or "nugpt" (width/depth/horizon
            transfer).
        base_hidden_size, base_num_layers: d_base and L_base; m_N = d/d_base and m_L = L/L_base. The defaults
            are the paper's base shape (10 heads of 102, 10 layers).
        initializer_range: std of the Gaussian draw that is projected onto the sphere (the projection
            removes the scale, so only the direction of the draw matters).
        tie_word_embeddings: must stay False, nGPT has separate input and output embeddings.
        alpha_init: effective init of the eigen learning rates α_A, α_M at base depth.
        alpha_depth_exponent: νGPT divides `alpha_init` by m_L to this power.
        qk_scale_init: effective init of s_qk.
        mlp_scale_init: effective init (and scale) of s_u and s_ν.
        rescaler_scale: νGPT's storage scale of α, s_qk and s_z (nGPT uses 1/√d).
        logit_scale_width_exponent: νGPT initializes s_z at m_N to this power.
        embedding_lr_width_exponent, hidden_lr_width_exponent, lm_head_lr_width_exponent: νGPT multiplies
            the LR of `embed_tokens`, the block matrices and `lm_head` by m_N to minus these powers.
        lm_head_lr_mult: c_out, νGPT's extra LR factor on `lm_head`.
        horizon_lr_exponent: νGPT multiplies every LR by m_data to minus this power.
        adam_eps: the absolute Adam ε that νGPT's groups request.
    """

    model_type = "nugpt"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 50304
    hidden_size: int = 1020
    intermediate_size: int | None = None
    num_hidden_layers: int = 10
    num_attention_heads: int = 10
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    parameterization: str = "nugpt"
    base_hidden_size: int = 1020
    base_num_layers: int = 10
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # νGPT constants and exponents (DESIGN §2.2); nGPT ignores all but alpha_init, qk_scale_init, mlp_scale_init.
    alpha_init: float = 0.05
    alpha_depth_exponent: float = 1.0
    qk_scale_init: float = 1.0
    mlp_scale_init: float = 1.0
    rescaler_scale: float = 0.03
    logit_scale_width_exponent: float = 0.5
    embedding_lr_width_exponent: float = 0.5
    hidden_lr_width_exponent: float = 0.75
    lm_head_lr_width_exponent: float = 0.75
    lm_head_lr_mult: float = 0.5
    horizon_lr_exponent: float = 1.0 / 3.0
    adam_eps: float = 1e-16

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self._check_fields()
        super().__post_init__(**kwargs)

    def _check_fields(self) -> None:
        """Reject bad values up front, naming the field and what it accepts."""
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization={self.parameterization!r} is not supported; allowed values: {list(PARAMETERIZATIONS)}"
            )
        if self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings=True is not supported; allowed values: [False] (nGPT is untied)")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "base_hidden_size",
            "base_num_layers",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} is invalid; allowed values: a positive integer")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must divide hidden_size={self.hidden_size}; "
                f"allowed values: divisors of {self.hidden_size}"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(
                f"hidden_size / num_attention_heads = {self.hidden_size // self.num_attention_heads} is odd; "
                "allowed values: an even head size (RoPE rotates pairs)"
            )
        for name in ("rope_theta", "initializer_range", "alpha_init", "qk_scale_init", "mlp_scale_init",
                     "rescaler_scale", "lm_head_lr_mult", "adam_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}={value!r} is invalid; allowed values: a finite number > 0")
        for name in ("alpha_depth_exponent", "logit_scale_width_exponent", "embedding_lr_width_exponent",
                     "hidden_lr_width_exponent", "lm_head_lr_width_exponent", "horizon_lr_exponent"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} is invalid; allowed values: a finite number")

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


__all__ = ["NuGPTConfig"]
