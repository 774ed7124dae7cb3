"""
Benchmark the real training iteration (Run.iteration of train.build, the same code train.py runs) and the
optimizers alone. Prints Markdown tables; with --out, also writes them to a file.

    python bench.py                                    # GPT-2 small, AdamW vs Sophia-G, 480 x 1024 tokens
    python bench.py --optimizers=adamw,sophiag,lion,sophiah --batch_size=16
    python bench.py --optimizers=adamw,sophiag,sophiag:gnb_batch=train,sophiag:hess_total_bs=240
                                                       # rows may override config keys
    python bench.py --size=medium --batch_size=8
    python bench.py --optim_only                       # step / update_hessian alone vs their memory floor
                                                       # ("ms": host and GPU, synchronised; "GPU ms": GPU
                                                       # time with the host ahead, as in training)
    python bench.py --profile                          # also a torch profiler trace per optimizer
    torchrun --standalone --nproc_per_node=2 bench.py  # data parallel (DDP): tokens/s of all GPUs together,
                                                       # MFU per GPU; rank 0 prints

Each row's settings are its optimizer's paper config at --size (config/train_gpt2_<size>_*.py), then
BENCH_SETTINGS, then the command line's other --key=value config keys (e.g. --device=cpu, --compile=False,
--total_bs=120), then the row's own. Data are random tokens (a synthetic dataset written to
data/bench_synthetic/), unless --dataset names a prepared one. Timings are medians over repeated runs
with the device synchronised around them.
"""

import argparse
import os
import statistics
import time
import traceback

import numpy as np
import torch
import torch.distributed as torch_dist

from data.tokens import write_tokens
from model import GPT, GPTConfig
from sophia import Lion, SophiaG
from train import build
from training.config import OPTIMIZER_NAMES, ConfigError, make_config, paper_config, parse_value, read_config_file
from training.distributed import init_distributed, synchronize
from training.optimizers import OPTIMIZERS

# what a benchmark changes in a paper config: no logged iteration (no update_rms copy in the timings), a
# short warmup, one evaluation batch, no wandb
BENCH_SETTINGS = dict(log_interval=10**9, warmup_iters=10, eval_iters=1, wandb_log=False, out_dir="out-bench")


def make_synthetic_dataset(name="bench_synthetic", n_tokens=20_000_000, vocab=50257):
    folder = os.path.join("data", name)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        path = os.path.join(folder, f"{split}.bin")
        if not os.path.exists(path):
            write_tokens(path, rng.integers(0, vocab, n_tokens, dtype=np.uint16))
    return name


def timed(fn, device):
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def parse_settings(settings):
    """['gnb_batch=train', 'batch_size=24'] -> {'gnb_batch': 'train', 'batch_size': 24} (checked in row_config)."""
    overrides = {}
    for setting in settings:
        key, eq, text = setting.partition("=")
        if not eq:
            raise ConfigError(f"expected key=value, got {setting!r}")
        overrides[key] = parse_value(key, text)
    return overrides


def parse_row(spec):
    """'sophiag:gnb_batch=train:batch_size=24' -> ('sophiag', {'gnb_batch': 'train', 'batch_size': 24})."""
    name, *settings = spec.split(":")
    return name, parse_settings(settings)


def row_config(size, optimizer_name, overrides):
    """A row's config: the optimizer's paper config at `size`, BENCH_SETTINGS, then `overrides`."""
    if optimizer_name not in OPTIMIZER_NAMES:
        raise ConfigError(f"unknown optimizer {optimizer_name!r}; one of {', '.join(OPTIMIZER_NAMES)}")
    path = paper_config(optimizer_name, size)
    if not os.path.exists(path):
        raise ConfigError(f"there is no paper config {os.path.relpath(path)} for {optimizer_name} at size {size}")
    paper = read_config_file(path)
    return make_config(**{**paper, "optimizer_name": optimizer_name, **BENCH_SETTINGS, **overrides})


def bench_training(args, spec, overrides):
    """One row: the training step of train.py with this optimizer (and config overrides), Hessian refresh
    included."""
    optimizer_name, row = parse_row(spec)
    cfg, dist = init_distributed(row_config(args.size, optimizer_name, {**overrides, **row}))
    cuda = dist.device.startswith("cuda")
    try:
        row = measure_training(args, cfg, dist, spec)
    except Exception as e:  # a row that fails (e.g. does not fit) says so; the others still run
        traceback.print_exc()
        reason = "out of memory" if isinstance(e, torch.cuda.OutOfMemoryError) else f"failed: {type(e).__name__}"
        row = {"optimizer": spec.replace(":", " "), "micro-batch": cfg.batch_size, "output layer": cfg.output_layer,
               "ms/iter": reason}
    torch._dynamo.reset()  # each row compiles afresh (no recompile limit, no shapes carried over)
    if cuda:
        torch.cuda.empty_cache()
    if dist.is_master:
        print(markdown([row]), flush=True)
    return row, cfg, dist


def measure_training(args, cfg, dist, spec):
    cuda = dist.device.startswith("cuda")
    run = build(cfg, dist)
    k = cfg.hess_interval
    for _ in range(k):  # compiles the training step and, at iteration k, the refresh
        run.iteration()
    if dist.world_size > 1:  # ranks finish compiling at different times: start timing once all have (or a
        synchronize(dist.device)  # quicker rank's first timed collective would wait for the slowest)
        torch_dist.barrier(group=dist.control_group)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    n = k * args.rounds  # whole refresh periods, so the refresh's share is exact
    seconds = timed(lambda: [run.iteration() for _ in range(n)], dist.device)
    row = {
        "optimizer": spec.replace(":", " "),
        "micro-batch": cfg.batch_size,
        "output layer": cfg.output_layer,
        "ms/iter": 1000 * seconds / n,
        "tokens/s": run.window.tokens_per_iter * n / seconds,
        "MFU": (run.network.model.estimate_mfu(run.window.tokens_per_iter / dist.world_size, seconds / n,
                                               cfg.peak_flops)
                if cuda else float("nan")),  # per GPU
        "peak GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
    }
    if OPTIMIZERS[cfg.optimizer_name].refresh:  # its cost: the refreshing iteration (the period's last) against
        times = [timed(run.iteration, dist.device) for _ in range(k)]  # the others, each alone
        refresh = times[-1] - statistics.median(times[:-1])
        row["refresh ms"] = 1000 * refresh
        row["refresh ms/iter"] = 1000 * refresh / k
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(k):
                run.iteration()
            synchronize(dist.device)
        if not dist.is_master:
            return row
        os.makedirs(cfg.out_dir, exist_ok=True)
        path = os.path.join(cfg.out_dir, f"trace_{spec.replace(':', '_')}")
        prof.export_chrome_trace(path + ".json")
        table = prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                          row_limit=25)
        with open(path + ".txt", "w") as f:
            f.write(table)
        print(f"profile of {k} iterations ({path}.json, .txt):\n{table}")
    return row


def copy_bandwidth(device, n_bytes=2**30):
    """Achieved device memory bandwidth: bytes read + written by a large copy, per second."""
    src = torch.empty(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = statistics.median(timed(lambda: dst.copy_(src), device) for _ in range(10))
    return 2 * n_bytes / seconds


def bench_optimizers(args, overrides):
    """The optimizer step and Hessian update alone, on the model's parameters (fp32), against the
    memory-traffic floor (fp32 tensors each read or written once)."""
    cfg, dist = init_distributed(row_config(args.size, "sophiag", overrides))
    device = dist.device
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                          bias=cfg.bias)).to(device)
    params = [p for p in model.parameters()]
    n = sum(p.numel() for p in params)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    bandwidth = copy_bandwidth(device)

    def floor_ms(tensor_passes):
        return 1000 * tensor_passes * 4 * n / bandwidth

    def median_ms(fn, reps=args.reps):
        fn()
        fn()  # warm up (and compile)
        return 1000 * statistics.median(timed(fn, device) for _ in range(reps))

    def device_ms(fn, reps=args.reps):
        """GPU time alone, with the host running ahead as in the training loop (where the step queues
        behind the backward pass): a spin kernel holds the GPU while fn's launches queue, then CUDA
        events time fn."""
        if not device.startswith("cuda"):
            return float("nan")
        times = []
        for _ in range(reps):
            torch.cuda._sleep(50_000_000)  # ~25 ms of spinning
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    def groups():
        return model.optim_groups(0.1)

    cases = [  # name, optimizer, passes over the parameters (reads + writes) for step
        ("SophiaG single-tensor (reference)", lambda: SophiaG(groups(), foreach=False, fused=False), 6),
        ("SophiaG foreach", lambda: SophiaG(groups(), foreach=True, fused=False), 6),
        ("SophiaG fused (compiled)", lambda: SophiaG(groups(), fused=True), 6),
        ("Lion fused (compiled)", lambda: Lion(groups(), fused=True), 5),
        ("AdamW foreach (torch)", lambda: torch.optim.AdamW(groups(), foreach=True), 7),
        ("AdamW fused (torch)", lambda: torch.optim.AdamW(groups(), fused=True), 7),
    ]
    rows = []
    for name, make, passes in cases:
        opt = make()
        row = {"optimizer": name, "step ms": median_ms(opt.step), "step GPU ms": device_ms(opt.step),
               "step floor ms": floor_ms(passes)}
        if hasattr(opt, "update_hessian"):
            row["update_hessian ms"] = median_ms(opt.update_hessian)
            row["update_hessian GPU ms"] = device_ms(opt.update_hessian)
            row["update_hessian floor ms"] = floor_ms(3)
        rows.append(row)
        del opt
    header = (f"gpt2-{args.size}: {n / 1e6:.1f}M fp32 parameters; copy bandwidth {bandwidth / 1e12:.2f} TB/s "
              f"(read + write); {device_name(device)}")
    return header, rows


def markdown(rows):
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = []
        for k in keys:
            v = row.get(k, "")
            if isinstance(v, float):
                v = f"{100 * v:.1f}%" if k == "MFU" else f"{v:,.0f}" if k == "tokens/s" else f"{v:.2f}"
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def processes(dist):
    """'2 processes (DDP) on ' under torchrun, else ''."""
    return f"{dist.world_size} processes (DDP) on " if dist.world_size > 1 else ""


def device_name(device):
    return torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else device


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=("small", "medium", "large"), help="the paper configs'")
    parser.add_argument("--optimizers", default="adamw,sophiag",
                        help="rows: optimizers, each with optional config overrides, e.g. "
                             "adamw,sophiag,sophiag:gnb_batch=train,sophiag:batch_size=24")
    parser.add_argument("--rounds", type=int, default=2, help="timed refresh periods (hess_interval iterations each)")
    parser.add_argument("--optim_only", action="store_true", help="only time the optimizers' update kernels")
    parser.add_argument("--reps", type=int, default=50, help="repetitions per optimizer-only timing")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", default="", help="also append the tables to this file")
    args, config_args = parser.parse_known_args()
    try:
        overrides = parse_settings([arg.removeprefix("--") for arg in config_args])
        if args.optim_only:
            header, rows = bench_optimizers(args, overrides)
        else:
            overrides["dataset"] = overrides.get("dataset") or make_synthetic_dataset()  # for the training rows only
            results = [bench_training(args, spec, overrides) for spec in args.optimizers.split(",")]
            rows, (_, cfg, dist) = [row for row, _, _ in results], results[0]
            base = next((r for r in rows if r["optimizer"] == "adamw"), None)
            for row in rows:
                if (base and row is not base
                        and isinstance(row["ms/iter"], float) and isinstance(base["ms/iter"], float)):
                    row["time vs adamw"] = f"{100 * (row['ms/iter'] / base['ms/iter'] - 1):+.1f}%"
                    row["memory vs adamw"] = f"{100 * (row['peak GiB'] / base['peak GiB'] - 1):+.1f}%"
            header = (f"gpt2-{args.size} ({cfg.n_layer} layers, {cfg.n_embd} wide), {cfg.total_bs} x {cfg.block_size} "
                      f"tokens per iteration, compile={cfg.compile} ({cfg.compile_mode}), {cfg.dtype}, "
                      f"{processes(dist)}{device_name(cfg.device)}, torch {torch.__version__}")
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    if torch_dist.is_initialized():  # under torchrun: rank 0 reports
        master = torch_dist.get_rank() == 0
        torch_dist.barrier()
        torch_dist.destroy_process_group()
        if not master:
            return
    text = f"{header}\n\n{markdown(rows)}\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
