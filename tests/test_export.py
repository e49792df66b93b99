"""SP GPT-2 <-> transformers GPT2LMHeadModel: same logits, stock folder needs no remote code, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import lrtransfer  # noqa: F401
from lrtransfer.export import ExportConfig, export, from_stock, main, to_stock
from lrtransfer.modeling.gpt2 import LRTGPT2Config, LRTGPT2ForCausalLM

V, T = 101, 16





def ours(**kw) -> LRTGPT2ForCausalLM:
    cfg = dict(vocab_size=V, max_position_embeddings=T, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               base_hidden_size=64, base_num_layers=2, intermediate_size=96)
    cfg.update(kw)
    torch.manual_seed(0)
    model = LRTGPT2ForCausalLM(LRTGPT2Config(**cfg))
    with torch.no_grad():  # non-trivial biases and LayerNorms, so a mis-mapped tensor shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("tied", [True, False])
def test_to_stock_same_logits_and_loads_without_remote_code(tmp_path, tied: bool) -> None:
    model = ours(tie_word_embeddings=tied)
    ids = torch.randint(0, V, (3, T))
    stock = to_stock(model)
    assert type(stock) is GPT2LMHeadModel
    torch.testing.assert_close(stock(ids).logits, model(ids).logits, rtol=0, atol=1e-5)

    model.save_pretrained(tmp_path / "ours")
    assert main(["--model_dir", str(tmp_path / "ours"), "--output_dir", str(tmp_path / "stock")]) == 0
    config = json.loads((tmp_path / "stock" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config
    assert not list((tmp_path / "stock").glob("*.py"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "stock", trust_remote_code=False)
    assert type(loaded) is GPT2LMHeadModel
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
    assert (loaded.lm_head.weight is loaded.transformer.wte.weight) == tied


def test_from_stock_same_logits(tmp_path) -> None:
    torch.manual_seed(1)
    stock = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=T, n_embd=64, n_layer=2, n_head=4,
                                       bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():
        for p in stock.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, V, (3, T))
    model = from_stock(stock)
    assert model.config.parameterization == "sp" and model.config.width_mult == 1.0
    torch.testing.assert_close(model(ids).logits, stock(ids).logits, rtol=0, atol=1e-5)

    stock.save_pretrained(tmp_path / "stock")
    export(ExportConfig(model_dir=str(tmp_path / "stock"), output_dir=str(tmp_path / "ours"), direction="from-stock"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    assert isinstance(loaded, LRTGPT2ForCausalLM)
    torch.testing.assert_close(loaded(ids).logits, stock(ids).logits, rtol=0, atol=1e-5)
    assert (tmp_path / "ours" / "modeling_lrt_gpt2.py").is_file()


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(parameterization="mup", base_hidden_size=32), "parameterization"),
        (dict(parameterization="completep"), "parameterization"),
        (dict(bias=False), "bias"),
        (dict(output_multiplier=2.0), "output_multiplier"),
        (dict(input_multiplier=0.5), "input_multiplier"),
    ],
)
def test_non_stock_models_rejected(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        to_stock(ours(**kwargs))


def test_non_stock_gpt2_options_and_bad_arguments_rejected(tmp_path) -> None:
    for cfg, field in [(dict(activation_function="relu"), "activation_function"),
                       (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx")]:
        stock = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=T, n_embd=32, n_layer=1, n_head=2, **cfg))
        with pytest.raises(ValueError, match=field):
            from_stock(stock)
    ours().save_pretrained(tmp_path / "ours")
    with pytest.raises(ValueError, match="direction"):
        export(ExportConfig(model_dir=str(tmp_path / "ours"), output_dir=str(tmp_path / "o"), direction="sideways"))
    with pytest.raises(ValueError, match="model_dir"):
        export(ExportConfig(model_dir=str(tmp_path / "nothing"), output_dir=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="output_dir"):
        export(ExportConfig(model_dir=str(tmp_path / "ours"), output_dir=str(tmp_path / "ours")))
    with pytest.raises(ValueError, match="model_dir holds"):  # from-stock on one of ours
        export(ExportConfig(model_dir=str(tmp_path / "ours"), output_dir=str(tmp_path / "o"), direction="from-stock"))
