"""
The optimizers train.py runs, by the name in its config (`optimizer_name`): everything a name decides, in
one registry, so that adding an optimizer is one entry of OPTIMIZERS.
"""

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from sophia import Lion, SophiaG, SophiaH

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")


@dataclass(frozen=True)
class OptimizerSpec:
    """Everything an optimizer's name decides: adding an optimizer is one entry of OPTIMIZERS."""
    build: Callable  # (param groups, cfg, cuda) -> torch.optim.Optimizer, its hyperparameters from the config
    refresh: Optional[str] = None  # Hessian refresh after every hess_interval-th step: 'gnb', 'hutchinson' or None
    step_kwargs: Callable = lambda cfg: {}  # cfg -> extra arguments of optimizer.step()
    diagnostics: bool = False  # optimizer.diagnostics(**step_kwargs, param_sets=...) joins each log record
    paper: str = ""  # its paper config: config/train_gpt2_<size>_<paper>.py

    def paper_config(self, size="small"):
        """The path of its paper config for a model size (small, medium, large), which may not exist."""
        return os.path.join(CONFIG_DIR, f"train_gpt2_{size}_{self.paper}.py")


def sophia(cls):
    """A builder of a Sophia optimizer (SophiaG or SophiaH) from the config."""
    return lambda groups, cfg, cuda: cls(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), rho=cfg.rho,
                                         bias_correction=cfg.hessian_bias_correction)


OPTIMIZERS = {
    "adamw": OptimizerSpec(lambda groups, cfg, cuda: torch.optim.AdamW(
        groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=cuda), paper="adam"),
    "lion": OptimizerSpec(lambda groups, cfg, cuda: Lion(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2)),
                          paper="lion"),
    # Sophia-G's step needs the number of tokens behind its Hessian estimate (Sophia-H's is 1, its default)
    "sophiag": OptimizerSpec(sophia(SophiaG), refresh="gnb", diagnostics=True, paper="sophia",
                             step_kwargs=lambda cfg: {"bs": cfg.hess_total_bs * cfg.block_size}),
    "sophiah": OptimizerSpec(sophia(SophiaH), refresh="hutchinson", diagnostics=True, paper="sophiah"),
    # the control for Sophia-G's Hessian: its update with h never refreshed (h = 0 clips every coordinate),
    # i.e. sign descent with momentum beta1 and the same decoupled weight decay (Sophia-G's paper config)
    "signmomentum": OptimizerSpec(sophia(SophiaG), diagnostics=True, paper="sophia"),
}
