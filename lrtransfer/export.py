"""SP GPT-2 with the stock architecture <-> transformers' `GPT2LMHeadModel`.

`to_stock` lets anyone use a trained SP model with no remote code; `from_stock` starts our SP model from
stock GPT-2 weights. Only the weight layout differs: stock GPT-2 stores its projections as `Conv1D`
(in, out), ours as `nn.Linear` (out, in). Dropout is not part of our model: the export writes p = 0,
and the import drops the stock dropout rates (they do not change the weights or the eval-mode function).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from lrtransfer.modeling.gpt2 import LRTGPT2Config, LRTGPT2ForCausalLM
from lrtransfer.utils import parse_config

DIRECTIONS = ("to-stock", "from-stock")
# stock GPT-2's tanh GELU, in either of its two implementations (same function)
STOCK_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
# per block: (our Linear, stock Conv1D); Conv1D weights are the transpose of Linear weights
_PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
_NORMS = ("ln_1", "ln_2")
# (our config field, GPT2Config field) that map one to one
_CONFIG_FIELDS = (("vocab_size", "vocab_size"), ("max_position_embeddings", "n_positions"),
                  ("hidden_size", "n_embd"), ("num_hidden_layers", "n_layer"), ("num_attention_heads", "n_head"),
                  ("layer_norm_epsilon", "layer_norm_epsilon"), ("initializer_range", "initializer_range"),
                  ("tie_word_embeddings", "tie_word_embeddings"), ("bos_token_id", "bos_token_id"),
                  ("eos_token_id", "eos_token_id"), ("pad_token_id", "pad_token_id"))  # fmt: skip


def _convert_state(source: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    """The target's tensors `keys` from `source`: block projections transposed (Linear <-> Conv1D)."""
    state = {}
    for key in keys:
        value = source[key]
        if key.startswith("transformer.h.") and key.endswith(".weight") and any(f".{p}." in key for p in _PROJECTIONS):
            value = value.t()
        state[key] = value.contiguous().clone()
    return state


def check_stock_compatible(config: LRTGPT2Config) -> None:
    """Raise a ValueError naming the first field that the stock GPT2LMHeadModel cannot represent."""
    required = {
        "parameterization": ("sp", config.parameterization),
        "bias": (True, config.bias),
        "input_multiplier": (1.0, float(config.input_multiplier)),
        "output_multiplier": (1.0, float(config.output_multiplier)),
    }
    for field, (allowed, value) in required.items():
        if value != allowed:
            raise ValueError(
                f"{field}={value!r} has no stock GPT2LMHeadModel equivalent; allowed values: {allowed!r} "
                "(only SP models with the stock architecture export)"
            )


def to_stock(model: LRTGPT2ForCausalLM) -> GPT2LMHeadModel:
    """Our SP GPT-2 -> `GPT2LMHeadModel` computing the same logits (fp32 agreement ~1e-6)."""
    config = model.config
    check_stock_compatible(config)
    stock_config = GPT2Config(
        **{theirs: getattr(config, ours) for ours, theirs in _CONFIG_FIELDS},
        n_inner=config.intermediate_size,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    ours = model.state_dict()
    state = _convert_state(ours, list(ours))
    if config.tie_word_embeddings:  # one shared tensor, as the stock model ties it
        state["lm_head.weight"] = state["transformer.wte.weight"]
    stock = GPT2LMHeadModel(stock_config).to(next(model.parameters()).dtype)
    stock.load_state_dict(state, strict=True)
    return stock.eval()


def check_stock_architecture(config: GPT2Config) -> None:
    """Raise a ValueError naming the first stock option our GPT-2 does not implement."""
    if config.activation_function not in STOCK_ACTIVATIONS:
        raise ValueError(
            f"activation_function={config.activation_function!r} is not supported; allowed values: {list(STOCK_ACTIVATIONS)}"
        )
    required = {
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
    }
    for field, allowed in required.items():
        if getattr(config, field) != allowed:
            raise ValueError(f"{field}={getattr(config, field)!r} is not supported; allowed values: {allowed!r}")


def from_stock(stock: GPT2LMHeadModel) -> LRTGPT2ForCausalLM:
    """`GPT2LMHeadModel` -> our SP GPT-2 (base shape = its own shape, so m_N = m_L = 1)."""
    sc = stock.config
    check_stock_architecture(sc)
    config = LRTGPT2Config(
        **{ours: getattr(sc, theirs) for ours, theirs in _CONFIG_FIELDS},
        intermediate_size=sc.n_inner or 4 * sc.n_embd,
        parameterization="sp",
        base_hidden_size=sc.n_embd,
        base_num_layers=sc.n_layer,
    )
    model = LRTGPT2ForCausalLM(config).to(next(stock.parameters()).dtype)
    state = _convert_state(stock.state_dict(), list(model.state_dict()))
    model.load_state_dict(state, strict=True)
    return model.eval()


@dataclasses.dataclass
class ExportConfig:
    """`lrtransfer export`: convert a model folder between our SP GPT-2 and stock GPT2LMHeadModel."""

    model_dir: str = dataclasses.field(metadata={"help": "folder of the model to convert (save_pretrained format)"})
    output_dir: str = dataclasses.field(metadata={"help": "folder to write; must not exist or be empty"})
    direction: str = dataclasses.field(
        default="to-stock", metadata={"help": "to-stock (ours -> GPT2LMHeadModel) or from-stock", "choices": DIRECTIONS}
    )


def export(cfg: ExportConfig) -> Path:
    """Convert `cfg.model_dir` and write it (weights, config, tokenizer when present) to `cfg.output_dir`."""
    if cfg.direction not in DIRECTIONS:
        raise ValueError(f"direction={cfg.direction!r} is unknown; allowed values: {list(DIRECTIONS)}")
    src, out = Path(cfg.model_dir), Path(cfg.output_dir)
    if not (src / "config.json").is_file():
        raise ValueError(f"model_dir={str(src)!r} has no config.json; allowed values: a save_pretrained folder")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output_dir={str(out)!r} is not empty; allowed values: a new or empty folder")
    if cfg.direction == "to-stock":
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        if not isinstance(model, LRTGPT2ForCausalLM):
            raise ValueError(
                f"model_dir holds a {type(model).__name__}; allowed values: an lrt_gpt2 (LRTGPT2ForCausalLM) folder"
            )
        converted = to_stock(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        if not isinstance(model, GPT2LMHeadModel):
            raise ValueError(
                f"model_dir holds a {type(model).__name__}; allowed values: a gpt2 (GPT2LMHeadModel) folder"
            )
        converted = from_stock(model)
    converted.save_pretrained(out)
    if any((src / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    (cfg,) = parse_config([ExportConfig], argv)
    out = export(cfg)
    print(f"wrote {os.fspath(out)} ({cfg.direction})")
    return 0
