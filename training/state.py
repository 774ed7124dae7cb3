"""
The run's state and its checkpoints: the counters of the run (Progress), the parts of a run (Run, wired by
train.build), and the checkpoint assembled from what each part owns, so that a resumed run continues exactly.
"""

import dataclasses
import math
import os
from dataclasses import dataclass

import torch.distributed as torch_dist

from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, rng_state, set_rng_state


@dataclass
class Progress:
    iter_num: int = 0  # optimizer steps done
    best_val_loss: float = math.inf
    train_time: float = 0.0  # seconds of training: evaluation, checkpointing and compilation left out
    wandb_run_id: str = None  # the wandb run a resumed run continues


@dataclass
class Run:
    """The parts of one run, each the owner of its state (train.build wires them)."""
    cfg: object
    dist: object
    network: object  # training.step.Network
    optimizer: object
    precision: object  # training.step.Precision
    train_data: object  # training.batches.Batches
    val_data: object
    step: object  # training.step.TrainStep
    evaluate: object  # training.evaluation.Evaluator
    window: object  # training.log_window.LogWindow
    progress: Progress
    diagnostics: bool  # the optimizer's diagnostics join each record

    def iteration(self):
        """One training iteration (train.py's and bench.py's): the step and, when due, the Hessian refresh; the
        step before a record also measures its update. Returns the batch's mean loss (a device tensor)."""
        it = self.progress.iter_num
        loss, grad_norm, update_rms = self.step(it, measure_update=self.window.due(it + 1))
        self.window.add(loss, grad_norm, update_rms)
        self.progress.iter_num += 1
        return loss


def state_dict(run):
    """Everything needed to continue exactly (a collective under DDP: every rank must call it)."""
    dist = run.dist
    rng = [rng_state(dist.device)]
    if dist.world_size > 1:
        rng = [None] * dist.world_size
        torch_dist.all_gather_object(rng, rng_state(dist.device))
    return {
        "model": run.network.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "model_args": dataclasses.asdict(run.network.model.config),
        "config": dataclasses.asdict(run.cfg),
        **dataclasses.asdict(run.progress),
        "rng": rng,
        **run.train_data.state_dict(),
        **run.precision.state_dict(),
        **run.window.state_dict(),
    }


SAME_RUN = ("optimizer_name", "dataset", "total_bs", "seed")  # what a resume must keep (the model's shape too)


def load_state(run, ckpt):
    """Continue from a checkpoint; a different model shape or optimizer is a one-line error."""
    cfg, model = run.cfg, run.network.model
    try:
        ours = dataclasses.asdict(model.config)
        for key, value in ckpt["model_args"].items():
            if ours.get(key) != value:
                raise CheckpointError(f"the checkpoint's model has {key}={value!r}, the config {ours.get(key)!r}; "
                                      f"use the checkpoint's settings or another out_dir")
        for key in SAME_RUN:  # changing one of these would continue another run in the same log
            theirs = ckpt["config"][key]
            if theirs != getattr(cfg, key):
                raise CheckpointError(f"the checkpoint was trained with {key}={theirs!r}, the config asks for "
                                      f"{getattr(cfg, key)!r}: resume with the checkpoint's {key}, or start a new "
                                      f"run in another out_dir "
                                      f"(init_from=<the checkpoint's path> starts from its weights)")
        model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        keep_hessian_bs(run.optimizer, ckpt["config"])
        run.progress = Progress(**{f.name: ckpt[f.name] for f in dataclasses.fields(Progress)})
        run.train_data.load_state_dict(ckpt)
        run.precision.load_state_dict(ckpt)
        run.window.load_state_dict(ckpt, run.progress.train_time)
        if len(ckpt["rng"]) == run.dist.world_size:  # else a new number of processes: fresh streams
            set_rng_state(ckpt["rng"][run.dist.rank], run.dist.device)
    except (KeyError, RuntimeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        reason = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint in {cfg.out_dir} does not fit this run: {reason}") from None


def keep_hessian_bs(optimizer, config):
    """Sophia-G's checkpoints from before its optimizer kept its steps' bs (`hessian_bs`): the one the loop
    passed then, hess_total_bs * block_size."""
    if config["optimizer_name"] != "sophiag":
        return
    for group in optimizer.param_groups:
        if group.get("hessian_updates") and "hessian_bs" not in group:
            group["hessian_bs"] = (config["hess_total_bs"] or config["total_bs"]) * config["block_size"]


def load_weights(model, path):
    """Fine-tuning: start from the weights of a checkpoint (ours or the official code's) whose model is this
    config's, dropout aside."""
    if not os.path.exists(path):
        raise CheckpointError(f"init_from={path!r}: no such checkpoint")
    loaded = model_from_checkpoint(load_checkpoint(path))
    theirs, ours = dataclasses.asdict(loaded.config), dataclasses.asdict(model.config)
    for key, value in ours.items():
        if key != "dropout" and theirs[key] != value:
            raise CheckpointError(f"the checkpoint {path} has a model with {key}={theirs[key]!r}, the config "
                                  f"{value!r}: set --{key}={theirs[key]!r}")
    model.load_state_dict(loaded.state_dict())
