"""
Run metrics: `<out_dir>/metrics.jsonl` (one JSON object per line, flushed as written) and, when enabled,
wandb under the same names (the official Sophia code's: train/loss, val/loss, lr, mfu, train/win_rate,
hessian_norm, train/clip_rate, ...). Only rank 0 logs.

The first line of each (re)start is `{"config": {...}}`, the resolved configuration. Every other line has
`iter` (optimizer steps done), `tokens` (training tokens seen) and `time` (training seconds, without
evaluation and checkpointing). On resume, lines from iterations after the checkpoint are dropped before
appending, so no iteration is ever recorded twice.
"""

import dataclasses
import json
import os

from data.tokens import atomic_write


def read_metrics(path):
    """The records of a metrics.jsonl file, in order. A last line cut short (a kill mid-write) is dropped."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    return [json.loads(line) for line in lines]


def _before(record, resume_iter):
    """Whether a record belongs to the run up to a checkpoint at `resume_iter`: the training record of
    that iteration does, its evaluation does not (the resumed run evaluates there again)."""
    it = record.get("iter")
    return it is None or it < resume_iter or (it == resume_iter and "val/loss" not in record)


class MetricsLog:
    def __init__(self, cfg, resume_iter=None, wandb_run_id=None):
        self.path = os.path.join(cfg.out_dir, "metrics.jsonl")
        kept = []
        if resume_iter is not None and os.path.exists(self.path):
            kept = [r for r in read_metrics(self.path) if _before(r, resume_iter)]
        with atomic_write(self.path) as f:  # replaced whole, so a crash here loses nothing
            f.write("".join(json.dumps(r) + "\n" for r in kept).encode())
        self.file = open(self.path, "a")
        self.wandb = None
        self.write({"config": dataclasses.asdict(cfg)})
        if cfg.wandb_log:
            import wandb  # only when enabled: the GPU machines may not have it

            self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name,
                                    group=cfg.wandb_group or None, config=dataclasses.asdict(cfg),
                                    id=wandb_run_id, resume="allow")

    @property
    def wandb_run_id(self):
        return self.wandb.id if self.wandb else None

    def write(self, record):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb and "iter" in record:
            self.wandb.log({k: v for k, v in record.items() if k != "iter"}, step=record["iter"])

    def close(self):
        self.file.close()
        if self.wandb:
            self.wandb.finish()
