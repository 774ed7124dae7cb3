"""
Run metrics: the run folder's metrics file (training/rundir.py; one JSON object per line, flushed as written)
and, when enabled, wandb under the same names (the official Sophia code's: train/loss, val/loss, lr, mfu,
train/win_rate, hessian_norm, train/clip_rate, ...). Only rank 0 logs.

The file is only ever appended to. The first line of each (re)start is `{"config": {...}}`, the resolved
configuration, and `"machine"`, where that process ran (host name, accelerator, and a GPU's UUID: runs are
timed on machines that differ, and only times from one machine compare exactly); a resumed run's adds
`"resumed_from": <the checkpoint's iteration>`. Every other line has
`iter` (optimizer steps done), `tokens` (training tokens seen) and `time` (training seconds, without
evaluation and checkpointing). Lines that the interrupted process wrote after its checkpoint stay in the
file, and read_metrics, the one reader of the format, leaves them out: the resumed run logs those
iterations again.
"""

import dataclasses
import json
import os
import socket
import sys


class MetricsError(ValueError):
    pass


def read_metrics(path):
    """The records of a metrics file as the run stands, in order. A resumed process's first line
    (`resumed_from`: its checkpoint's iteration) voids the records of later iterations, which the resumed
    run logs again, and a record logged again (an evaluation repeated at the checkpoint's iteration)
    replaces the earlier one. A last line cut short (a kill mid-write) is dropped; any other line that is
    not JSON is an error."""
    with open(path) as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines[:-1], 1):  # the text after the last newline is a torn record or empty
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise MetricsError(f"{path}: line {number} is not JSON; was the file edited by hand?") from None
        if "resumed_from" in record:
            records = [r for r in records if r.get("iter", -1) <= record["resumed_from"]]
        records.append(record)
    latest, seen = [], set()
    for record in reversed(records):
        key = (record["iter"], "val/loss" in record) if "iter" in record else None
        if key is None or key not in seen:
            latest.append(record)
            seen.add(key)
    return latest[::-1]


def _drop_torn_last_line(path):
    """Cut a record that a killed process left half-written, so the next record starts on a line of its own."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def machine(device):
    """Where this process runs: two H200s of one model can differ by 5% in speed (docs/studies.md)."""
    import torch  # here, not above: the report tools read metrics files without torch

    if not (device.startswith("cuda") and torch.cuda.is_available()):
        return {"host": socket.gethostname(), "accelerator": "cpu"}
    # the GPU's UUID tells two machines apart where their host names are alike (on the study's machines: "vm")
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    return {"host": socket.gethostname(), "accelerator": torch.cuda.get_device_name(device),
            "accelerator_id": None if uuid is None else str(uuid)}


class MetricsLog:
    def __init__(self, path, cfg, resume_iter=None, wandb_run_id=None):
        self.path = path
        if os.path.exists(self.path):
            _drop_torn_last_line(self.path)
        self.file = open(self.path, "a")
        self.wandb = None
        start = {"config": dataclasses.asdict(cfg), "machine": machine(cfg.device)}
        self.write(start if resume_iter is None else {**start, "resumed_from": resume_iter})
        if cfg.wandb_log:
            self.wandb = start_wandb(cfg, wandb_run_id)

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


WANDB_TIMEOUT = 30.0  # seconds wandb may take to start a run (WANDB_INIT_TIMEOUT overrides it)


def start_wandb(cfg, run_id):
    """The run's wandb run. If wandb cannot start it within the timeout (no network, a server that does not
    answer, a key it refuses), one line says so and the run goes on logging to wandb offline, to sync later."""
    import wandb  # only when enabled: the GPU machines may not have it

    settings = dict(project=cfg.wandb_project, name=cfg.wandb_run_name, group=cfg.wandb_group or None,
                    config=dataclasses.asdict(cfg), id=run_id, resume="allow")
    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", WANDB_TIMEOUT))
    try:
        return wandb.init(**settings, settings=wandb.Settings(init_timeout=timeout))
    except Exception as e:  # wandb's own errors (CommError, UsageError, ...): all mean it did not start
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        run = wandb.init(**settings, mode="offline")
        print(f"note: wandb did not start the run within {timeout:g} s ({reason}); logging to wandb offline instead: "
              f"upload it later with `wandb sync {os.path.dirname(run.dir)}`", file=sys.stderr, flush=True)
        return run


def check_wandb(cfg):
    """wandb_log=True needs wandb and, unless WANDB_MODE is offline or disabled, a login: checked before the
    run starts (else wandb.init fails, or waits at a prompt, once the run is under way)."""
    if not cfg.wandb_log:
        return
    try:
        import wandb
    except ImportError:
        raise MetricsError("wandb_log=True but wandb is not installed: `pip install wandb`, or "
                           "--wandb_log=False") from None
    if os.environ.get("WANDB_MODE") not in ("offline", "disabled", "dryrun") and not wandb.login(prompt=False,
                                                                                               verify=False):
        raise MetricsError("wandb_log=True but wandb is not logged in: run `wandb login`, or set "
                           "WANDB_MODE=offline to log locally (and `wandb sync` later)")
