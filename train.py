"""
Train a GPT-2 model with AdamW, Lion, Sophia-G or Sophia-H: one training loop for every optimizer.

    python train.py config/train_cpu_demo.py                    # CPU, a few minutes
    python train.py config/train_gpt2_small_sophia.py           # one GPU
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_small_sophia.py

Configuration: training/config.py (every key, its default and meaning). Sophia's Hessian refresh is part of
the step, taken every `hess_interval` iterations after that iteration's update, as in the official code
(training/refresh.py): Sophia-G backpropagates the mean cross-entropy against labels sampled from the model
(Gauss-Newton-Bartlett), Sophia-H a Hessian-vector product with a random sign vector (Hutchinson).
"""

import ctypes
import dataclasses
import math
import os
import sys
import time
import traceback

import torch
import torch.distributed as torch_dist

from data.tokens import DatasetError
from training.batches import Batches, dataset_dir
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.config import ConfigError, describe_keys, load_config
from training.distributed import StopRequest, agree, global_mean, init_distributed, synchronize
from training.evaluation import Evaluator
from training.log_window import LogWindow, Stopwatch
from training.metrics import MetricsError, MetricsLog, check_wandb
from training.optimizers import OPTIMIZERS
from training.progress import Eta, duration, warn_if_too_big_for_the_cpu
from training.refresh import Refresh
from training.rundir import RunDir, RunDirError
from training.state import Progress, Run, load_state, load_weights, state_dict
from training.step import Precision, TrainStep, build_network
from training.tokenizer import N_VOCAB


def build(cfg, dist):
    """The parts of a run, wired: from scratch, from a checkpoint's weights (init_from=<path>.pt), or resumed."""
    torch.manual_seed(cfg.seed + dist.rank)  # dropout differs across ranks; data does not (see Batches)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    network = build_network(cfg, dist)
    precision = Precision(cfg, dist.device_type)
    data_dir = dataset_dir(cfg.dataset)
    train_data, val_data = (Batches(data_dir, split, cfg, dist, N_VOCAB) for split in ("train", "val"))
    spec = OPTIMIZERS[cfg.optimizer_name]
    optimizer = spec.build(network.model.optim_groups(cfg.weight_decay), cfg, dist.device_type == "cuda")
    refresh = (spec.refresh or Refresh)(cfg, dist, network, optimizer, precision, train_data)
    run = Run(cfg, dist, network, optimizer, precision, train_data, val_data,
              step=TrainStep(cfg, network, optimizer, precision, train_data, refresh),
              evaluate=Evaluator(cfg, dist, network, precision, train_data, val_data),
              window=LogWindow(cfg, dist), progress=Progress(), diagnostics=spec.diagnostics)
    if cfg.init_from == "resume":
        load_state(run, load_checkpoint(RunDir(cfg.out_dir).checkpoint))
    elif cfg.init_from.endswith(".pt"):
        load_weights(network.model, cfg.init_from)
    return run


def keep_freed_memory():
    """For CPU runs on glibc: keep freed memory in the process instead of returning it to the OS. PyTorch takes
    CPU tensors straight from malloc, and glibc maps each large block afresh and unmaps it when freed, so every
    iteration's logits page-faulted in again (docs/performance.md). Elsewhere this does nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # macOS, musl: another allocator
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def usage():
    return (__doc__.strip() + "\n\nConfig keys and their defaults (set them in a config file or as "
            "--key=value):\n" + describe_keys())


def line(*text):
    """One line on stdout in one write, flushed: lines of several processes sharing a log never interleave."""
    sys.stdout.write(" ".join(map(str, text)) + "\n")
    sys.stdout.flush()


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def start(argv, stop):
    """The run's config, processes and parts, with its folder claimed by rank 0 (which settles how the run
    starts: init_from 'auto' resolved). A problem is a one-line error, and a stop requested meanwhile ends the
    start; after either, nothing that this start created remains."""
    rundir, init_from = None, None
    try:
        cfg = load_config(argv)
        cfg, dist = init_distributed(cfg)
        if dist.is_master:
            check_wandb(cfg)
            rundir = RunDir(cfg.out_dir)
            init_from, notes = rundir.claim(cfg.init_from, cfg.overwrite)
            for note in notes:
                line(f"note: {note}")
        cfg = dataclasses.replace(cfg, init_from=agree(init_from, dist))
        if dist.device == "cpu":
            keep_freed_memory()
        run = build(cfg, dist)
    except (ConfigError, DatasetError, CheckpointError, RunDirError, MetricsError) as e:
        if rundir:
            rundir.abandon()
        fail(e)
    if stop.agreed(dist):
        if rundir:
            rundir.abandon()
        line("stop requested before the first iteration: nothing was written")
        sys.exit(0)
    if run.progress.iter_num >= cfg.max_iters and not cfg.eval_only:
        line(f"the run in {cfg.out_dir} is already at iteration {run.progress.iter_num}, max_iters={cfg.max_iters}: "
             f"nothing to train (raise max_iters to train on)")
        sys.exit(0)
    return cfg, dist, run, rundir


def train(run, stop):
    """Train to max_iters (or until `stop` is requested), evaluating, logging and checkpointing."""
    cfg, dist, progress, window = run.cfg, run.dist, run.progress, run.window
    files = RunDir(cfg.out_dir)
    log = None

    def say(*text):  # rank 0 speaks for the run
        if dist.is_master:
            line(*text)

    def check_finite(value, what):
        if not math.isfinite(value):
            fail(f"{what} is {value} at iteration {progress.iter_num}; stopping without saving. The last good "
                 f"checkpoint is {files.checkpoint} (if any): resume from it with a lower learning_rate or "
                 f"stronger grad_clip")

    def stopping():
        return stop.agreed(dist)

    def save():
        state = state_dict(run)  # a collective: every rank assembles its part
        if dist.is_master:
            save_checkpoint(state, files.checkpoint)
            say(f"saved {files.checkpoint} at iteration {progress.iter_num}")

    model, tokens_per_iter = run.network.model, window.tokens_per_iter
    resumed = cfg.init_from == "resume"
    if dist.is_master:
        say("config:", dataclasses.asdict(cfg))
        say(f"model: {model.num_params() / 1e6:.2f}M parameters; {cfg.gradient_accumulation_steps} micro-steps of "
            f"{cfg.batch_size} x {cfg.block_size} tokens on each of {dist.world_size} process(es); "
            f"{tokens_per_iter:,} tokens per iteration")
        if resumed:
            say(f"resuming {files.checkpoint} at iteration {progress.iter_num} of {cfg.max_iters}")
        if dist.device_type == "cpu":
            warn_if_too_big_for_the_cpu(model, tokens_per_iter / dist.world_size, cfg.batch_size)
        log = MetricsLog(files.metrics, cfg, resume_iter=progress.iter_num if resumed else None,
                         wandb_run_id=progress.wandb_run_id)
        progress.wandb_run_id = log.wandb_run_id

    clock, eta = Stopwatch(dist.world_size, dist.control_group), Eta(cfg.max_iters)
    saved_at = progress.iter_num if resumed else None
    losses, stopped = None, False
    while True:
        it = progress.iter_num
        if it % cfg.eval_interval == 0 or it == cfg.max_iters or cfg.eval_only:
            synchronize(dist.device)
            progress.train_time += clock.lap()
            val = "all of val" if cfg.val_eval == "full" else f"{cfg.eval_iters} of val"
            say(f"iter {it}: evaluating ({cfg.eval_iters} batches of train, {val})")
            started = time.perf_counter()
            losses = run.evaluate(stopping)
            if losses is None:
                stopped = True
                break
            check_finite(losses["val"], "the validation loss")
            if log:
                say(f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
                    f"({duration(time.perf_counter() - started)})")
                log.write({"iter": it, "tokens": it * tokens_per_iter, "time": progress.train_time,
                           "val/loss": losses["val"], "eval/train_loss": losses["train"]})
            improved = losses["val"] < progress.best_val_loss
            progress.best_val_loss = min(progress.best_val_loss, losses["val"])
            due = cfg.checkpoint_interval == 0 or it % cfg.checkpoint_interval == 0
            if it > 0 and saved_at != it and due and (improved or cfg.always_save_checkpoint) and not cfg.eval_only:
                save()
                saved_at = it
            clock.restart()
        if it >= cfg.max_iters or cfg.eval_only:
            break

        run.iteration()  # one optimizer step, and the Hessian refresh when it is due
        if window.due(progress.iter_num):
            progress.train_time += clock.lap()
            record = window.record(progress.iter_num, progress.train_time, model, run.optimizer, run.diagnostics)
            check_finite(record["train/loss"], "the training loss")
            if log:
                log.write(record)
                mfu = f"{100 * record['mfu']:.1f}%" if "mfu" in record else "n/a"
                say(f"iter {record['iter']}/{cfg.max_iters}: loss {record['train/loss']:.4f}, lr {record['lr']:.2e}, "
                    f"{record['ms_per_iter']:.1f} ms/iter, {record['tokens_per_s']:,.0f} tokens/s, mfu {mfu}, "
                    f"eta {eta(progress.iter_num, record['ms_per_iter'] / 1000)}")
        if stopping():
            check_finite(global_mean(window.loss_sum, dist), "the training loss")
            stopped = True
            break

    if stopped:
        if dist.world_size > 1:  # every rank says where it stopped: they must agree
            line(f"rank {dist.rank}: stopping at iteration {progress.iter_num}")
        say(f"stop requested: saving a checkpoint at iteration {progress.iter_num} and exiting")
    if saved_at != progress.iter_num and not cfg.eval_only:
        synchronize(dist.device)
        progress.train_time += clock.lap()
        save()
    if log:
        log.close()
    if stopped:
        say("stopped: continue with the same command and --init_from=resume")
    elif not cfg.eval_only:
        say(f"finished {cfg.max_iters} iterations: val loss {losses['val']:.4f} (best {progress.best_val_loss:.4f}); "
            f"{files.checkpoint}, {files.metrics}")


def lost_the_others(error, run):
    """A process of a multi-process run failed (or one died and the others' collectives failed or timed out
    after dist_timeout seconds): say so in one line after the traceback, and exit at once, since the
    collectives in flight would block an orderly shutdown."""
    cfg, dist = run.cfg, run.dist
    traceback.print_exc()
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    print(f"error: rank {dist.rank} of {dist.world_size} stopped in iteration {run.progress.iter_num + 1}: "
          f"{reason[:300]}. When one process dies the others fail like this within dist_timeout="
          f"{cfg.dist_timeout:g} s: look for the first error in all ranks' logs. {RunDir(cfg.out_dir).checkpoint} "
          f"holds the last completed checkpoint (if any); continue with the same command and --init_from=resume",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def main(argv=None, then=None):
    """train.py's command line. `then(run)`, if given, runs on every process after the run and before the
    processes disband (scripts/rank_agreement.py checks the ranks' states with it)."""
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(usage())
        return
    stop = StopRequest()  # from the start: a signal at any moment stops the run cleanly
    cfg, dist, run, rundir = start(argv, stop)
    try:
        train(run, stop)
    except CheckpointError as e:  # e.g. the disk filled up while saving: the previous checkpoint is intact
        fail(e)
    except RuntimeError as e:
        if dist.world_size == 1:
            raise
        lost_the_others(e, run)
    finally:
        if rundir:
            rundir.release()
    if then:
        then(run)
    if dist.world_size > 1:
        torch_dist.barrier()  # let rank 0 finish writing before any process group goes away
        del run  # DDP holds the process group: free it before destroying the group
        torch_dist.destroy_process_group()


if __name__ == "__main__":
    main()
