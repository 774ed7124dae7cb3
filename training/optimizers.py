"""
The optimizers train.py runs, by the name in its config (`optimizer_name`, whose valid values training/config.py
lists): how each is built from the config, its Hessian refresh (training/refresh.py), and whether it reports
Sophia's diagnostics. Adding an optimizer is one entry here and its name in the config.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from sophia import Lion, SophiaG, SophiaH
from training.config import OPTIMIZER_NAMES
from training.refresh import Hutchinson, gnb


@dataclass(frozen=True)
class OptimizerSpec:
    build: Callable  # (param groups, cfg, cuda) -> torch.optim.Optimizer, its hyperparameters from the config
    refresh: Optional[Callable] = None  # (cfg, ...) -> its Hessian refresh (training/refresh.py); None: none
    diagnostics: bool = False  # optimizer.diagnostics(param_sets=...) joins each log record


def sophia(cls):
    """A builder of a Sophia optimizer (SophiaG or SophiaH) from the config; rho None keeps the class's default."""
    def build(groups, cfg, cuda):
        rho = {} if cfg.rho is None else {"rho": cfg.rho}
        return cls(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                   bias_correction=cfg.hessian_bias_correction, **rho)
    return build


OPTIMIZERS = {
    "adamw": OptimizerSpec(lambda groups, cfg, cuda: torch.optim.AdamW(
        groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=cuda)),
    "lion": OptimizerSpec(lambda groups, cfg, cuda: Lion(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))),
    "sophiag": OptimizerSpec(sophia(SophiaG), refresh=gnb, diagnostics=True),
    "sophiah": OptimizerSpec(sophia(SophiaH), refresh=Hutchinson, diagnostics=True),
    # the control for Sophia-G's Hessian: its update with h never refreshed (h = 0 clips every coordinate),
    # i.e. sign descent with momentum beta1 and the same decoupled weight decay (Sophia-G's paper config)
    "signmomentum": OptimizerSpec(sophia(SophiaG), diagnostics=True),
}
assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES, "training/config.py lists the optimizers this registry builds"
