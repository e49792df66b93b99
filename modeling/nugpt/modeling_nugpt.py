"""nGPT / νGPT: the normalized transformer with a width / depth / horizon parameterization.

nGPT (Loshchilov et al. 2024, arXiv 2410.01131; reference code NVIDIA/ngpt) keeps every hidden state and
every embedding / weight vector on the unit sphere: no LayerNorm, no biases, and each residual update is a
normalized interpolation `h <- Norm(h + |α| ⊙ (Norm(block(h)) - h))` with learned "eigen learning rates" α.
νGPT (arXiv 2604.27077) re-parameterizes it so that the learning rate transfers across width, depth and
token horizon. Both live in this one file; `parameterization_rules` is the single source of truth for
every init value and learning-rate multiplier, and `param_groups` hands them to the optimizer factory.

The file imports only torch, transformers and its sibling configuration, so it ships verbatim to the Hub
and loads with `trust_remote_code=True` on a machine without lrtransfer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_nugpt import NuGPTConfig

try:  # DTensor (FSDP2 / tensor parallel) parameters need collective norms; torch may lack distributed.
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - builds without torch.distributed
    dist = None
    DTensor = None


# --------------------------------------------------------------------------------------------------------
# The parameterization: the one place that maps (config, horizon) to init values and LR multipliers.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NuGPTRules:
    """Init values, storage scales and LR multipliers of one model under one parameterization."""

    alpha_init: float  # effective α_A, α_M at init
    alpha_scale: float  # storage scale of α_A, α_M (raw init = scale, eff = raw · init/scale)
    qk_init: float
    qk_scale: float
    mlp_init: float  # s_u and s_ν; their scale equals their init
    mlp_scale: float
    logit_init: float  # effective s_z at init
    logit_scale: float
    lr_mult: dict[str, float]  # role -> LR multiplier
    eps: float | None  # absolute Adam ε for every group, or None for the optimizer's default


def parameterization_rules(config: NuGPTConfig, horizon_mult: float = 1.0) -> NuGPTRules:
    """DESIGN §2.2's table. `horizon_mult` is m_data = steps / base steps at a fixed batch size."""
    if isinstance(horizon_mult, bool) or not isinstance(horizon_mult, (int, float)) or not 0 < horizon_mult < math.inf:
        raise ValueError(f"horizon_mult={horizon_mult!r} is invalid; allowed values: a finite number > 0")
    d = config.hidden_size
    if config.parameterization == "ngpt":
        base_scale = 1.0 / math.sqrt(d)
        return NuGPTRules(
            alpha_init=config.alpha_init,
            alpha_scale=base_scale,
            qk_init=config.qk_scale_init,
            qk_scale=base_scale,
            mlp_init=config.mlp_scale_init,
            mlp_scale=config.mlp_scale_init,
            logit_init=1.0,
            logit_scale=base_scale,
            lr_mult={"embedding": 1.0, "matrix": 1.0, "lm_head": 1.0, "vector": 1.0},
            eps=None,
        )
    if config.parameterization == "nugpt":
        m_n, m_l = config.width_mult, config.depth_mult
        horizon = horizon_mult ** (-config.horizon_lr_exponent)
        return NuGPTRules(
            alpha_init=config.alpha_init * m_l ** (-config.alpha_depth_exponent),
            alpha_scale=config.rescaler_scale,
            qk_init=config.qk_scale_init,
            qk_scale=config.rescaler_scale,
            mlp_init=config.mlp_scale_init,
            mlp_scale=config.mlp_scale_init,
            logit_init=m_n**config.logit_scale_width_exponent,
            logit_scale=config.rescaler_scale,
            lr_mult={
                "embedding": horizon * m_n ** (-config.embedding_lr_width_exponent),
                "matrix": horizon * m_n ** (-config.hidden_lr_width_exponent),
                "lm_head": horizon * m_n ** (-config.lm_head_lr_width_exponent) * config.lm_head_lr_mult,
                "vector": horizon,
            },
            eps=config.adam_eps,
        )
    raise ValueError(
        f"parameterization={config.parameterization!r} is not supported; allowed values: ['ngpt', 'nugpt']"
    )


# --------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------


class NuGPTLinear(nn.Linear):
    """A bias-free Linear whose weight lives on the unit sphere along `unit_norm_dim`, the axis the norm runs
    over (1: every row, i.e. output unit, has norm 1; 0: every column, i.e. input unit, has norm 1).

    `row_scale` multiplies the output units. When there are more tokens than input units (training) it is
    applied to the (out, in) weight rather than to the (tokens, out) output: the same product at a fraction
    of the memory traffic; one-token decoding scales the output instead.
    """

    def __init__(self, in_features: int, out_features: int, unit_norm_dim: int):
        super().__init__(in_features, out_features, bias=False)
        self.unit_norm_dim = unit_norm_dim

    def forward(self, x: torch.Tensor, row_scale: torch.Tensor | None = None) -> torch.Tensor:
        if row_scale is None:
            return F.linear(x, self.weight)
        if x.numel() < x.shape[-1] * self.in_features:
            return F.linear(x, self.weight) * row_scale
        return F.linear(x, self.weight * row_scale[:, None])


class NuGPTEmbedding(nn.Embedding):
    """Token embeddings with unit-norm rows."""

    unit_norm_dim = 1


class NuGPTRescaler(nn.Module):
    """A trainable vector stored raw and used as raw · (init/scale).

    The raw value starts at `scale`, so the effective value starts at `init`, and Adam's step on the
    effective value is multiplied by init/scale: the storage scale doubles as a per-vector LR multiplier.
    A parameter holder, not a layer: its consumers call `effective()` (so forward hooks, e.g. the
    coordinate check's, see activations only).
    """

    def __init__(self, size: int, init_value: float, scale: float):
        super().__init__()
        self.init_value = float(init_value)
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.full((size,), self.scale))

    def effective(self) -> torch.Tensor:
        return self.weight * (self.init_value / self.scale)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, init={self.init_value:.4g}, scale={self.scale:.4g}"


class NuGPTRotaryEmbedding(nn.Module):
    """RoPE in transformers' Llama convention (rotate-half, pairs (i, i + d_h/2)), computed in fp32.

    Returns cos and a sign-folded sin, so that RoPE(x) = x·cos + roll(x, d_h/2)·sin_signed equals Llama's
    x·cos + rotate_half(x)·sin without the negation pass.
    """

    def __init__(self, config: NuGPTConfig):
        super().__init__()
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.rope_theta = config.rope_theta
        self.inv_freq = nn.Buffer(self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
        return 1.0 / (self.rope_theta**exponent)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float32)
        cos, sin = freqs.cos(), freqs.sin()
        return torch.cat((cos, cos), dim=-1).to(x.dtype), torch.cat((-sin, sin), dim=-1).to(x.dtype)


def apply_rotary_pos_emb(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Llama's rotate-half RoPE on x (..., head_dim); cos, sin_signed broadcast against x."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin_signed


def unit_norm(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| over the last axis (nGPT's Norm), with the squared norm accumulated in fp32."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True, dtype=torch.float32)).to(x.dtype)


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
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class NuGPTAttention(nn.Module):
    """Causal self-attention on normalized, s_qk-scaled queries and keys, with logit multiplier √d_h.

    q and k are unit vectors per head, so q·k ∈ [-1, 1]; the usual 1/√d_h would flatten the softmax, and
    nGPT multiplies by √d_h instead (times s_qk² learned per channel).
    """

    def __init__(self, config: NuGPTConfig, layer_idx: int, rules: NuGPTRules):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = math.sqrt(self.head_dim)
        self.is_causal = True
        # W_q, W_k, W_v fused: their rows are the rows of this (3d, d) matrix, so row-normalizing it is exact.
        self.qkv_proj = NuGPTLinear(config.hidden_size, 3 * config.hidden_size, unit_norm_dim=1)
        self.o_proj = NuGPTLinear(config.hidden_size, config.hidden_size, unit_norm_dim=0)
        self.qk_scale = NuGPTRescaler(config.hidden_size, rules.qk_init, rules.qk_scale)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, seq, 3, self.num_heads, self.head_dim)
        # q and k together: Norm per head, RoPE (a rotation, so it commutes with Norm), then s_qk.
        cos, sin = (t[:, :, None, None, :] for t in position_embeddings)
        s_qk = self.qk_scale.effective().view(self.num_heads, self.head_dim)
        qk = apply_rotary_pos_emb(unit_norm(qkv[:, :, :2]), cos, sin) * s_qk
        query, key = qk.transpose(1, 3).unbind(2)  # each (batch, heads, seq, head_dim)
        value = qkv[:, :, 2].transpose(1, 2)

        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
        )
        attn_output = attn_output.reshape(batch, seq, -1)
        return self.o_proj(attn_output), attn_weights


class NuGPTMLP(nn.Module):
    """SwiGLU with learned scales: u = s_u ⊙ W_u h, ν = s_ν·√d ⊙ W_ν h, out = W_out(u ⊙ SiLU(ν)).

    ν's √d undoes the 1/√d size of a unit vector's projection, so SiLU sees O(1) inputs, as in a
    LayerNorm transformer.
    """

    def __init__(self, config: NuGPTConfig, rules: NuGPTRules):
        super().__init__()
        d_ff = config.intermediate_size
        self.uv_proj = NuGPTLinear(config.hidden_size, 2 * d_ff, unit_norm_dim=1)  # [W_u; W_ν]
        self.down_proj = NuGPTLinear(d_ff, config.hidden_size, unit_norm_dim=0)
        self.u_scale = NuGPTRescaler(d_ff, rules.mlp_init, rules.mlp_scale)
        self.v_scale = NuGPTRescaler(d_ff, rules.mlp_init, rules.mlp_scale)
        self.sqrt_d = math.sqrt(config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        scale = torch.cat((self.u_scale.effective(), self.v_scale.effective() * self.sqrt_d))
        u, v = self.uv_proj(hidden_states, row_scale=scale).chunk(2, dim=-1)
        return self.down_proj(u * F.silu(v))


class NuGPTDecoderLayer(GradientCheckpointingLayer):
    """Two normalized LERP updates: h <- Norm(h + |α| ⊙ (Norm(block(h)) - h)) for attention, then MLP."""

    def __init__(self, config: NuGPTConfig, layer_idx: int, rules: NuGPTRules):
        super().__init__()
        self.self_attn = NuGPTAttention(config, layer_idx, rules)
        self.mlp = NuGPTMLP(config, rules)
        self.attn_alpha = NuGPTRescaler(config.hidden_size, rules.alpha_init, rules.alpha_scale)
        self.mlp_alpha = NuGPTRescaler(config.hidden_size, rules.alpha_init, rules.alpha_scale)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        h_a, _ = self.self_attn(
            hidden_states,
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **kwargs,
        )
        hidden_states = unit_norm(torch.lerp(hidden_states, unit_norm(h_a), self.attn_alpha.effective().abs()))
        h_m = self.mlp(hidden_states)
        return unit_norm(torch.lerp(hidden_states, unit_norm(h_m), self.mlp_alpha.effective().abs()))


# --------------------------------------------------------------------------------------------------------
# Renormalization (plain tensors and DTensor / FSDP2 shards)
# --------------------------------------------------------------------------------------------------------


def _reduction_groups(param: torch.Tensor, dim: int) -> tuple:
    """Process groups over which `param`'s local shard must sum squares to get norms along `dim`."""
    if DTensor is None or not isinstance(param, DTensor):
        return ()
    mesh = param.device_mesh
    return tuple(
        mesh.get_group(mesh_dim)
        for mesh_dim, placement in enumerate(param.placements)
        if placement.is_shard() and placement.dim % param.ndim == dim
    )


@torch.no_grad()
def normalize_unit_weights_(weights: list[tuple[torch.Tensor, int]]) -> None:
    """Put each `(weight, dim)` back on the unit sphere along `dim`, in place.

    Plain tensors and DTensors whose normalized axis is whole on every rank (rows under FSDP2's Shard(0))
    need no communication; where the axis is sharded (columns under Shard(0)) the local squared norms of
    all such weights go through one all-reduce per set of process groups.
    """
    pending: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for weight, dim in weights:
        local = weight.to_local() if DTensor is not None and isinstance(weight, DTensor) else weight
        groups = _reduction_groups(weight, dim)
        if not groups:
            norm = torch.linalg.vector_norm(local, dim=dim, keepdim=True, dtype=torch.float32)
            local.div_(norm.to(local.dtype))
            continue
        sq = torch.linalg.vector_norm(local, dim=dim, keepdim=True, dtype=torch.float32).square_()
        pending.setdefault(groups, []).append((local, sq))
    for groups, items in pending.items():
        flat = torch.cat([sq.reshape(-1) for _, sq in items])
        for group in groups:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        norms = flat.sqrt_().split([sq.numel() for _, sq in items])
        for (local, sq), norm in zip(items, norms):
            local.div_(norm.view(sq.shape).to(local.dtype))


# --------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------


class NuGPTPreTrainedModel(PreTrainedModel):
    config: NuGPTConfig
    config_class = NuGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["NuGPTDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _can_compile_fullgraph = True
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": NuGPTDecoderLayer,
        "attentions": OutputRecorder(NuGPTAttention, index=1),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Matrices: a Gaussian draw projected onto the sphere along their axis; rescalers: raw = scale."""
        if isinstance(module, (NuGPTLinear, NuGPTEmbedding)):
            if getattr(module.weight, "_is_hf_initialized", False):
                return
            draw = torch.randn_like(module.weight) * self.config.initializer_range
            init.copy_(module.weight, F.normalize(draw, dim=module.unit_norm_dim))
        elif isinstance(module, NuGPTRescaler):
            init.constant_(module.weight, module.scale)
        elif isinstance(module, NuGPTRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())

    def _unit_norm_weights(self) -> list[tuple[torch.Tensor, int]]:
        return [
            (module.weight, module.unit_norm_dim)
            for module in self.modules()
            if isinstance(module, (NuGPTLinear, NuGPTEmbedding))
        ]

    def normalize_weights(self) -> None:
        """Project every matrix back onto the unit sphere along its axis (before step 1, after each step)."""
        normalize_unit_weights_(self._unit_norm_weights())


class NuGPTModel(NuGPTPreTrainedModel):
    def __init__(self, config: NuGPTConfig):
        super().__init__(config)
        rules = parameterization_rules(config)
        self.embed_tokens = NuGPTEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [NuGPTDecoderLayer(config, i, rules) for i in range(config.num_hidden_layers)]
        )
        self.rotary_emb = NuGPTRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

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
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("exactly one of input_ids and inputs_embeds must be given")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen
            position_ids = position_ids.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=causal_mask,
                past_key_values=past_key_values,
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=past_key_values)


class NuGPTForCausalLM(NuGPTPreTrainedModel, GenerationMixin):
    def __init__(self, config: NuGPTConfig):
        super().__init__(config)
        rules = parameterization_rules(config)
        self.model = NuGPTModel(config)
        self.lm_head = NuGPTLinear(config.hidden_size, config.vocab_size, unit_norm_dim=1)
        self.logit_scale = NuGPTRescaler(config.vocab_size, rules.logit_init, rules.logit_scale)  # s_z
        self.post_init()

    def get_output_embeddings(self) -> NuGPTLinear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: NuGPTLinear) -> None:
        self.lm_head = new_embeddings

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
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :], row_scale=self.logit_scale.effective())
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

    def param_groups(self, horizon_mult: float = 1.0) -> list[dict[str, Any]]:
        """The optimizer group spec (CONTRACTS.md): one group per role, multipliers from `parameterization_rules`.

        `horizon_mult` is the run's m_data (steps / base steps); νGPT scales every LR by m_data^(-1/3),
        nGPT ignores it. No weight decay anywhere: weights live on the sphere.
        """
        rules = parameterization_rules(self.config, horizon_mult)
        special = {
            id(self.model.embed_tokens.weight): "embedding",
            id(self.lm_head.weight): "lm_head",
        }
        rescalers = {id(m.weight) for m in self.modules() if isinstance(m, NuGPTRescaler)}
        names = {"embedding": "embedding", "matrix": "hidden_matrix", "lm_head": "lm_head", "vector": "rescaler"}
        buckets: dict[str, tuple[list[nn.Parameter], list[str]]] = {role: ([], []) for role in names}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if id(param) in special:
                role = special[id(param)]
            elif id(param) in rescalers:
                role = "vector"
            elif param.ndim == 2:
                role = "matrix"
            else:
                raise ValueError(f"parameter {name!r} has no role in the nugpt group spec")
            buckets[role][0].append(param)
            buckets[role][1].append(name)
        groups = []
        for role, (params, param_names) in buckets.items():
            if not params:
                continue
            group: dict[str, Any] = {
                "name": names[role],
                "params": params,
                "param_names": param_names,
                "role": role,
                "lr_mult": rules.lr_mult[role],
                "weight_decay_mult": 0.0,
                "eps_mult": 1.0,
            }
            if rules.eps is not None:
                group["eps"] = rules.eps
            groups.append(group)
        return groups

    def num_non_embedding_params(self) -> int:
        """N: every parameter except the input and output embeddings and the per-vocab logit scale s_z."""
        embedding = {id(self.model.embed_tokens.weight), id(self.lm_head.weight), id(self.logit_scale.weight)}
        return sum(p.numel() for p in self.parameters() if id(p) not in embedding)


NuGPTConfig.register_for_auto_class()
NuGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["NuGPTForCausalLM", "NuGPTModel", "NuGPTPreTrainedModel", "parameterization_rules"]
