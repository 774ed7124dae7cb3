"""
The report of the tuned protocol (scripts/protocol.py) from the metrics in results/tuned/: tuning
heatmaps, loss curves, the schedule-matched speedup with its interval and the verdict under the rule
stated in advance (README, "The decision rule"), the sign-momentum control, the official AdamW
baseline, the variants, and the diagnostics. Runs on a CPU in seconds; what is not run yet is said so.

    python scripts/protocol_report.py

Writes results/tuned_report.md (also printed), results/tuned_heatmaps.png, results/tuned_win_rate.png,
results/tuned_diagnostics.png, and with scripts/compare.py results/tuned_{curves,official,variants}.{md,png}.
"""

import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import compare  # noqa: E402
import protocol  # noqa: E402
from metrics import read_metrics  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = os.path.join("results", "tuned_")
LABELS = {"adamw": "AdamW", "sophiag": "Sophia-G", "lion": "Lion", "signmomentum": "sign momentum"}
WIN_RATE_SETS = ("embedding", "matrices", "other")


# ----------------------------------------------------------------------------- reading

def records(run):
    path = os.path.join(protocol.result_dir(run), "metrics.jsonl")
    return read_metrics(path) if os.path.exists(path) else []


def series(run, key):
    """(iterations, values) of a metric over a run's training records."""
    rows = [(r["iter"], r[key]) for r in records(run) if key in r and "train/loss" in r]
    return np.array([i for i, _ in rows], dtype=float), np.array([v for _, v in rows], dtype=float)


def mean_of(run, key):
    values = series(run, key)[1]
    return float(values.mean()) if len(values) else None


def last_of(run, key):
    values = series(run, key)[1]
    return float(values[-1]) if len(values) else None


def train_seconds(run):
    """Training seconds of a complete run (evaluation and compilation excluded)."""
    finals = [r["time"] for r in records(run) if r.get("iter") == run.iters and "val/loss" in r]
    return finals[-1] if finals else None


def mean_std(values):
    if not values:
        return "not run yet"
    spread = f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else ""
    return f"{np.mean(values):.4f}{spread} (n={len(values)})"


# ----------------------------------------------------------------------------- tuning

def tuning_sections(plan, losses):
    """Markdown tables of every tuning run of each optimizer, and the tuned settings."""
    text = ["## Tuning (seed 1337, T = %d iterations)" % protocol.T, ""]
    for optimizer, label in LABELS.items():
        runs = sorted((r for r in plan.runs if r.phase == "tune" and r.optimizer == optimizer),
                      key=lambda r: (r.rho or 0, r.warmup, r.lr))
        if not runs:
            text += [f"{label}: not planned yet (waits on the tuning it starts from).", ""]
            continue
        rows = []
        for r in runs:
            loss = losses.get(r.name)
            win = mean_of(r, "train/win_rate") if optimizer == "sophiag" else None
            rows.append([f"{r.lr:g}", f"{r.warmup_iters} ({r.warmup:.3g})", "" if r.rho is None else f"{r.rho:g}",
                         fmt_loss(loss), "" if win is None else f"{win:.3f}",
                         "**best**" if plan.best.get(optimizer) == r else ""])
        text += [f"### {label}", "", compare.markdown_table(
            ["lr", "warmup iters (fraction)", "rho", "final val loss", "mean win_rate", ""], rows), ""]
    rows = [[LABELS[o], f"{r.lr:g}", f"{r.warmup:.3g} of the length", "" if r.rho is None else f"{r.rho:g}",
             fmt_loss(losses[r.name])] for o, r in plan.best.items()]
    text += ["### Tuned settings", "", compare.markdown_table(
        ["optimizer", "lr", "warmup", "rho", "val loss at T (seed 1337)"], rows) if rows else "None yet.", ""]
    return text


def fmt_loss(loss):
    return "to do" if loss is None else "failed" if math.isinf(loss) else f"{loss:.4f}"


def heatmap(ax, runs, losses, x_axis, y_axis, title, win_rate=False):
    """Final loss (and mean win_rate) of runs on a grid of two settings; the best cell framed."""
    xs = sorted({getattr(r, x_axis) for r in runs})
    ys = sorted({getattr(r, y_axis) for r in runs})
    grid = np.full((len(ys), len(xs)), np.nan)
    for r in runs:
        loss = losses.get(r.name)
        if loss is not None and math.isfinite(loss):
            grid[ys.index(getattr(r, y_axis)), xs.index(getattr(r, x_axis))] = loss
    low = np.nanmin(grid) if np.isfinite(grid).any() else 0
    # one nat of range: the cells near the best stay readable, far worse ones saturate
    image = ax.imshow(grid, cmap="viridis_r", aspect="auto", origin="lower", vmin=low, vmax=low + 1)
    plt.colorbar(image, ax=ax, label="final val loss")
    for r in runs:
        i, j = ys.index(getattr(r, y_axis)), xs.index(getattr(r, x_axis))
        loss = losses.get(r.name)
        text = fmt_loss(loss)
        win = mean_of(r, "train/win_rate") if win_rate else None
        if win is not None:
            text += f"\nwin {win:.3f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if loss is None else "black",
                bbox=dict(facecolor="white", alpha=0.6, lw=0) if loss is not None else None)
    if np.isfinite(grid).any():
        i, j = np.unravel_index(np.nanargmin(grid), grid.shape)
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    names = {"lr": "peak lr", "warmup": "warmup (fraction of the run)", "rho": "rho"}
    ax.set_xticks(range(len(xs)), [f"{x:.3g}" for x in xs])
    ax.set_yticks(range(len(ys)), [f"{y:.3g}" for y in ys])
    ax.set_xlabel(names[x_axis])
    ax.set_ylabel(names[y_axis])
    ax.set_title(title, fontsize=10)


def plot_heatmaps(plan, losses, path):
    tune = [r for r in plan.runs if r.phase == "tune"]
    adamw = [r for r in tune if r.optimizer == "adamw"]
    sophia = [r for r in tune if r.optimizer == "sophiag"]
    best = plan.best.get("sophiag")
    by_warmup = [r for r in sophia if r.rho == protocol.SOPHIA_GRID["rho"][0]]
    by_rho = [r for r in sophia if best and r.warmup == best.warmup]
    fig, axes = plt.subplots(2, 2, figsize=(15, 11))
    heatmap(axes[0, 0], adamw, losses, "lr", "warmup", "AdamW: lr x warmup")
    heatmap(axes[0, 1], by_warmup, losses, "lr", "warmup", f"Sophia-G: lr x warmup (rho {by_warmup[0].rho:g})",
            win_rate=True)
    if by_rho:
        heatmap(axes[1, 0], by_rho, losses, "lr", "rho", f"Sophia-G: lr x rho (warmup {best.warmup:.3g})",
                win_rate=True)
    else:
        axes[1, 0].set_axis_off()
    ax = axes[1, 1]
    for i, optimizer in enumerate(("lion", "signmomentum")):
        runs = sorted((r for r in tune if r.optimizer == optimizer and losses.get(r.name) is not None),
                      key=lambda r: r.lr)
        finite = [r for r in runs if math.isfinite(losses[r.name])]
        if finite:
            ax.plot([r.lr for r in finite], [losses[r.name] for r in finite], "o-", color=f"C{i}",
                    label=f"{LABELS[optimizer]} (warmup {finite[0].warmup:.3g})")
    ax.set_xscale("log")
    ax.set_xlabel("peak lr")
    ax.set_ylabel("final val loss")
    ax.set_title("controls: lr", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.suptitle(f"tuning at T = {protocol.T}, seed {protocol.TUNE_SEED} (red frame: best)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- final runs and the verdict

def finals_of(plan, optimizer, iters, phase="final", overrides=()):
    return [r for r in plan.runs if r.phase == phase and r.optimizer == optimizer and r.iters == iters
            and r.overrides == overrides]


def complete_losses(runs, losses):
    return [losses[r.name] for r in runs if r.name in losses and math.isfinite(losses[r.name])]


def seconds_per_iter(runs):
    """Mean training seconds per iteration over the complete runs of a group."""
    seconds = [(train_seconds(r), r.iters) for r in runs]
    seconds = [t / n for t, n in seconds if t]
    return float(np.mean(seconds)) if seconds else None


def tokens_per_iter(runs):
    """Training tokens per iteration of a group of runs (from the first that has a record), counting the
    fresh batches of Sophia-G's Hessian refreshes."""
    cfg = next(r["config"] for run in runs for r in records(run) if "config" in r)
    sequences = cfg["total_bs"]
    if cfg["optimizer_name"] == "sophiag" and cfg["gnb_batch"] == "fresh":
        sequences += (cfg["hess_total_bs"] or cfg["total_bs"]) / cfg["hess_interval"]
    return sequences * cfg["block_size"]


def speedup_section(plan, losses):
    T = protocol.T
    adamw_lengths = {n: complete_losses(finals_of(plan, "adamw", n), losses) for n in (T // 2, T, 2 * T)}
    text = ["## Final runs (seeds %s)" % ", ".join(map(str, protocol.FINAL_SEEDS)), ""]
    rows = []
    for optimizer in LABELS:
        for n in sorted({r.iters for r in plan.runs if r.phase == "final" and r.optimizer == optimizer}):
            runs = finals_of(plan, optimizer, n)
            spi = seconds_per_iter(runs)
            rows.append([LABELS[optimizer], str(n), mean_std(complete_losses(runs, losses)),
                         "" if spi is None else f"{1000 * spi:.1f}"])
    text += [compare.markdown_table(["optimizer", "iterations", "final val loss (mean ± std)",
                                     "ms per iteration (training only)"], rows) if rows else "None yet.", ""]

    text += ["## Speedup over AdamW and the verdict", ""]
    if any(len(v) == 0 for v in adamw_lengths.values()):
        return text + ["Not computed yet: needs AdamW's final runs at T/2, T and 2T.", ""], None
    adamw_runs = [r for n in adamw_lengths for r in finals_of(plan, "adamw", n)]
    adamw_spi, adamw_tokens = seconds_per_iter(adamw_runs), tokens_per_iter(adamw_runs)
    rows, sophia_result = [], None
    for optimizer in ("sophiag", "signmomentum", "lion"):
        for n in (T // 2, T):
            runs = finals_of(plan, optimizer, n)
            finals = complete_losses(runs, losses)
            if not finals:
                continue
            s = compare.speedup_interval(adamw_lengths, finals, n)
            if s is None:
                continue
            spi = seconds_per_iter(runs)
            limits = s["limits"]
            token = s["point"] * adamw_tokens / tokens_per_iter(runs)
            wall = s["point"] * adamw_spi / spi if spi and adamw_spi else None
            rows.append([LABELS[optimizer], str(n), str(len(finals)), compare.fmt_speedup(s["point"], limits),
                         f"{compare.fmt_speedup(s['low'], limits)} – {compare.fmt_speedup(s['high'], limits)}",
                         compare.fmt_speedup(token, [limits[0] * token / s["point"], limits[1] * token / s["point"]]),
                         "—" if wall is None else f"{wall:.2f}x", compare.verdict(s["low"], s["high"])])
            if optimizer == "sophiag" and n == T:
                sophia_result = s
    lengths = ", ".join(f"{n}: {np.mean(v):.4f}" for n, v in adamw_lengths.items())
    text += [f"AdamW's final val loss by length (mean over seeds): {lengths}.", "",
             compare.markdown_table(["optimizer", "iterations", "seeds", "step speedup S",
                                     f"{100 * compare.LEVEL:.0f}% interval", "token speedup",
                                     "wall-clock speedup", "under the rule"], rows), "",
             "- S = n*/iterations: n* is the AdamW length (interpolated in log length between its measured "
             "lengths) whose mean final loss equals this group's mean final loss. Beyond the measured lengths "
             "only a bound is known (≤ / ≥). Interval: percentile bootstrap over seeds (10,000 resamples).",
             "- Token speedup counts the fresh batches of Sophia-G's Hessian refreshes as training tokens; "
             "wall-clock speedup uses each group's measured training seconds per iteration (compilation and "
             "evaluation excluded), all runs on the same GPU model.", ""]
    if sophia_result:
        text += [f"**Verdict (the rule stated in advance): Sophia-G at T {compare.verdict(sophia_result['low'], sophia_result['high'])}** "
                 f"(S = {compare.fmt_speedup(sophia_result['point'], sophia_result['limits'])}, interval "
                 f"{compare.fmt_speedup(sophia_result['low'], sophia_result['limits'])} – "
                 f"{compare.fmt_speedup(sophia_result['high'], sophia_result['limits'])}).", ""]
    return text, sophia_result


def hessian_section(plan, losses):
    T = protocol.T
    sophia = complete_losses(finals_of(plan, "sophiag", T), losses)
    sign = complete_losses(finals_of(plan, "signmomentum", T), losses)
    text = ["## Is Sophia-G's Hessian helping? (against sign momentum at T)", ""]
    if not sophia or not sign:
        return text + ["Not computed yet: needs the final runs of both at T.", ""]
    diff, low, high = compare.difference_interval(sign, sophia)
    if low > 0:
        answer = "yes: Sophia-G ends lower than sign momentum"
    elif high < 0:
        answer = "no: Sophia-G ends higher than sign momentum (its Hessian hurts at this scale)"
    else:
        answer = "no detectable difference: at this scale Sophia-G's Hessian does not measurably help"
    return text + [f"Sign momentum's final val loss minus Sophia-G's: {diff:+.4f} "
                   f"({100 * compare.LEVEL:.0f}% interval {low:+.4f} to {high:+.4f}; sign momentum "
                   f"{mean_std(sign)}, Sophia-G {mean_std(sophia)}). **{answer}.**", ""]


def official_section(plan, losses):
    text = ["## The official AdamW baseline: gradient summed over micro-steps", "",
            f"AdamW at T with its tuned lr and warmup, {protocol.OFFICIAL['total_bs']} sequences per iteration in "
            f"{protocol.OFFICIAL['total_bs'] // protocol.OFFICIAL['batch_size']} micro-batches of "
            f"{protocol.OFFICIAL['batch_size']}, the same seeds; `grad_accumulation` 'mean' (ours) against 'sum' "
            "(the official train_adam.py). Clip rate: the fraction of steps whose gradient norm exceeded "
            "grad_clip = 1.0.", ""]
    rows, finals = [], {}
    for how in ("mean", "sum"):
        runs = [r for r in plan.runs if r.phase == "official" and dict(r.overrides)["grad_accumulation"] == how]
        clip = [c for c in (last_of(r, "train/clip_rate") for r in runs) if c is not None]
        norm = [np.median(n) for n in (series(r, "grad_norm")[1] for r in runs) if len(n)]
        finals[how] = complete_losses(runs, losses)
        rows.append([how, mean_std(finals[how]), f"{np.mean(clip):.3f}" if clip else "—",
                     f"{np.mean(norm):.3g}" if norm else "—"])
    text += [compare.markdown_table(["gradient", "final val loss", "clip rate",
                                     "median gradient norm (before clipping)"], rows), ""]
    if finals["mean"] and finals["sum"]:
        diff, low, high = compare.difference_interval(finals["sum"], finals["mean"])
        text += [f"'sum' minus 'mean', final val loss: {diff:+.4f} ({100 * compare.LEVEL:.0f}% interval "
                 f"{low:+.4f} to {high:+.4f}).", ""]
    return text


def variants_section(plan, losses):
    T = protocol.T
    rows = [["Sophia-G as tuned (the official algorithm)", mean_std(complete_losses(finals_of(plan, "sophiag", T),
                                                                                    losses))]]
    for variant in protocol.VARIANTS:
        runs = finals_of(plan, "sophiag", T, "variant", tuple(variant.items()))
        rows.append([", ".join(f"{k}={v}" for k, v in variant.items()), mean_std(complete_losses(runs, losses))])
    return ["## Variants (deviations from the official algorithm; Sophia-G at T, tuned settings)", "",
            compare.markdown_table(["Sophia-G", "final val loss"], rows), ""]


# ----------------------------------------------------------------------------- diagnostics plots

def plot_win_rate(plan, losses, path):
    T = protocol.T
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    ax = axes[0]
    for seed_index, run in enumerate(finals_of(plan, "sophiag", T)):
        for j, key in enumerate(["train/win_rate"] + [f"train/win_rate/{s}" for s in WIN_RATE_SETS]):
            it, values = series(run, key)
            if len(it):
                ax.plot(it, values, color=f"C{j}", lw=1, alpha=0.8,
                        label=key.replace("train/", "") if seed_index == 0 else None)
    run = next(iter(finals_of(plan, "sophiag", T)), None)
    if run is not None:
        twin = ax.twinx()
        it, weight = series(run, "hessian_ema_weight")
        twin.plot(it, weight, "k--", lw=1, label="hessian_ema_weight (right)")
        twin.set_ylabel("1 - beta2^refreshes")
        twin.set_ylim(0, 1)
        twin.legend(loc="lower right", fontsize=8)
    ax.set_title("Sophia-G final runs at T (each seed): win_rate overall and per parameter set", fontsize=10)
    ax.set_xlabel("iteration")
    ax.set_ylabel("win_rate (fraction of coordinates not clipped)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1]
    best = plan.best.get("sophiag")
    if best:
        same = sorted((r for r in plan.runs if r.phase == "tune" and r.optimizer == "sophiag"
                       and r.lr == best.lr and r.warmup == best.warmup), key=lambda r: r.rho)
        for i, run in enumerate(same):
            it, values = series(run, "train/win_rate")
            if len(it):
                ax.plot(it, values, color=f"C{i}", label=f"rho {run.rho:g} (val {fmt_loss(losses.get(run.name))})")
    ax.set_title("tuning runs at the tuned lr and warmup, by rho", fontsize=10)
    ax.set_xlabel("iteration")
    ax.set_ylabel("win_rate")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_diagnostics(plan, path):
    T = protocol.T
    keys = ("param_norm", "grad_norm", "update_rms")
    fig, axes = plt.subplots(1, len(keys), figsize=(17, 4.5))
    for ax, key in zip(axes, keys):
        for i, optimizer in enumerate(LABELS):
            for k, run in enumerate(finals_of(plan, optimizer, T)):
                it, values = series(run, key)
                if len(it):
                    ax.plot(it, values, color=f"C{i}", lw=1, label=LABELS[optimizer] if k == 0 else None)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle("final runs at T (each seed a line): parameter norm, gradient norm before clipping, "
                 "RMS of the applied update")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare_runs(runs, name, group_by, baseline=None):
    """scripts/compare.py over the complete runs among `runs`; None where none is complete."""
    dirs = [protocol.result_dir(r) for r in runs if protocol.final_loss(r.name) not in (None, math.inf)]
    if not dirs:
        return None
    argv = [*dirs, "--out", OUT + name, "--group_by", group_by] + (["--baseline", baseline] if baseline else [])
    compare.main(argv)
    return OUT + name


def report():
    os.chdir(protocol.ROOT)
    losses = protocol.known_losses()
    plan = protocol.make_plan(losses)
    done = sum(r.name in losses for r in plan.runs)
    progress = ("all of the protocol's runs are done" if done == len(plan.runs) else
                f"{done} of the {len(plan.runs)} runs planned so far are done; later phases are planned as "
                "tuning completes")
    text = ["# The tuned small-scale protocol: report", "",
            f"Made by `python scripts/protocol_report.py` from the metrics in {protocol.RESULTS}/ ({progress}).", ""]
    failed = [r.name for r in plan.runs if math.isinf(losses.get(r.name, 0))]
    if failed:
        text += ["Failed runs (counted as infinitely bad): " + ", ".join(failed) + ".", ""]
    unplanned = sorted(set(losses) - {r.name for r in plan.runs})
    if unplanned:
        text += [f"Runs in {protocol.RESULTS}/ that the final plan does not contain (made while an earlier plan "
                 "held them, e.g. before an axis was extended; not used here): " + ", ".join(unplanned) + ".", ""]
    text += tuning_sections(plan, losses)
    speedup, _ = speedup_section(plan, losses)
    text += speedup + hessian_section(plan, losses) + official_section(plan, losses) + variants_section(plan, losses)
    plot_heatmaps(plan, losses, OUT + "heatmaps.png")
    plot_win_rate(plan, losses, OUT + "win_rate.png")
    plot_diagnostics(plan, OUT + "diagnostics.png")
    finals = [r for r in plan.runs if r.phase == "final"]
    compare_runs(finals, "curves", "optimizer_name,max_iters", f"adamw max_iters={2 * protocol.T}")
    compare_runs([r for r in plan.runs if r.phase == "official"], "official", "grad_accumulation",
                 "mean")
    compare_runs(finals_of(plan, "sophiag", protocol.T) + [r for r in plan.runs if r.phase == "variant"], "variants",
                 "optimizer_name,hessian_bias_correction,beta2", "sophiag hessian_bias_correction=False beta2=0.99")
    text += ["Figures: tuned_heatmaps.png, tuned_curves.png (with tuned_curves.md), tuned_win_rate.png, "
             "tuned_diagnostics.png, tuned_official.png, tuned_variants.png (all in results/).", ""]
    with open(OUT + "report.md", "w") as f:
        f.write("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    report()
