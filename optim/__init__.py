"""Optimizers built from a model's parameter-group spec, schedules and effective-LR tracking."""

from .adamh import AdamH, adam_direction
from .clip import clip_grad_norm_
from .factory import HYPERBALL_ROLES, OPTIMIZERS, build_optimizer
from .schedules import DECAY_SHAPES, KINDS, build_scheduler, lr_multiplier
from .tracker import EffectiveLRTracker, adamw_equilibrium_eta_eff, adamw_norm_theory

__all__ = [
    "AdamH",
    "DECAY_SHAPES",
    "EffectiveLRTracker",
    "HYPERBALL_ROLES",
    "KINDS",
    "OPTIMIZERS",
    "adam_direction",
    "adamw_equilibrium_eta_eff",
    "adamw_norm_theory",
    "build_optimizer",
    "build_scheduler",
    "clip_grad_norm_",
    "lr_multiplier",
]
