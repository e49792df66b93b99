"""lrtransfer's GPT-2 with SP, μP and CompleteP parameterizations (DESIGN §2.1).

Self-contained (torch, transformers, stdlib and `.configuration_lrt_gpt2` only): `save_pretrained` copies
this file next to the weights, so the folder loads with `trust_remote_code=True` anywhere.

Every width/depth rule — init stds, forward multipliers and the per-group LR / weight-decay / ε
multipliers — lives in `Parameterization` below; `LRTGPT2ForCausalLM.param_groups()` turns it into
the optimizer group spec. Nothing else in the project matches parameter names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_lrt_gpt2 import LRTGPT2Config

# Optimizer groups of the spec: name -> role (CONTRACTS.md). The names are the same for every parameterization,
# so metrics like "lr/hidden_matrix" compare across runs.
GROUP_ROLES: dict[str, str] = {
    "embedding": "embedding",  # wte, wpe
    "hidden_matrix": "matrix",  # qkv, attention out, fc, mlp out
    "hidden_vector": "vector",  # block biases and block LayerNorms
    "final_norm": "vector",  # ln_f
    "lm_head": "lm_head",  # untied output matrix
}


@dataclass(frozen=True)
class Parameterization:
    """The DESIGN §2.1 table for one config: the single source of truth for SP / μP / CompleteP.

    m_N = d / d_base, m_L = L / L_base, σ = initializer_range, α = depth_alpha.
    Adam ε: the 1/m_N factor is the fan-in of hidden matrices; the CompleteP depth factor m_L^-α applies to
    every block parameter (matrices, biases, LayerNorms), because their gradients carry the residual multiplier.
    """

    name: str
    m_n: float
    m_l: float
    alpha: float
    sigma: float
    num_layers: int
    head_dim: int
    base_head_dim: int
    input_mult: float
    base_output_mult: float
    zero_init_lm_head: bool

    @classmethod
    def from_config(cls, config: LRTGPT2Config) -> Parameterization:
        head_dim = config.hidden_size // config.num_attention_heads
        return cls(
            name=config.parameterization,
            m_n=config.hidden_size / config.base_hidden_size,
            m_l=config.num_hidden_layers / config.base_num_layers,
            alpha=float(config.depth_alpha),
            sigma=float(config.initializer_range),
            num_layers=config.num_hidden_layers,
            head_dim=head_dim,
            base_head_dim=config.base_head_dim or head_dim,
            input_mult=float(config.input_multiplier),
            base_output_mult=float(config.output_multiplier),
            zero_init_lm_head=config.zero_init_lm_head,
        )

    # ---- init stds, by init key (set on each leaf module as `_lrt_init`) ----
    def init_std(self, key: str) -> float:
        """Init std of the weight of a leaf module tagged `key`; biases are always zero, LayerNorms (1, 0)."""
        if key == "embedding":
            return self.sigma
        if key == "hidden":
            return self.sigma if self.name == "sp" else self.sigma / math.sqrt(self.m_n)
        if key == "residual_out":
            if self.name == "sp":
                return self.sigma / math.sqrt(2 * self.num_layers)
            return self.sigma / math.sqrt(self.m_n)
        if key == "lm_head":
            return 0.0 if self.zero_init_lm_head else self.sigma
        raise ValueError(f"init key {key!r} is unknown; allowed values: embedding, hidden, residual_out, lm_head")

    # ---- forward multipliers ----
    @property
    def residual_mult(self) -> float:
        """r: CompleteP scales each residual branch by m_L^-α."""
        return self.m_l**-self.alpha if self.name == "completep" else 1.0

    @property
    def attn_scale(self) -> float:
        """Attention logit scale: 1/√d_h (SP); √d_h,base / d_h (μP, CompleteP)."""
        if self.name == "sp":
            return self.head_dim**-0.5
        return math.sqrt(self.base_head_dim) / self.head_dim

    @property
    def output_mult(self) -> float:
        """ω on the final hidden state (equivalently the logits): α_out (SP); α_out / m_N (μP, CompleteP)."""
        return self.base_output_mult if self.name == "sp" else self.base_output_mult / self.m_n

    # ---- optimizer multipliers: group name -> (lr_mult, weight_decay_mult, eps_mult) ----
    def group_multipliers(self) -> dict[str, tuple[float, float, float]]:
        m_n, m_l, a = self.m_n, self.m_l, self.alpha
        if self.name == "sp":
            matrix, vector = (1.0, 1.0, 1.0), (1.0, 0.0, 1.0)
        elif self.name == "mup":
            matrix, vector = (1.0 / m_n, m_n, 1.0 / m_n), (1.0, 0.0, 1.0)
        else:  # completep
            matrix = (m_l ** (a - 1.0) / m_n, m_n, 1.0 / (m_n * m_l**a))
            vector = (m_l ** (a - 1.0), 0.0, m_l**-a)
        return {
            "embedding": (1.0, 1.0, 1.0),
            "hidden_matrix": matrix,
            "hidden_vector": vector,
            "final_norm": (1.0, 0.0, 1.0),
            "lm_head": (1.0, 1.0, 1.0),
        }


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention (softmax in fp32); `attention_mask` is the additive 4-D mask of `create_causal_mask`."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class LRTGPT2Attention(nn.Module):
    """Causal self-attention with one fused qkv projection (one GEMM instead of three)."""

    def __init__(self, config: LRTGPT2Config, layer_idx: int, scaling: float) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = scaling
        self.is_causal = True
        self.c_attn = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.bias)
        self.c_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.c_attn._lrt_init = "hidden"
        self.c_proj._lrt_init = "residual_out"

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq = hidden_states.shape[:2]
        # (B, T, 3d) -> 3 x (B, H, T, d_h), views of the single qkv GEMM output
        query, key, value = self.c_attn(hidden_states).view(batch, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
        )
        attn_output = self.c_proj(attn_output.reshape(batch, seq, -1))
        return attn_output, attn_weights


class LRTGPT2MLP(nn.Module):
    def __init__(self, config: LRTGPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.bias)
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.bias)
        self.c_fc._lrt_init = "hidden"
        self.c_proj._lrt_init = "residual_out"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # GPT-2's tanh GELU ("gelu_new"), as one fused kernel
        return self.c_proj(nn.functional.gelu(self.c_fc(hidden_states), approximate="tanh"))


class LRTGPT2Block(GradientCheckpointingLayer):
    """Pre-LN block: h += r·attn(ln_1(h)); h += r·mlp(ln_2(h))."""

    def __init__(self, config: LRTGPT2Config, layer_idx: int, param: Parameterization) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = LRTGPT2Attention(config, layer_idx, param.attn_scale)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = LRTGPT2MLP(config)
        self.residual_mult = param.residual_mult

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        attn_output, _ = self.attn(self.ln_1(hidden_states), attention_mask, past_key_values, **kwargs)
        hidden_states = torch.add(hidden_states, attn_output, alpha=self.residual_mult)
        return torch.add(hidden_states, self.mlp(self.ln_2(hidden_states)), alpha=self.residual_mult)


class LRTGPT2PreTrainedModel(PreTrainedModel):
    config: LRTGPT2Config
    config_class = LRTGPT2Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LRTGPT2Block"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": LRTGPT2Block,
        "attentions": OutputRecorder(LRTGPT2Attention, index=1),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Leaf-module init; every std comes from `Parameterization.init_std` via the module's `_lrt_init` tag."""
        param = Parameterization.from_config(self.config)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            # untagged modules (e.g. from resize_token_embeddings) follow their kind's default rule
            std = param.init_std(getattr(module, "_lrt_init", "embedding" if isinstance(module, nn.Embedding) else "hidden"))
            if std == 0.0:
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)


class LRTGPT2Model(LRTGPT2PreTrainedModel):
    def __init__(self, config: LRTGPT2Config) -> None:
        super().__init__(config)
        param = Parameterization.from_config(config)
        self.input_mult = param.input_mult
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.wte._lrt_init = self.wpe._lrt_init = "embedding"
        self.h = nn.ModuleList([LRTGPT2Block(config, i, param) for i in range(config.num_hidden_layers)])
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon, bias=config.bias)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.wte = new_embeddings

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        if self.input_mult != 1.0:
            inputs_embeds = self.input_mult * inputs_embeds
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0) + past_seen
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        hidden_states = inputs_embeds + self.wpe(position_ids)
        for block in self.h:
            hidden_states = block(hidden_states, causal_mask, past_key_values, position_ids=position_ids, **kwargs)
        hidden_states = self.ln_f(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=past_key_values)


class LRTGPT2ForCausalLM(LRTGPT2PreTrainedModel, GenerationMixin):
    """GPT-2 LM. Tied embeddings under μP use the shared weight with ω applied to the hidden state (mup's shared
    readout), so the tied and untied models compute the same function of the same weights."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: LRTGPT2Config) -> None:
        super().__init__(config)
        self.transformer = LRTGPT2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head._lrt_init = "lm_head"
        self.output_mult = Parameterization.from_config(config).output_mult
        self.post_init()

    @property
    def parameterization(self) -> Parameterization:
        return Parameterization.from_config(self.config)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        outputs: BaseModelOutputWithPast = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:, :]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep, :]
        if self.output_mult != 1.0:
            hidden_states = hidden_states * self.output_mult
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _group_of(self, name: str, param: nn.Parameter) -> str:
        if name.startswith(("transformer.wte.", "transformer.wpe.")):
            return "embedding"
        if name.startswith("transformer.h."):
            return "hidden_matrix" if param.ndim == 2 else "hidden_vector"
        if name.startswith("transformer.ln_f."):
            return "final_norm"
        if name == "lm_head.weight":
            return "lm_head"
        raise ValueError(f"parameter {name!r} has no group in the {self.config.parameterization} parameterization")

    def param_groups(self, horizon_mult: float = 1.0) -> list[dict[str, Any]]:
        """The optimizer group spec (CONTRACTS.md). GPT-2's rules do not depend on the horizon: `horizon_mult` is
        accepted for a uniform interface and ignored."""
        multipliers = self.parameterization.group_multipliers()
        groups: dict[str, dict[str, Any]] = {}
        for name, param in self.named_parameters():  # a tied lm_head is the same tensor as wte: listed once
            if not param.requires_grad:
                continue
            gname = self._group_of(name, param)
            if gname not in groups:
                lr_mult, wd_mult, eps_mult = multipliers[gname]
                groups[gname] = {
                    "name": gname,
                    "params": [],
                    "param_names": [],
                    "role": GROUP_ROLES[gname],
                    "lr_mult": lr_mult,
                    "weight_decay_mult": wd_mult,
                    "eps_mult": eps_mult,
                }
            groups[gname]["params"].append(param)
            groups[gname]["param_names"].append(name)
        return [groups[g] for g in GROUP_ROLES if g in groups]

    def num_non_embedding_params(self) -> int:
        """N as reported: every parameter except wte, wpe and an untied lm_head (so tying does not change N)."""
        return sum(
            p.numel() for name, p in self.named_parameters() if self._group_of(name, p) not in ("embedding", "lm_head")
        )


LRTGPT2Config.register_for_auto_class()
LRTGPT2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["LRTGPT2ForCausalLM", "LRTGPT2Model", "LRTGPT2PreTrainedModel", "Parameterization"]
