"""νGPT / nGPT (DESIGN §2.2): forward vs an fp64 reference, sphere invariants, the parameterization table,
remote-code loading, KV-cache generation, config validation."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply_rotary_pos_emb

from lrtransfer.modeling import get_family
from lrtransfer.modeling.nugpt import NuGPTConfig, NuGPTForCausalLM
from lrtransfer.optim import build_optimizer

VOCAB = 96

# DESIGN §2.2: the axis along which each matrix is unit-norm ("rows": every row; "columns": every column).
AXES = {
    "embed_tokens": "rows",
    "qkv_proj": "rows",  # W_q, W_k, W_v stacked along the output axis
    "o_proj": "columns",
    "uv_proj": "rows",  # [W_u; W_ν]
    "down_proj": "columns",
    "lm_head": "rows",
}


def tiny(**overrides) -> NuGPTConfig:
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        base_hidden_size=32,
        base_num_layers=1,
        max_position_embeddings=64,
    )
    kwargs.update(overrides)
    return NuGPTConfig(**kwargs)


def build(seed: int = 0, **overrides) -> NuGPTForCausalLM:
    torch.manual_seed(seed)
    return NuGPTForCausalLM(tiny(**overrides))


def axis_of(name: str) -> int:
    """The dimension the norm runs over: rows -> 1, columns -> 0."""
    module = name.split(".")[-2]
    return 1 if AXES[module] == "rows" else 0


def matrices(model: NuGPTForCausalLM) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.ndim == 2}


def expected_effective_factors(config: NuGPTConfig) -> dict[str, float]:
    """init/scale per rescaler kind, written out from the DESIGN table (not from the model code)."""
    d = config.hidden_size
    m_n = config.hidden_size / config.base_hidden_size
    m_l = config.num_hidden_layers / config.base_num_layers
    if config.parameterization == "ngpt":
        s = 1 / math.sqrt(d)
        return {"alpha": 0.05 / s, "qk": 1.0 / s, "mlp": 1.0, "logit": 1.0 / s}
    return {"alpha": 0.05 / m_l / 0.03, "qk": 1.0 / 0.03, "mlp": 1.0, "logit": math.sqrt(m_n) / 0.03}


def reference_logits(model: NuGPTForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """DESIGN §2.2 step by step in fp64, with transformers' Llama RoPE (rotate-half convention)."""
    cfg = model.config
    d, n_heads, n_layers = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers
    dh, dff = d // n_heads, cfg.intermediate_size
    w = {k: v.double() for k, v in model.state_dict().items()}
    f = expected_effective_factors(cfg)
    norm = lambda x: x / x.norm(dim=-1, keepdim=True)
    batch, seq = ids.shape
    llama = LlamaConfig(hidden_size=d, num_attention_heads=n_heads, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cos, sin = LlamaRotaryEmbedding(llama)(torch.zeros(1, dtype=torch.float64), torch.arange(seq)[None])
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()

    h = w["model.embed_tokens.weight"][ids]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        q, k, v = (h @ w[p + "self_attn.qkv_proj.weight"].T).split(d, dim=-1)
        q, k, v = (t.view(batch, seq, n_heads, dh).transpose(1, 2) for t in (q, k, v))
        q, k = llama_apply_rotary_pos_emb(q, k, cos, sin)
        s_qk = (w[p + "self_attn.qk_scale.weight"] * f["qk"]).view(n_heads, 1, dh)
        q, k = s_qk * norm(q), s_qk * norm(k)
        scores = (q @ k.transpose(-1, -2)) * math.sqrt(dh)  # √d_h, not 1/√d_h
        att = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(batch, seq, d)
        h_a = y @ w[p + "self_attn.o_proj.weight"].T
        alpha_a = (w[p + "attn_alpha.weight"] * f["alpha"]).abs()
        h = norm(h + alpha_a * (norm(h_a) - h))
        u, nu = (h @ w[p + "mlp.uv_proj.weight"].T).split(dff, dim=-1)
        u = u * w[p + "mlp.u_scale.weight"] * f["mlp"]
        nu = nu * w[p + "mlp.v_scale.weight"] * f["mlp"] * math.sqrt(d)
        h_m = (u * F.silu(nu)) @ w[p + "mlp.down_proj.weight"].T
        alpha_m = (w[p + "mlp_alpha.weight"] * f["alpha"]).abs()
        h = norm(h + alpha_m * (norm(h_m) - h))
    return (h @ w["lm_head.weight"].T) * (w["logit_scale.weight"] * f["logit"])


def perturb_rescalers(model: NuGPTForCausalLM, seed: int = 1) -> None:
    """Move every rescaler away from its init so the reference sees each one act (sign flips for |α|)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.mul_(torch.empty(p.shape).uniform_(-1.5, 3.0, generator=gen))


def train_steps(model: NuGPTForCausalLM, steps: int, lr: float = 1e-2) -> list[float]:
    """A few AdamW steps with the model's own groups and a renormalization after each; returns the
    largest deviation from the sphere seen right before each renormalization."""
    opt = build_optimizer(model.param_groups(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    model.normalize_weights()
    drift = []
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (4, 16), generator=gen)
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        drift.append(
            max((p.norm(dim=axis_of(n)) - 1).abs().max().item() for n, p in matrices(model).items())
        )
        model.normalize_weights()
    return drift


# ---------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("parameterization", ["nugpt", "ngpt"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_forward_matches_fp64_reference(parameterization: str, attn: str) -> None:
    model = build(parameterization=parameterization)
    model.config._attn_implementation = attn
    perturb_rescalers(model)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    out = model(ids, labels=ids)
    ref = reference_logits(model, ids)
    torch.testing.assert_close(out.logits.double(), ref, rtol=1e-4, atol=1e-4)
    ref_loss = F.cross_entropy(ref[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    assert out.loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)


def test_init_is_on_the_sphere_along_the_design_axes() -> None:
    model = build()
    for name, p in matrices(model).items():
        norms = p.norm(dim=axis_of(name))
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-6)
        if p.shape[0] > 1 and p.shape[1] > 1:  # the other axis is not unit-norm: the axis really matters
            other = p.norm(dim=1 - axis_of(name))
            assert (other - 1).abs().max() > 1e-2, name


# ---------------------------------------------------------------------------------------------- the sphere


def test_training_keeps_weights_and_hidden_states_on_the_sphere() -> None:
    model = build()
    drift = train_steps(model, steps=4)
    assert min(drift) > 1e-3  # the optimizer really leaves the sphere, renormalization brings it back
    for name, p in matrices(model).items():
        norms = p.norm(dim=axis_of(name))
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(9))
    hidden = model(ids, output_hidden_states=True).hidden_states
    assert len(hidden) == model.config.num_hidden_layers + 1
    for h in hidden:
        torch.testing.assert_close(h.norm(dim=-1), torch.ones(h.shape[:-1]), rtol=0, atol=1e-5)


def test_normalize_weights_equals_fp64_projection() -> None:
    model = build()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand_like(p) + 0.5)
    before = {n: p.detach().double().clone() for n, p in matrices(model).items()}
    rescalers = {n: p.detach().clone() for n, p in model.named_parameters() if p.ndim == 1}
    model.normalize_weights()
    for name, p in matrices(model).items():
        expected = before[name] / before[name].norm(dim=axis_of(name), keepdim=True)
        torch.testing.assert_close(p.double(), expected, rtol=0, atol=1e-6)
    for name, p in model.named_parameters():  # rescalers are not projected
        if p.ndim == 1:
            assert torch.equal(p, rescalers[name]), name


# ---------------------------------------------------------------------------------------------- parameterization


@pytest.mark.parametrize("parameterization", ["nugpt", "ngpt"])
def test_step0_effective_rescalers(parameterization: str) -> None:
    cfg = tiny(parameterization=parameterization, hidden_size=128, base_hidden_size=32, num_hidden_layers=4, base_num_layers=2)
    model = NuGPTForCausalLM(cfg)
    m_n, m_l, d = 4.0, 2.0, 128
    nugpt = parameterization == "nugpt"
    alpha, s_z, scale = (0.05 / m_l, math.sqrt(m_n), 0.03) if nugpt else (0.05, 1.0, 1 / math.sqrt(d))
    for layer in model.model.layers:
        for rescaler in (layer.attn_alpha, layer.mlp_alpha):
            torch.testing.assert_close(rescaler.effective(), torch.full((d,), alpha))
            torch.testing.assert_close(rescaler.weight, torch.full((d,), scale))  # raw init = scale
        torch.testing.assert_close(layer.self_attn.qk_scale.effective(), torch.ones(d))
        torch.testing.assert_close(layer.self_attn.qk_scale.weight, torch.full((d,), scale))
        for rescaler in (layer.mlp.u_scale, layer.mlp.v_scale):
            torch.testing.assert_close(rescaler.weight, torch.ones(4 * d))
    torch.testing.assert_close(model.logit_scale.effective(), torch.full((VOCAB,), s_z))
    torch.testing.assert_close(model.logit_scale.weight, torch.full((VOCAB,), scale))


def design_lr(role: str, m_n: float, m_data: float, lr: float) -> float:
    """DESIGN §2.2 νGPT LR column."""
    base = lr * m_data ** (-1 / 3)
    return {
        "embedding": base * m_n**-0.5,
        "matrix": base * m_n**-0.75,
        "lm_head": base * m_n**-0.75 * 0.5,
        "vector": base,
    }[role]


@pytest.mark.parametrize("width,layers", [(32, 1), (64, 2), (128, 4), (128, 1)])
def test_group_lrs_follow_the_design_table(width: int, layers: int) -> None:
    lr = 3e-3
    for parameterization in ("nugpt", "ngpt"):
        model = NuGPTForCausalLM(
            tiny(parameterization=parameterization, hidden_size=width, num_attention_heads=width // 16,
                 base_hidden_size=64, num_hidden_layers=layers, base_num_layers=2)
        )
        m_n = width / 64
        names = {n for n, p in model.named_parameters()}
        for m_data in (0.25, 1.0, 8.0):
            groups = model.param_groups(horizon_mult=m_data)
            listed = [n for g in groups for n in g["param_names"]]
            assert sorted(listed) == sorted(names)  # every parameter in exactly one group
            opt = build_optimizer(groups, lr=lr, eps=1e-8)
            for spec, group in zip(groups, opt.param_groups):
                assert spec["weight_decay_mult"] == 0.0 and group["weight_decay"] == 0.0
                if parameterization == "ngpt":
                    assert group["lr"] == pytest.approx(lr, rel=1e-12)
                    assert group["eps"] == 1e-8
                else:
                    assert group["lr"] == pytest.approx(design_lr(spec["role"], m_n, m_data, lr), rel=1e-12)
                    assert group["eps"] == 1e-16
            roles = {n: g["role"] for g in groups for n in g["param_names"]}
            assert roles["model.embed_tokens.weight"] == "embedding"
            assert roles["lm_head.weight"] == "lm_head"
            assert roles["model.layers.0.mlp.down_proj.weight"] == "matrix"
            assert roles["logit_scale.weight"] == roles["model.layers.0.attn_alpha.weight"] == "vector"


def test_parameterization_fields_are_honoured() -> None:
    cfg = tiny(hidden_size=128, base_hidden_size=32, hidden_lr_width_exponent=1.0, embedding_lr_width_exponent=0.0,
               lm_head_lr_width_exponent=1.0, lm_head_lr_mult=1.0, horizon_lr_exponent=0.5, adam_eps=1e-12,
               alpha_init=0.1, alpha_depth_exponent=0.5, rescaler_scale=0.5, logit_scale_width_exponent=1.0)
    model = NuGPTForCausalLM(cfg)
    groups = {g["role"]: g for g in model.param_groups(horizon_mult=4.0)}
    assert groups["matrix"]["lr_mult"] == pytest.approx(0.25 * 0.5)
    assert groups["embedding"]["lr_mult"] == pytest.approx(0.5)
    assert groups["lm_head"]["lr_mult"] == pytest.approx(0.25 * 0.5)
    assert groups["vector"]["lr_mult"] == pytest.approx(0.5)
    assert groups["vector"]["eps"] == 1e-12
    layer = model.model.layers[0]
    torch.testing.assert_close(layer.attn_alpha.effective(), torch.full((128,), 0.1 / math.sqrt(2)))
    torch.testing.assert_close(layer.attn_alpha.weight, torch.full((128,), 0.5))
    torch.testing.assert_close(model.logit_scale.effective(), torch.full((VOCAB,), 4.0))


def test_num_non_embedding_params() -> None:
    model = build(hidden_size=64, intermediate_size=96, num_hidden_layers=3)
    d, dff = 64, 96
    per_layer = 3 * d * d + d * d + 2 * dff * d + dff * d + 3 * d + 2 * dff
    assert model.num_non_embedding_params() == 3 * per_layer
    assert model.num_parameters() == 3 * per_layer + 2 * VOCAB * d + VOCAB


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"parameterization": "mup"}, "parameterization"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
        ({"hidden_size": 60, "num_attention_heads": 8}, "num_attention_heads"),
        ({"hidden_size": 36, "num_attention_heads": 4}, "head size"),
        ({"base_hidden_size": 0}, "base_hidden_size"),
        ({"num_hidden_layers": -1}, "num_hidden_layers"),
        ({"rescaler_scale": 0.0}, "rescaler_scale"),
        ({"alpha_init": float("nan")}, "alpha_init"),
        ({"hidden_lr_width_exponent": float("inf")}, "hidden_lr_width_exponent"),
        ({"adam_eps": -1e-16}, "adam_eps"),
    ],
)
def test_bad_config_is_rejected_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        tiny(**overrides)
    assert "allowed values" in str(info.value)


@pytest.mark.parametrize("horizon_mult", [0.0, -2.0, float("nan"), float("inf")])
def test_bad_horizon_is_rejected(horizon_mult: float) -> None:
    model = build(num_hidden_layers=1)
    with pytest.raises(ValueError, match="horizon_mult.*allowed values"):
        model.param_groups(horizon_mult=horizon_mult)


def test_registered_family() -> None:
    assert get_family("nugpt") == (NuGPTConfig, NuGPTForCausalLM)


# ---------------------------------------------------------------------------------------------- generation, Hub


def test_cached_generation_matches_uncached_and_full_forward() -> None:
    model = build().eval()
    perturb_rescalers(model)
    prompt = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(4))
    cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    # incremental decoding with the cache gives the same logits as one full forward
    with torch.no_grad():
        full = model(cached).logits
        out = model(cached[:, :5], use_cache=True)
        steps = [out.logits]
        past = out.past_key_values
        for t in range(5, cached.shape[1]):
            out = model(cached[:, t : t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["lrtransfer"] = None  # any import of lrtransfer now fails
    import torch
    from transformers import AutoModelForCausalLM
    folder, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        logits = model(ids).logits
    cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    print(json.dumps({"logits": logits.tolist(), "cached": cached.tolist(), "uncached": uncached.tolist(),
                      "groups": [g["lr_mult"] for g in model.param_groups(8.0)]}))
    """
)


@pytest.mark.slow
def test_save_and_load_with_remote_code_in_a_fresh_process(tmp_path: Path) -> None:
    model = build().eval()
    perturb_rescalers(model)
    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").glob("*.py")) == ["configuration_nugpt.py", "modeling_nugpt.py"]
    # in-process: the registered Auto classes load the same weights, untouched by init or renormalization
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert type(again) is NuGPTForCausalLM
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name

    folder = tmp_path / "elsewhere"  # a copy away from the repo, loaded where lrtransfer cannot be imported
    shutil.copytree(tmp_path / "saved", folder)
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), json.dumps(ids.tolist())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads(proc.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        expected = model(ids).logits
    torch.testing.assert_close(torch.tensor(remote["logits"]), expected, rtol=1e-6, atol=1e-6)
    assert remote["cached"] == remote["uncached"]
    assert remote["cached"] == model.generate(ids, max_new_tokens=6, do_sample=False).tolist()
    assert remote["groups"] == pytest.approx([g["lr_mult"] for g in model.param_groups(8.0)])


# ---------------------------------------------------------------------------------------------- coordinate check


@pytest.fixture(scope="module")
def width_checks() -> dict:
    from lrtransfer.coord_check import coord_check

    return {
        p: coord_check("nugpt", p, "width", sizes=(32, 64, 128), lr=3e-2, steps=4, seeds=1) for p in ("nugpt", "ngpt")
    }


def _drift(result) -> float:
    """Largest growth of a module's width slope from step 0 to the last step (what the updates add)."""
    return max(s[-1] - s[0] for s in result.slopes.values())


@pytest.mark.slow
def test_coord_check_width(width_checks: dict) -> None:
    nugpt, ngpt = width_checks["nugpt"], width_checks["ngpt"]
    assert nugpt.passed, nugpt.summary()
    assert nugpt.max_slope() <= 0.1, nugpt.summary()
    # s_z = √m_N keeps νGPT's logits flat in width; nGPT's fixed s_z = 1 lets them shrink like d^(-1/2).
    assert abs(nugpt.slopes["logits"][0]) <= 0.05
    assert ngpt.slopes["logits"][0] == pytest.approx(-0.5, abs=0.05)
    # nGPT's width-independent LRs make the updates' contribution grow with width, νGPT's do not.
    assert _drift(ngpt) > _drift(nugpt) + 0.15, (ngpt.summary(), nugpt.summary())


@pytest.mark.slow
def test_coord_check_depth() -> None:
    from lrtransfer.coord_check import coord_check

    result = coord_check("nugpt", "nugpt", "depth", sizes=(1, 2, 4), lr=1e-2, steps=4, seeds=1)
    assert result.passed, result.summary()
