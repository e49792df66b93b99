"""Optimizers (DESIGN §3): AdamH vs an fp64 reference, norms, invariances, resume, schedules, tracker."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from lrtransfer.modeling import get_family
from lrtransfer.optim import (
    AdamH,
    EffectiveLRTracker,
    adamw_norm_theory,
    build_optimizer,
    build_scheduler,
    clip_grad_norm_,
    lr_multiplier,
)

VOCAB, SEQ = 64, 16




def tiny_gpt2(seed: int = 0, tie: bool = False, bias: bool = True) -> nn.Module:
    config_cls, model_cls = get_family("gpt2")
    torch.manual_seed(seed)
    cfg = config_cls(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=SEQ, tie_word_embeddings=tie, bias=bias,
    )
    return model_cls(cfg)


def batch(step: int, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, VOCAB, (n, SEQ), generator=g)


def backward(model: nn.Module, step: int, scale: float = 1.0) -> None:
    x = batch(step)
    (model(x, labels=x).loss * scale).backward()


def named(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


class Toy(nn.Module):
    """Hand-built module with a hand-written group spec: matrices of several shapes, a vector, an embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.emb = nn.Parameter(torch.randn(10, 8) * 0.5)
        self.w1 = nn.Parameter(torch.randn(8, 24) * 0.2)
        self.w2 = nn.Parameter(torch.randn(24, 8) * 0.2)
        self.bias = nn.Parameter(torch.zeros(8))

    def loss(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(step)
        idx = torch.randint(0, 10, (32,), generator=g)
        target = torch.randn(32, 8, generator=g)
        h = torch.tanh(self.emb[idx] @ self.w1) @ self.w2 + self.bias
        return ((h - target) ** 2).mean()

    def param_groups(self) -> list[dict]:
        def spec(name, role, names, wd):
            return {"name": name, "params": [getattr(self, n) for n in names], "param_names": names,
                    "role": role, "lr_mult": 1.0, "weight_decay_mult": wd, "eps_mult": 1.0}

        return [spec("emb", "embedding", ["emb"], 1.0), spec("mats", "matrix", ["w1", "w2"], 1.0),
                spec("vec", "vector", ["bias"], 0.0)]


# ---------------------------------------------------------------- AdamH vs an fp64 reference


def reference_adamh(params0, grads_per_step, hyperball, lrs, adam_lrs, wd, betas, eps):
    """Independent fp64 implementation of DESIGN §3.2, written from the formulas, one tensor at a time."""
    b1, b2 = betas
    w = {n: p.double().clone() for n, p in params0.items()}
    radius = {n: w[n].norm().item() for n in w if hyperball[n]}
    m = {n: torch.zeros_like(w[n]) for n in w}
    v = {n: torch.zeros_like(w[n]) for n in w}
    last_u = {}
    for t, grads in enumerate(grads_per_step, start=1):
        for n, g in grads.items():
            g = g.double()
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g * g
            u = last_u[n] = (m[n] / (1 - b1**t)) / ((v[n] / (1 - b2**t)).sqrt() + eps)
            if hyperball[n]:
                r = radius[n]
                w_prime = w[n] - lrs[n] * r * u / max(u.norm().item(), 1e-10)
                w[n] = r * w_prime / max(w_prime.norm().item(), 1e-10)
            else:
                w[n] = w[n] * (1 - adam_lrs[n] * wd[n]) - adam_lrs[n] * u
    return w, last_u


def test_adamh_matches_fp64_reference_over_20_steps():
    model = tiny_gpt2()
    groups = model.param_groups()
    opt = build_optimizer(groups, name="adamh", lr=0.05, adam_lr=3e-3, weight_decay=0.1)
    params0 = named(model)
    hyperball, lrs, adam_lrs, wd = {}, {}, {}, {}
    for g in opt.param_groups:
        for n in g["param_names"]:
            hyperball[n] = g["hyperball"]
            lrs[n] = adam_lrs[n] = g["lr"]
            wd[n] = g["weight_decay"]
    assert {g["name"]: g["hyperball"] for g in opt.param_groups} == {
        "embedding": False, "hidden_matrix": True, "hidden_vector": False, "final_norm": False, "lm_head": True}
    grads_per_step = []
    for step in range(20):
        backward(model, step)
        grads_per_step.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad()
    ref, ref_u = reference_adamh(params0, grads_per_step, hyperball, lrs, adam_lrs, wd, (0.9, 0.95), 1e-8)
    for n, p in model.named_parameters():
        assert rel_err(p.detach(), ref[n]) < 1e-6, n
        assert rel_err(opt.direction(p), ref_u[n]) < 1e-5, n  # the exposed u_t (fp32 moments)
        if hyperball[n]:
            assert opt.state[p]["R"] == pytest.approx(params0[n].double().norm().item(), rel=1e-7)


@pytest.mark.parametrize("lr", [1e-3, 0.5, 10.0])
def test_hyperball_norm_is_constant(lr):
    toy = Toy()
    opt = build_optimizer(toy.param_groups(), name="adamh", lr=lr, adam_lr=1e-2)
    r0 = {"w1": toy.w1.norm().item(), "w2": toy.w2.norm().item()}
    before = {"w1": toy.w1.detach().clone(), "w2": toy.w2.detach().clone()}
    for step in range(6):
        toy.loss(step).backward()
        opt.step()
        opt.zero_grad()
        for n in r0:
            assert getattr(toy, n).norm().item() == pytest.approx(r0[n], rel=1e-6)
    for n in r0:  # and the matrices did move, by roughly the prescribed relative step
        assert rel_err(getattr(toy, n).detach(), before[n]) > min(lr, 1.0) * 0.05


def test_update_invariant_to_loss_scale():
    """Loss × 1024 scales every gradient exactly; with ε → 0 the hyperball matrices must not notice.

    (No biases: GPT-2's key bias gets pure round-off gradients, which Adam amplifies to ±lr.)"""
    runs = []
    for scale in (1.0, 1024.0):
        model = tiny_gpt2(bias=False)
        opt = build_optimizer(model.param_groups(), name="adamh", lr=0.1, adam_lr=1e-2, eps=1e-16)
        for step in range(5):
            backward(model, step, scale)
            opt.step()
            opt.zero_grad()
        runs.append(named(model))
    for n in runs[0]:
        assert rel_err(runs[1][n], runs[0][n]) < 1e-6, n


def test_adam_groups_move_freely_and_equal_torch_adamw():
    """Embeddings, norms and biases under AdamH are plain AdamW: bitwise the torch foreach update."""
    model, twin = tiny_gpt2(), tiny_gpt2()
    opt = build_optimizer(model.param_groups(), name="adamh", lr=0.05, adam_lr=1e-2, weight_decay=0.1)
    free = [g for g in twin.param_groups() if g["role"] in ("embedding", "vector")]
    ref = torch.optim.AdamW(
        [{"params": g["params"], "weight_decay": 0.1 * g["weight_decay_mult"]} for g in free],
        lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=True,
    )
    start = named(model)
    for step in range(5):
        backward(model, step)
        for (_, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
        opt.zero_grad()
    twin_params = dict(twin.named_parameters())
    for g in free:
        for n in g["param_names"]:
            p = dict(model.named_parameters())[n]
            assert torch.equal(p.detach(), twin_params[n].detach()), n
    assert abs(model.transformer.wte.weight.norm() - start["transformer.wte.weight"].norm()) > 1e-2
    assert model.transformer.h[0].attn.c_attn.bias.norm() > 1e-2  # started at zero


def test_state_dict_resume_is_bitwise_and_keeps_radius():
    def make():
        model = tiny_gpt2()
        return model, build_optimizer(model.param_groups(), name="adamh", lr=0.1, adam_lr=1e-2)

    def train(model, opt, steps):
        for step in steps:
            backward(model, step)
            opt.step()
            opt.zero_grad()

    full_model, full_opt = make()
    train(full_model, full_opt, range(10))

    model, opt = make()
    train(model, opt, range(5))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2, opt2 = make()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    train(model2, opt2, range(5, 10))
    for (n, p), (_, q) in zip(model2.named_parameters(), full_model.named_parameters()):
        assert torch.equal(p, q), n

    # R is loaded, never recomputed: rescaling a matrix after loading does not change its radius.
    model3, opt3 = make()
    model3.load_state_dict(ckpt["model"])
    opt3.load_state_dict(ckpt["opt"])
    w = model3.transformer.h[0].mlp.c_fc.weight
    radius = opt3.state[w]["R"]
    assert radius == pytest.approx(tiny_gpt2().transformer.h[0].mlp.c_fc.weight.norm().item(), rel=1e-7)
    with torch.no_grad():
        w.mul_(3.0)
    train(model3, opt3, range(5, 6))
    assert w.norm().item() == pytest.approx(radius, rel=1e-6)


def test_adamh_rejects_weight_decay_on_hyperball_and_vectors():
    toy = Toy()
    with pytest.raises(ValueError, match="weight_decay"):
        AdamH([{"params": [toy.w1], "hyperball": True, "weight_decay": 0.1}])
    with pytest.raises(ValueError, match="ndim"):
        AdamH([{"params": [toy.bias], "hyperball": True}])
    with pytest.raises(ValueError, match="lr=-1"):
        AdamH([toy.w1], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        AdamH([toy.w1], betas=(0.9, 1.5))


# ---------------------------------------------------------------- factory


def test_factory_groups_adamw_and_adamh():
    config_cls, model_cls = get_family("gpt2")
    torch.manual_seed(0)
    model = model_cls(config_cls(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 max_position_embeddings=SEQ, parameterization="mup", base_hidden_size=32,
                                 tie_word_embeddings=False))
    spec = model.param_groups()
    spec[0]["eps"] = 1e-16  # an absolute ε overrides eps·eps_mult
    opt = build_optimizer(spec, name="adamw", lr=1e-2, weight_decay=0.1, eps=1e-8)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == len(spec)
    for g, s in zip(opt.param_groups, spec):
        assert g["lr"] == pytest.approx(1e-2 * s["lr_mult"])
        assert g["weight_decay"] == pytest.approx(0.1 * s["weight_decay_mult"])
        assert g["eps"] == (1e-16 if s is spec[0] else pytest.approx(1e-8 * s["eps_mult"]))
        assert (g["name"], g["role"], g["param_names"], g["lr_mult"]) == (
            s["name"], s["role"], s["param_names"], s["lr_mult"])
    assert any(s["lr_mult"] != 1.0 for s in spec)  # μP really exercises the multipliers

    opt = build_optimizer(spec, name="adamh", lr=0.02, adam_lr_ratio=0.5, weight_decay=0.1)
    for g, s in zip(opt.param_groups, spec):
        hyperball = s["role"] in ("matrix", "lm_head")
        assert g["hyperball"] is hyperball
        assert g["lr"] == pytest.approx((0.02 if hyperball else 0.01) * s["lr_mult"])
        assert g["weight_decay"] == (0.0 if hyperball else pytest.approx(0.1 * s["weight_decay_mult"]))
    opt = build_optimizer(spec, name="adamh", lr=0.02, adam_lr=3e-3)
    assert [g["lr"] / g["lr_mult"] for g in opt.param_groups if not g["hyperball"]] == pytest.approx([3e-3] * 3)


BAD_FACTORY = [
    (dict(name="sgd"), "optimizer='sgd'.*adamw"),
    (dict(lr=-1.0), "lr=-1.0"),
    (dict(lr=float("nan")), "lr=nan"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(betas=(1.0, 0.9)), "betas"),
    (dict(eps=0.0), "eps=0.0"),
    (dict(adam_lr=1e-3), "adam_lr"),
    (dict(name="adamh", adam_lr_ratio=0.0), "adam_lr_ratio"),
]


@pytest.mark.parametrize("kwargs,match", BAD_FACTORY)
def test_factory_rejects_bad_values(kwargs, match):
    toy = Toy()
    kwargs = {"lr": 1e-2, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_optimizer(toy.param_groups(), **kwargs)


def test_factory_rejects_bad_specs():
    toy = Toy()
    spec = toy.param_groups()
    with pytest.raises(ValueError, match="role='conv'.*allowed"):
        build_optimizer([{**spec[0], "role": "conv"}], lr=1e-2)
    with pytest.raises(ValueError, match="lacks key.*lr_mult"):
        build_optimizer([{k: v for k, v in spec[0].items() if k != "lr_mult"}], lr=1e-2)
    with pytest.raises(ValueError, match="appears in both"):
        build_optimizer(spec + [spec[1]], lr=1e-2)
    with pytest.raises(ValueError, match="2-D"):
        build_optimizer([{**spec[2], "role": "matrix"}], name="adamh", lr=1e-2)
    with pytest.raises(ValueError, match="non-empty"):
        build_optimizer([], lr=1e-2)


# ---------------------------------------------------------------- schedules


def test_wsd_and_cosine_values_at_key_steps():
    wsd = dict(kind="wsd", total_steps=100, warmup_steps=10)
    assert lr_multiplier(0, **wsd) == pytest.approx(0.1)
    assert lr_multiplier(9, **wsd) == 1.0
    assert lr_multiplier(50, **wsd) == 1.0
    assert lr_multiplier(80, **wsd) == 1.0  # decay start (fraction 0.2): still 1
    assert lr_multiplier(90, **wsd) == pytest.approx(0.5)
    assert lr_multiplier(99, **wsd) == pytest.approx(0.05)
    assert lr_multiplier(100, **wsd) == 0.0
    assert lr_multiplier(90, **wsd, decay_shape="1-sqrt") == pytest.approx(1 - math.sqrt(0.5))
    assert lr_multiplier(95, **wsd, decay_shape="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_multiplier(90, **wsd, final_ratio=0.1) == pytest.approx(0.55)
    assert lr_multiplier(120, **wsd, final_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier(70, **wsd, decay_steps=40) == pytest.approx(0.75)  # steps override the fraction
    cos = dict(kind="cosine", total_steps=110, warmup_steps=10, final_ratio=0.1)
    assert lr_multiplier(4, **cos) == pytest.approx(0.5)
    assert lr_multiplier(10, **cos) == 1.0
    assert lr_multiplier(60, **cos) == pytest.approx(0.55)
    assert lr_multiplier(110, **cos) == pytest.approx(0.1)
    assert lr_multiplier(3, kind="constant", total_steps=100, warmup_steps=4) == 1.0
    assert lr_multiplier(1, kind="constant", total_steps=100, warmup_steps=4) == 0.5


def test_scheduler_multiplies_each_group_base_lr():
    toy = Toy()
    spec = toy.param_groups()
    spec[1]["lr_mult"] = 0.25
    opt = build_optimizer(spec, lr=1e-2)
    sched = build_scheduler(opt, kind="wsd", total_steps=20, warmup_steps=4)
    for step in range(20):
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(
            [1e-2 * g["lr_mult"] * lr_multiplier(step, kind="wsd", total_steps=20, warmup_steps=4)
             for g in opt.param_groups])
        toy.loss(step).backward()
        opt.step()
        opt.zero_grad()
        sched.step()


def test_decay_branch_from_trunk_checkpoint_equals_uninterrupted_run():
    def run(total, steps, init=None):
        toy = Toy()
        opt = build_optimizer(toy.param_groups(), name="adamh", lr=0.05, adam_lr=1e-2)
        sched = build_scheduler(opt, kind="wsd", total_steps=total, warmup_steps=5, decay_shape="1-sqrt")
        start = 0
        if init is not None:
            toy.load_state_dict(init["model"])
            opt.load_state_dict(init["opt"])
            sched.load_state_dict(init["sched"])
            start = init["step"]
        lrs = []
        for step in range(start, steps):
            lrs.append([g["lr"] for g in opt.param_groups])
            toy.loss(step).backward()
            opt.step()
            opt.zero_grad()
            sched.step()
        state = {"model": copy.deepcopy(toy.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
                 "sched": sched.state_dict(), "step": steps}
        return lrs, state, toy

    full_lrs, _, full = run(50, 50)
    _, trunk_ckpt, _ = run(150, 40)  # trunk of a longer run, stopped at the branch's decay start (50 - 10)
    branch_lrs, _, branch = run(50, 50, init=trunk_ckpt)
    assert branch_lrs == full_lrs[40:]
    assert full_lrs[-1][1] < full_lrs[39][1]  # the branch really decayed
    for p, q in zip(branch.parameters(), full.parameters()):
        assert torch.equal(p, q)


BAD_SCHEDULE = [
    (dict(kind="step"), "kind='step'.*wsd"),
    (dict(total_steps=0), "total_steps=0"),
    (dict(total_steps=10.5), "total_steps"),
    (dict(warmup_steps=-1), "warmup_steps=-1"),
    (dict(warmup_steps=90), "warmup_steps=90.*decay"),
    (dict(decay_fraction=1.5), "decay_fraction=1.5"),
    (dict(decay_steps=101), "decay_steps=101"),
    (dict(decay_shape="exp"), "decay_shape='exp'.*1-sqrt"),
    (dict(final_ratio=2.0), "final_ratio=2.0"),
    (dict(final_ratio=float("nan")), "final_ratio"),
]


@pytest.mark.parametrize("kwargs,match", BAD_SCHEDULE)
def test_schedule_rejects_bad_values(kwargs, match):
    kwargs = {"kind": "wsd", "total_steps": 100, **kwargs}
    with pytest.raises(ValueError, match=match):
        lr_multiplier(0, **kwargs)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=match):
        build_scheduler(opt, **kwargs)
    with pytest.raises(ValueError, match="step=-1"):
        lr_multiplier(-1, kind="wsd", total_steps=10)


# ---------------------------------------------------------------- tracker


def test_tracker_adamw_norm_identity_and_chord():
    model = tiny_gpt2()
    opt = build_optimizer(model.param_groups(), name="adamw", lr=2e-2, weight_decay=0.1)
    tracker = EffectiveLRTracker(opt, every=1)
    lam = {n: (g["lr"], g["weight_decay"]) for g in opt.param_groups for n in g["param_names"]}
    logs = []
    params = dict(model.named_parameters())
    for step in range(6):
        backward(model, step)
        before = named(model)
        tracker.before_step(step)
        opt.step()
        out = tracker.after_step(step)
        opt.zero_grad()
        logs.append(out)
        name = "transformer.h.1.mlp.c_fc.weight"  # chord vs a direct fp64 computation
        w0, w1 = before[name].double(), params[name].detach().double()
        assert out[f"eta_eff/{name}"] == pytest.approx((w1 / w1.norm() - w0 / w0.norm()).norm().item(), rel=1e-6)
    matrices = [n for g in opt.param_groups if g["role"] == "matrix" for n in g["param_names"]]
    tracked = matrices + ["transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"]
    for t in range(5):
        for n in tracked:
            lr, wd = lam[n]
            a = 1 - lr * wd
            w_sq, u_sq, c = logs[t][f"wnorm/{n}"] ** 2, logs[t][f"unorm2/{n}"], logs[t][f"c/{n}"]
            predicted = a * a * w_sq + lr * u_sq * (lr + 2 * a * c)
            assert logs[t + 1][f"wnorm/{n}"] ** 2 == pytest.approx(predicted, rel=1e-6), (t, n)
        assert logs[t]["eta_eff/block_mean"] == pytest.approx(sum(logs[t][f"eta_eff/{n}"] for n in matrices) / len(matrices))
        assert logs[t]["wnorm/block_mean"] == pytest.approx(sum(logs[t][f"wnorm/{n}"] for n in matrices) / len(matrices))
    assert not any(k.endswith("ln_1.weight") for k in logs[0])  # vectors are not tracked
    assert tracker.eta_eff_mean == pytest.approx(sum(x["eta_eff/block_mean"] for x in logs) / 6)


def test_tracker_samples_every_k_and_resumes():
    toy = Toy()
    opt = build_optimizer(toy.param_groups(), name="adamw", lr=1e-2)
    tracker = EffectiveLRTracker(opt, every=3)
    outs = []
    for step in range(7):
        toy.loss(step).backward()
        tracker.before_step(step)
        opt.step()
        outs.append(tracker.after_step(step))
        opt.zero_grad()
    assert [o is not None for o in outs] == [True, False, False, True, False, False, True]
    assert set(outs[0]) >= {"eta_eff/block_mean", "wnorm/block_mean", "eta_eff/w1", "c/w2", "unorm2/emb"}
    other = EffectiveLRTracker(opt, every=3)
    other.load_state_dict(tracker.state_dict())
    assert other.eta_eff_mean == tracker.eta_eff_mean
    with pytest.raises(ValueError, match="every"):
        EffectiveLRTracker(opt, every=0)
    with pytest.raises(ValueError, match="unsupported"):
        EffectiveLRTracker(torch.optim.SGD(toy.parameters(), lr=0.1), every=1)


def test_adamh_chord_equals_lr_for_tangent_updates():
    """u ⟂ W: the chord is exactly √(2 − 2/√(1+η²)) ≈ η; in general it follows from c and ‖u‖."""
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        for lr in (1e-3, 0.1, 0.5):
            w = nn.Parameter(torch.ones(4, 4, dtype=dtype))
            opt = AdamH([{"params": [w], "hyperball": True, "role": "matrix", "param_names": ["w"]}], lr=lr)
            tracker = EffectiveLRTracker(opt, every=1)
            checker = (torch.arange(4)[:, None] + torch.arange(4)[None, :]).remainder(2) * 2 - 1
            w.grad = checker.to(dtype)  # Adam's first direction is ±1/(1+ε): orthogonal to W = ones
            tracker.before_step(0)
            opt.step()
            out = tracker.after_step(0)
            assert abs(out["c/w"]) < 1e-12
            assert out["eta_eff/w"] == pytest.approx(math.sqrt(2 - 2 / math.sqrt(1 + lr * lr)), rel=tol)
            assert out["eta_eff/w"] == pytest.approx(lr, rel=lr * lr + tol)
    model = tiny_gpt2()
    opt = build_optimizer(model.param_groups(), name="adamh", lr=0.05, adam_lr=1e-2)
    tracker = EffectiveLRTracker(opt, every=1)
    for step in range(3):
        backward(model, step)
        tracker.before_step(step)
        opt.step()
        out = tracker.after_step(step)
        opt.zero_grad()
        for n in ("transformer.h.0.attn.c_attn.weight", "lm_head.weight"):
            cos = -out[f"c/{n}"] * math.sqrt(out[f"unorm2/{n}"]) / out[f"wnorm/{n}"]  # cos∠(u, W)
            new = math.sqrt(1 - 2 * 0.05 * cos + 0.05**2)
            assert out[f"eta_eff/{n}"] == pytest.approx(math.sqrt(2 - 2 * (1 - 0.05 * cos) / new), rel=1e-5)


def test_adamw_norm_theory_recursion_and_equilibrium():
    norms = adamw_norm_theory([0.1, 0.2], weight_decay=0.5, w0_sq=4.0, u_sq=9.0)
    assert norms[0] == 2.0
    assert norms[1] ** 2 == pytest.approx(0.95**2 * 4 + 0.01 * 9)
    assert norms[2] ** 2 == pytest.approx(0.9**2 * norms[1] ** 2 + 0.04 * 9)
    lr, lam, u2 = 1e-3, 0.1, 100.0
    eq = adamw_norm_theory([lr] * 200_000, weight_decay=lam, w0_sq=0.0, u_sq=u2)[-1] ** 2
    assert eq == pytest.approx(lr * u2 / (2 * lam), rel=1e-3)  # η·U²/(2λ), DESIGN §3.4
    with pytest.raises(ValueError, match="u_sq"):
        adamw_norm_theory([0.1, 0.2], weight_decay=0.1, w0_sq=1.0, u_sq=[1.0])


def test_clip_grad_norm_matches_fp64_and_clips():
    toy = Toy()
    toy.loss(0).backward()
    grads = [p.grad.double().clone() for p in toy.parameters()]
    norm = torch.cat([g.flatten() for g in grads]).norm().item()
    assert clip_grad_norm_(toy.parameters(), max_norm=1e6) == pytest.approx(norm, rel=1e-6)
    assert clip_grad_norm_(toy.parameters(), max_norm=norm / 4) == pytest.approx(norm, rel=1e-6)
    clipped = torch.cat([p.grad.double().flatten() for p in toy.parameters()]).norm().item()
    assert clipped == pytest.approx(norm / 4, rel=1e-5)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm_(toy.parameters(), max_norm=0.0)
