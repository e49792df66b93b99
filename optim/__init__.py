"""Optimizers built from a model's parameter-group spec, schedules and effective-LR tracking."""

from .factory import build_optimizer

__all__ = ["build_optimizer"]
