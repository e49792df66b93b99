"""GPT-2 SP / μP / CompleteP: the DESIGN §2.1 table, an fp64 reference forward, HF behaviour, remote code."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

import lrtransfer  # noqa: F401  (registers the Auto classes)
from lrtransfer.modeling.gpt2 import LRTGPT2Config, LRTGPT2ForCausalLM
from lrtransfer.optim import build_optimizer

SIGMA = 0.02
V, T = 97, 16





def make(**kw) -> LRTGPT2ForCausalLM:
    base = dict(vocab_size=V, max_position_embeddings=T, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                base_hidden_size=32, base_num_layers=2)
    base.update(kw)
    torch.manual_seed(0)
    return LRTGPT2ForCausalLM(LRTGPT2Config(**base))


# ---------- the DESIGN §2.1 table, written out independently of the model file ----------

def expected_init(p: str, m_n: float, layers: int) -> dict[str, float]:
    hidden = SIGMA if p == "sp" else SIGMA / math.sqrt(m_n)
    out = SIGMA / math.sqrt(2 * layers) if p == "sp" else SIGMA / math.sqrt(m_n)
    return {"embedding": SIGMA, "attn.c_attn": hidden, "mlp.c_fc": hidden, "attn.c_proj": out, "mlp.c_proj": out,
            "lm_head": SIGMA}


def expected_groups(p: str, m_n: float, m_l: float, a: float) -> dict[str, tuple[float, float, float]]:
    """group -> (lr_mult, weight_decay_mult, eps_mult)."""
    matrix = {"sp": (1, 1, 1), "mup": (1 / m_n, m_n, 1 / m_n),
              "completep": (m_l ** (a - 1) / m_n, m_n, 1 / (m_n * m_l**a))}[p]
    vector = {"sp": (1, 0, 1), "mup": (1, 0, 1), "completep": (m_l ** (a - 1), 0, m_l**-a)}[p]
    return {"embedding": (1, 1, 1), "hidden_matrix": matrix, "hidden_vector": vector, "final_norm": (1, 0, 1),
            "lm_head": (1, 1, 1)}


GRID = [(1, 1), (4, 1), (1, 4), (4, 4), (2, 2)]  # (m_N, m_L) with d_base = 32, L_base = 1


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("p", ["sp", "mup", "completep"])
def test_init_stds_and_group_multipliers_match_design_table(p: str, tied: bool) -> None:
    alpha = 0.5 if p == "completep" else 1.0  # a non-default depth exponent exercises α
    for m_n, m_l in GRID:
        d, L = 32 * m_n, m_l
        model = make(hidden_size=d, num_attention_heads=d // 16, num_hidden_layers=L, base_hidden_size=32,
                     base_num_layers=1, parameterization=p, tie_word_embeddings=tied, depth_alpha=alpha)
        params = dict(model.named_parameters())
        stds = expected_init(p, m_n, L)
        for key, std in stds.items():
            if key == "embedding":
                w = torch.cat([params["transformer.wte.weight"].flatten(), params["transformer.wpe.weight"].flatten()])
            elif key == "lm_head":
                if tied:
                    assert model.lm_head.weight is model.transformer.wte.weight
                    continue
                w = params["lm_head.weight"]
            else:
                w = torch.cat([params[f"transformer.h.{i}.{key}.weight"].flatten() for i in range(L)])
            assert w.std().item() == pytest.approx(std, rel=0.1), (p, m_n, m_l, key)
            assert w.mean().abs().item() < 0.2 * std
        for name, t in params.items():
            if name.endswith(".bias"):
                assert torch.all(t == 0), name
            if ".ln_" in name and name.endswith(".weight"):
                assert torch.all(t == 1), name

        groups = model.param_groups()
        want = expected_groups(p, m_n, m_l, alpha)
        got = {g["name"]: (g["lr_mult"], g["weight_decay_mult"], g["eps_mult"]) for g in groups}
        assert set(got) == set(want) - ({"lm_head"} if tied else set())
        for name, mults in got.items():
            assert mults == pytest.approx(want[name], rel=1e-12), (p, m_n, m_l, name)
        # every trainable parameter in exactly one group, names parallel to params, roles as in CONTRACTS
        seen = [id(q) for g in groups for q in g["params"]]
        assert sorted(seen) == sorted(id(q) for q in model.parameters()) and len(seen) == len(set(seen))
        for g in groups:
            assert [params[n] is q for n, q in zip(g["param_names"], g["params"])] == [True] * len(g["params"])
            assert all(q.ndim == 2 for q in g["params"]) == (g["role"] in ("embedding", "matrix", "lm_head"))
        roles = {g["name"]: g["role"] for g in groups}
        assert roles["hidden_matrix"] == "matrix" and roles["embedding"] == "embedding"
        # GPT-2's rules do not depend on the horizon
        again = {g["name"]: (g["lr_mult"], g["weight_decay_mult"], g["eps_mult"]) for g in model.param_groups(8.0)}
        assert again == got


def test_zero_init_lm_head_and_optimizer_from_spec() -> None:
    model = make(parameterization="mup", hidden_size=64, num_attention_heads=4, tie_word_embeddings=False,
                 zero_init_lm_head=True)
    assert torch.all(model.lm_head.weight == 0)
    opt = build_optimizer(model.param_groups(), lr=1e-3, weight_decay=0.1, eps=1e-8)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["hidden_matrix"]["lr"] == pytest.approx(1e-3 / 2)
    assert by_name["hidden_matrix"]["weight_decay"] == pytest.approx(0.1 * 2)
    assert by_name["hidden_matrix"]["eps"] == pytest.approx(1e-8 / 2)
    assert by_name["hidden_vector"]["weight_decay"] == 0.0


# ---------- forward: an fp64 reference with the table's multipliers ----------

def reference_logits(model: LRTGPT2ForCausalLM, ids: torch.Tensor, p: str, m_n: float, m_l: float, alpha: float,
                     a_in: float, a_out: float, base_head_dim: int) -> torch.Tensor:
    sd = {k: v.double() for k, v in model.state_dict().items()}
    cfg = model.config
    d, H, L = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers
    dh = d // H
    r = m_l**-alpha if p == "completep" else 1.0
    scale = dh**-0.5 if p == "sp" else math.sqrt(base_head_dim) / dh
    omega = a_out if p == "sp" else a_out / m_n
    B, n = ids.shape

    def ln(x, pre):
        return F.layer_norm(x, (d,), sd[pre + ".weight"], sd[pre + ".bias"], cfg.layer_norm_epsilon)

    def lin(x, pre):
        return x @ sd[pre + ".weight"].T + sd[pre + ".bias"]

    h = a_in * sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][:n]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for i in range(L):
        pre = f"transformer.h.{i}"
        q, k, v = lin(ln(h, pre + ".ln_1"), pre + ".attn.c_attn").split(d, dim=-1)
        q, k, v = (t.view(B, n, H, dh).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2) * scale).masked_fill(~causal, float("-inf")).softmax(-1)
        h = h + r * lin((att @ v).transpose(1, 2).reshape(B, n, d), pre + ".attn.c_proj")
        u = lin(ln(h, pre + ".ln_2"), pre + ".mlp.c_fc")
        u = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
        h = h + r * lin(u, pre + ".mlp.c_proj")
    h = ln(h, "transformer.ln_f")
    w_out = sd["transformer.wte.weight"] if cfg.tie_word_embeddings else sd["lm_head.weight"]
    return omega * h @ w_out.T


@pytest.mark.parametrize(
    "p,tied,a_in,a_out,base_head_dim",
    [("sp", True, 1.0, 1.0, None), ("sp", False, 2.0, 0.5, None), ("mup", True, 1.0, 3.0, None),
     ("mup", False, 1.5, 2.0, 8), ("completep", True, 1.0, 1.0, None), ("completep", False, 1.0, 4.0, 4)],
)
def test_forward_matches_fp64_reference(p: str, tied: bool, a_in: float, a_out: float, base_head_dim) -> None:
    model = make(hidden_size=64, num_attention_heads=4, num_hidden_layers=4, base_hidden_size=32, base_num_layers=2,
                 parameterization=p, tie_word_embeddings=tied, input_multiplier=a_in, output_multiplier=a_out,
                 base_head_dim=base_head_dim, depth_alpha=0.75, attn_implementation="sdpa").double()
    # perturb every weight so biases and LayerNorm parameters matter
    with torch.no_grad():
        for q in model.parameters():
            q.add_(0.05 * torch.randn_like(q))
    ids = torch.randint(0, V, (2, T))
    got = model(ids).logits
    want = reference_logits(model, ids, p, 2.0, 2.0, 0.75, a_in, a_out, base_head_dim or 16)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_loss_is_shifted_mean_cross_entropy() -> None:
    model = make()
    ids = torch.randint(0, V, (3, T))
    out = model(ids, labels=ids)
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, want)


def test_eager_equals_sdpa_with_and_without_padding() -> None:
    sdpa = make(attn_implementation="sdpa", parameterization="mup", hidden_size=64, num_attention_heads=4)
    eager = make(attn_implementation="eager", parameterization="mup", hidden_size=64, num_attention_heads=4)
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    ids = torch.randint(0, V, (2, T))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding
    torch.testing.assert_close(sdpa(ids).logits, eager(ids).logits, rtol=1e-5, atol=1e-5)
    real = mask.bool()  # padded query positions attend to nothing: their outputs are undefined in both
    torch.testing.assert_close(sdpa(ids, attention_mask=mask).logits[real], eager(ids, attention_mask=mask).logits[real],
                               rtol=1e-5, atol=1e-5)
    ids_ = ids.clone()
    ids_[0, :5] = 0  # padded positions do not leak into the others
    torch.testing.assert_close(eager(ids_, attention_mask=mask).logits[0, 5:],
                               eager(ids, attention_mask=mask).logits[0, 5:])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_generate_with_and_without_cache_gives_same_tokens(attn: str) -> None:
    model = make(attn_implementation=attn, num_hidden_layers=3).eval()
    ids = torch.randint(0, V, (2, 5))
    with_cache = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    without = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert with_cache.shape == (2, 11)
    assert torch.equal(with_cache, without)
    # the cached step computes the same logits as a full forward
    full = model(with_cache[:, :-1]).logits[:, -1]
    out = model(with_cache[:, :-2], use_cache=True)
    step = model(with_cache[:, -2:-1], past_key_values=out.past_key_values).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    model = make(parameterization="completep", num_hidden_layers=4)
    ids = torch.randint(0, V, (2, T))
    model(ids, labels=ids).loss.backward()
    ref = {n: q.grad.clone() for n, q in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model.train()
    model(ids, labels=ids).loss.backward()
    for n, q in model.named_parameters():
        torch.testing.assert_close(q.grad, ref[n], rtol=1e-5, atol=1e-7)


def test_num_non_embedding_params_is_tie_independent() -> None:
    for tied in (True, False):
        model = make(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, tie_word_embeddings=tied)
        d = 64
        assert model.num_non_embedding_params() == 3 * (12 * d * d + 13 * d) + 2 * d
        assert model.num_parameters() == model.num_non_embedding_params() + (V + T) * d + (0 if tied else V * d)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(parameterization="ntk"), "parameterization"),
        (dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_hidden_layers=-1), "num_hidden_layers"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(base_hidden_size=0), "base_hidden_size"),
        (dict(base_num_layers=0), "base_num_layers"),
        (dict(depth_alpha=0.0), "depth_alpha"),
        (dict(output_multiplier=-1.0), "output_multiplier"),
        (dict(input_multiplier=float("nan")), "input_multiplier"),
        (dict(initializer_range=0.0), "initializer_range"),
        (dict(layer_norm_epsilon=float("inf")), "layer_norm_epsilon"),
        (dict(parameterization="mup", hidden_size=64, num_attention_heads=4, base_hidden_size=40), "base_hidden_size"),
        (dict(base_head_dim=0), "base_head_dim"),
        (dict(zero_init_lm_head=True, tie_word_embeddings=True), "zero_init_lm_head"),
    ],
)
def test_bad_config_rejected(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field) as err:
        LRTGPT2Config(**kwargs)
    assert "allowed values" in str(err.value)


def test_auto_classes_registered() -> None:
    config = AutoConfig.for_model("lrt_gpt2", vocab_size=V, hidden_size=32, num_attention_heads=2,
                                  num_hidden_layers=1, max_position_embeddings=T)
    assert isinstance(AutoModelForCausalLM.from_config(config), LRTGPT2ForCausalLM)


def test_remote_code_loads_in_fresh_process_without_lrtransfer(tmp_path) -> None:
    model = make(parameterization="completep", hidden_size=64, num_attention_heads=4, num_hidden_layers=4,
                 tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["model_type"] == "lrt_gpt2"
    assert config["auto_map"] == {"AutoConfig": "configuration_lrt_gpt2.LRTGPT2Config",
                                  "AutoModelForCausalLM": "modeling_lrt_gpt2.LRTGPT2ForCausalLM"}
    folder = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "saved", folder)
    ids = torch.randint(0, V, (2, T))
    torch.save({"ids": ids, "logits": model(ids).logits.detach()}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["lrtransfer"] = None  # `import lrtransfer` now fails
        import torch
        from transformers import AutoModelForCausalLM
        try:
            import lrtransfer  # noqa
            raise SystemExit("lrtransfer importable")
        except ImportError:
            pass
        model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        exp = torch.load({str(tmp_path / "expected.pt")!r})
        torch.testing.assert_close(model(exp["ids"]).logits, exp["logits"], rtol=1e-6, atol=1e-6)
        print("OK", type(model).__name__)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK LRTGPT2ForCausalLM" in proc.stdout
