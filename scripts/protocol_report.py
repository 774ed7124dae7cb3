"""
The reports of the tuned studies (scripts/protocol.py) from their metrics in results/<study>/, and the table
of the paper's claims that they answer, regime by regime. Runs on a CPU in seconds; what is not run yet is
said so.

    python scripts/protocol_report.py

- tuned (30M, 32k tokens per step): tuning heatmaps, loss curves, the schedule-matched speedup with its
  interval and the verdict under the rule stated in advance (docs/studies.md), the sign-momentum control, the
  official AdamW baseline, the variants, the diagnostics: results/tuned_report.md, tuned_*.png.
- inband: the paired Hessian control where Sophia-G's win_rate is in the band: results/inband_report.md.
- bridge131k, gpt2small: tuning, finals, speedup and verdict, the paired Hessian control, clip rates, (124M)
  the runs without the attention's inverse-layer scaling: results/<study>_report.md, <study>_curves.{md,png}.
- the claims table (also printed) and its figures: results/claims.md, claims_speedups.png (S with its
  interval per regime), claims_win_rate.png (Sophia-G's win_rate per parameter set).
"""

import contextlib
import dataclasses
import io
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import compare  # noqa: E402
import protocol  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = "results" + os.sep  # report files: results/<study>_<name>
LABELS = {"adamw": "AdamW", "sophiag": "Sophia-G", "lion": "Lion", "signmomentum": "sign momentum"}
WIN_RATE_SETS = ("embedding", "matrices", "other")


# ----------------------------------------------------------------------------- reading

def series(study, run, key):
    """(iterations, values) of a metric over a run's training records."""
    rows = [(r["iter"], r[key]) for r in protocol.records(study, run) if key in r and "train/loss" in r]
    return np.array([i for i, _ in rows], dtype=float), np.array([v for _, v in rows], dtype=float)


def last_of(study, run, key):
    values = series(study, run, key)[1]
    return float(values[-1]) if len(values) else None


def train_seconds(study, run):
    """Training seconds of a complete run (evaluation and compilation excluded)."""
    finals = [r["time"] for r in protocol.records(study, run) if r.get("iter") == run.iters and "val/loss" in r]
    return finals[-1] if finals else None


def mean_std(values):
    if not values:
        return "not run yet"
    spread = f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else ""
    return f"{np.mean(values):.4f}{spread} (n={len(values)})"


# ----------------------------------------------------------------------------- tuning

def tuning_sections(study, plan, losses):
    """Markdown tables of every tuning run of each optimizer, and the tuned settings."""
    text = [f"## Tuning (seed {study.tune_seed}, T = {study.T} iterations)", ""]
    for optimizer, label in LABELS.items():
        runs = sorted((r for r in plan.runs if r.phase == "tune" and r.optimizer == optimizer),
                      key=lambda r: (r.rho or 0, r.warmup, r.lr))
        if not runs:
            why = ("no tuning runs of its own (its settings below come from another optimizer's tuning)"
                   if optimizer in plan.best else "not planned yet (waits on the tuning it starts from)")
            text += [f"{label}: {why}.", ""]
            continue
        rows = []
        for r in runs:
            loss = losses.get(r.name)
            win = protocol.mean_metric(study, r, "train/win_rate") if optimizer == "sophiag" else None
            rows.append([f"{r.lr:g}", f"{r.warmup_iters} ({r.warmup:.3g})", "" if r.rho is None else f"{r.rho:g}",
                         fmt_loss(loss), "" if win is None else f"{win:.3f}",
                         "**best**" if plan.best.get(optimizer) == r else ""])
        text += [f"### {label}", "", compare.markdown_table(
            ["lr", "warmup iters (fraction)", "rho", "final val loss", "mean win_rate", ""], rows), ""]
    tuned = {r.name for r in plan.runs if r.phase == "tune"}
    rows = [[LABELS[o], f"{r.lr:g}", f"{r.warmup:.3g} of the length", "" if r.rho is None else f"{r.rho:g}",
             fmt_loss(losses.get(r.name)) if r.name in tuned else "not tuned"]
            for o, r in plan.best.items() if o in LABELS]
    text += ["### Tuned settings", "", compare.markdown_table(
        ["optimizer", "lr", "warmup", "rho", f"val loss at T (seed {study.tune_seed})"], rows) if rows else "None yet.",
        ""]
    return text


def fmt_loss(loss):
    return "to do" if loss is None else "failed" if math.isinf(loss) else f"{loss:.4f}"


def heatmap(ax, study, runs, losses, x_axis, y_axis, title, win_rate=False):
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
        win = protocol.mean_metric(study, r, "train/win_rate") if win_rate else None
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


def plot_heatmaps(study, plan, losses, path):
    tune = [r for r in plan.runs if r.phase == "tune"]
    adamw = [r for r in tune if r.optimizer == "adamw"]
    sophia = [r for r in tune if r.optimizer == "sophiag"]
    best = plan.best.get("sophiag")
    by_warmup = [r for r in sophia if r.rho == study.tuning.sophiag["rho"][0]]
    by_rho = [r for r in sophia if best and r.warmup == best.warmup]
    fig, axes = plt.subplots(2, 2, figsize=(15, 11))
    heatmap(axes[0, 0], study, adamw, losses, "lr", "warmup", "AdamW: lr x warmup")
    heatmap(axes[0, 1], study, by_warmup, losses, "lr", "warmup", f"Sophia-G: lr x warmup (rho {by_warmup[0].rho:g})",
            win_rate=True)
    if by_rho:
        heatmap(axes[1, 0], study, by_rho, losses, "lr", "rho", f"Sophia-G: lr x rho (warmup {best.warmup:.3g})",
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
    else:
        ax.text(0.5, 0.5, "no control tuned yet", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"tuning at T = {study.T}, seed {study.tune_seed} (red frame: best)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- final runs and the verdict

BASELINE_PHASES = ("final", "sequential")  # AdamW's lengths: its finals, and the 124M study's sequential stage


def finals_of(plan, optimizer, iters, phase="final", overrides=()):
    return [r for r in plan.runs if r.phase == phase and r.optimizer == optimizer and r.iters == iters
            and r.overrides == overrides]


def complete_losses(runs, losses):
    return [losses[r.name] for r in runs if r.name in losses and math.isfinite(losses[r.name])]


def by_seed(runs, losses):
    """{seed: final loss} of the complete runs."""
    return {r.seed: losses[r.name] for r in runs if r.name in losses and math.isfinite(losses[r.name])}


def run_seconds_per_iter(study, runs):
    """Training seconds per iteration of each complete run of a group."""
    seconds = [(train_seconds(study, r), r.iters) for r in runs]
    return [t / n for t, n in seconds if t]


def seconds_per_iter(study, runs):
    """Mean training seconds per iteration over the complete runs of a group."""
    seconds = run_seconds_per_iter(study, runs)
    return float(np.mean(seconds)) if seconds else None


def ms_per_iter_cell(study, runs):
    """The mean and, over several runs, their range: runs timed on different machines can differ by 5%."""
    ms = [1000 * s for s in run_seconds_per_iter(study, runs)]
    if len(ms) < 2:
        return f"{ms[0]:.1f}" if ms else ""
    return f"{np.mean(ms):.1f} ({min(ms):.1f} – {max(ms):.1f})"


def tokens_per_iter(study, runs):
    """Training tokens per iteration of a group of runs (from the first that has a record), counting the
    fresh batches of Sophia-G's Hessian refreshes."""
    cfg = next(r["config"] for run in runs for r in protocol.records(study, run) if "config" in r)
    sequences = cfg["total_bs"]
    if cfg["optimizer_name"] == "sophiag" and cfg["gnb_batch"] == "fresh":
        sequences += (cfg["hess_total_bs"] or cfg["total_bs"]) / cfg["hess_interval"]
    return sequences * cfg["block_size"]


def adamw_finals(plan, losses):
    """{length: [final losses]} of AdamW's final runs at every length the plan has for them."""
    lengths = sorted({r.iters for r in plan.runs if r.optimizer == "adamw" and r.phase in BASELINE_PHASES
                      and not r.overrides})
    return {n: complete_losses([r for p in BASELINE_PHASES for r in finals_of(plan, "adamw", n, p)], losses)
            for n in lengths}


def compared_groups(study, plan):
    """(label, runs) of every group whose speedup over AdamW is measured: each optimizer's finals at T and
    shorter, and Sophia-G in the win_rate band where the study has it."""
    groups = []
    for optimizer in ("sophiag", "signmomentum", "lion"):
        for n in sorted({r.iters for r in plan.runs if r.phase == "final" and r.optimizer == optimizer
                         and r.iters <= study.T}):
            groups.append((LABELS[optimizer], finals_of(plan, optimizer, n)))
        if optimizer == "sophiag" and any(r.phase == "inband" for r in plan.runs):
            groups.append(("Sophia-G in the win_rate band", finals_of(plan, "sophiag", study.T, "inband")))
    return groups


def speedups(study, plan, losses):
    """The speedup over AdamW of every compared group: dicts of label, iters, seeds, the interval `s`
    (compare.speedup_interval), and the token and wall-clock speedups. [] until AdamW's finals are done at
    two lengths or more."""
    baseline = adamw_finals(plan, losses)
    if len(baseline) < 2 or not all(baseline.values()):
        return []
    adamw_runs = [r for n in baseline for p in BASELINE_PHASES for r in finals_of(plan, "adamw", n, p)]
    adamw_spi, adamw_tokens = seconds_per_iter(study, adamw_runs), tokens_per_iter(study, adamw_runs)
    found = []
    for label, runs in compared_groups(study, plan):
        finals = complete_losses(runs, losses)
        s = compare.speedup_interval(baseline, finals, runs[0].iters) if finals else None
        if s is None:
            continue
        spi = seconds_per_iter(study, runs)
        found.append(dict(label=label, iters=runs[0].iters, seeds=len(finals), s=s,
                          token=adamw_tokens / tokens_per_iter(study, runs),
                          wall=adamw_spi / spi if spi and adamw_spi else None))
    return found


def scaled(s, factor):
    """The interval `s` (a speedup in steps) times a constant factor (tokens or seconds per step)."""
    return dict(s, point=s["point"] * factor, low=s["low"] * factor, high=s["high"] * factor,
                limits=(s["limits"][0] * factor, s["limits"][1] * factor))


def fmt_interval(s):
    fmt = lambda x: compare.fmt_speedup(x, s["limits"])  # noqa: E731
    return f"{fmt(s['point'])} ({fmt(s['low'])} – {fmt(s['high'])})"


def speedup_section(study, plan, losses):
    T = study.T
    text = [f"## Final runs (seeds {', '.join(map(str, study.final_seeds))})", ""]
    rows = []
    for optimizer in LABELS:
        for phase in ("final", "sequential", "inband"):
            for n in sorted({r.iters for r in plan.runs if r.phase == phase and r.optimizer == optimizer
                             and not r.overrides}):
                runs = finals_of(plan, optimizer, n, phase)
                label = LABELS[optimizer] + ("" if phase == "final" else f" ({phase})")
                rows.append([label, str(n), mean_std(complete_losses(runs, losses)), ms_per_iter_cell(study, runs)])
    text += [compare.markdown_table(["optimizer", "iterations", "final val loss (mean ± std)",
                                     "ms per iteration (training only; mean, range over runs)"], rows)
             if rows else "None yet.", ""]

    text += ["## Speedup over AdamW and the verdict", ""]
    found = speedups(study, plan, losses)
    if not found:
        lengths = ", ".join(map(str, adamw_finals(plan, losses))) or "none planned yet"
        return text + [f"Not computed yet: needs AdamW's final runs at two lengths or more (planned: {lengths}).",
                       ""], None
    rows, sophia_result = [], None
    for row in found:
        s = row["s"]
        limits = s["limits"]
        token = scaled(s, row["token"])
        rows.append([row["label"], str(row["iters"]), str(row["seeds"]), compare.fmt_speedup(s["point"], limits),
                     f"{compare.fmt_speedup(s['low'], limits)} – {compare.fmt_speedup(s['high'], limits)}",
                     compare.fmt_speedup(token["point"], token["limits"]),
                     "—" if row["wall"] is None else f"{s['point'] * row['wall']:.2f}x",
                     compare.verdict(s["low"], s["high"])])
        if row["label"] == "Sophia-G" and row["iters"] == T:
            sophia_result = s
    lengths = ", ".join(f"{n}: {np.mean(v):.4f}" for n, v in adamw_finals(plan, losses).items())
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
        text += [f"**Verdict (the rule stated in advance): Sophia-G at T "
                 f"{compare.verdict(sophia_result['low'], sophia_result['high'])}** "
                 f"(S = {compare.fmt_speedup(sophia_result['point'], sophia_result['limits'])}, interval "
                 f"{compare.fmt_speedup(sophia_result['low'], sophia_result['limits'])} – "
                 f"{compare.fmt_speedup(sophia_result['high'], sophia_result['limits'])}).", ""]
    return text, sophia_result


def hessian_answer(low, high):
    """The Hessian control's answer from the interval of (sign momentum's − Sophia-G's) final loss."""
    if low > 0:
        return "yes: Sophia-G ends lower than sign momentum"
    if high < 0:
        return "no: Sophia-G ends higher than sign momentum (its Hessian hurts here)"
    return "no detectable difference: Sophia-G's Hessian does not measurably help here"


def hessian_section(study, plan, losses):
    """The tuned protocol's Hessian control (as its rule was stated: seeds resampled per group)."""
    T = study.T
    sophia = complete_losses(finals_of(plan, "sophiag", T), losses)
    sign = complete_losses(finals_of(plan, "signmomentum", T), losses)
    text = ["## Is Sophia-G's Hessian helping? (against sign momentum at T)", ""]
    if not sophia or not sign:
        return text + ["Not computed yet: needs the final runs of both at T.", ""]
    diff, low, high = compare.difference_interval(sign, sophia)
    return text + [f"Sign momentum's final val loss minus Sophia-G's: {diff:+.4f} "
                   f"({100 * compare.LEVEL:.0f}% interval {low:+.4f} to {high:+.4f}; sign momentum "
                   f"{mean_std(sign)}, Sophia-G {mean_std(sophia)}). **{hessian_answer(low, high)}.**", ""]


def paired_control(study, plan, losses, sophia_runs):
    """Sign momentum's final loss minus Sophia-G's, paired by seed: dict(diff, low, high, seeds, win_rate,
    answer), or None until both have a complete run on a common seed."""
    sign = by_seed(finals_of(plan, "signmomentum", study.T), losses)
    sophia = by_seed(sophia_runs, losses)
    seeds = sorted(set(sign) & set(sophia))
    if not seeds:
        return None
    diff, low, high = compare.paired_difference_interval([sign[s] for s in seeds], [sophia[s] for s in seeds])
    wins = [w for w in (protocol.mean_metric(study, r, "train/win_rate") for r in sophia_runs) if w is not None]
    return dict(diff=diff, low=low, high=high, seeds=seeds, win_rate=float(np.mean(wins)) if wins else None,
                in_band=bool(wins) and protocol.BAND[0] <= np.mean(wins) <= protocol.BAND[1],
                answer=hessian_answer(low, high))


def control_groups(study, plan):
    """(label, Sophia-G runs) that the paired Hessian control compares with sign momentum in `study`."""
    T = study.T
    if study.name == protocol.INBAND.name:
        groups = (("in the band (the rule's pick)", "inband"), ("at its tuned rho", "final"),
                  ("one rho step deeper in the band", "deeper"))
    else:
        groups = (("as tuned", "final"), ("in the win_rate band", "inband"))
    return [(label, finals_of(plan, "sophiag", T, phase)) for label, phase in groups
            if finals_of(plan, "sophiag", T, phase)]


def paired_hessian_section(study, plan, losses):
    text = ["## Is Sophia-G's Hessian helping? (sign momentum minus Sophia-G at T, paired by seed)", "",
            f"The control only tells where Sophia-G's Hessian acts: where its mean win_rate (the fraction of "
            f"coordinates not clipped) is in {protocol.BAND[0]}–{protocol.BAND[1]}. Final val loss over the whole "
            "val split; interval: percentile bootstrap over seeds, pairs resampled together.", ""]
    rows = []
    for label, runs in control_groups(study, plan):
        c = paired_control(study, plan, losses, runs)
        rho = runs[0].rho
        if c is None:
            rows.append([label, f"{rho:g}", "", mean_std(complete_losses(runs, losses)), "not run yet", ""])
            continue
        answer = c["answer"] if c["in_band"] else "not a test: its win_rate is outside the band"
        rows.append([label, f"{rho:g}", "" if c["win_rate"] is None else f"{c['win_rate']:.3f}",
                     mean_std(complete_losses(runs, losses)),
                     f"{c['diff']:+.4f} ({c['low']:+.4f} to {c['high']:+.4f})", answer])
    sign = complete_losses(finals_of(plan, "signmomentum", study.T), losses)
    text += [f"Sign momentum at T: {mean_std(sign)}.", "",
             compare.markdown_table(["Sophia-G", "rho", "mean win_rate", "final val loss",
                                     f"sign momentum − Sophia-G ({100 * compare.LEVEL:.0f}% interval)", "answer"],
                                    rows) if rows else "None yet.", ""]
    return text


def official_section(plan, losses):
    study = protocol.TUNED
    text = ["## The official AdamW baseline: gradient summed over micro-steps", "",
            f"AdamW at T with its tuned lr and warmup, {protocol.OFFICIAL['total_bs']} sequences per iteration in "
            f"{protocol.OFFICIAL['total_bs'] // protocol.OFFICIAL['batch_size']} micro-batches of "
            f"{protocol.OFFICIAL['batch_size']}, the same seeds; `grad_accumulation` 'mean' (ours) against 'sum' "
            "(the official train_adam.py). Clip rate: the fraction of steps whose gradient norm exceeded "
            "grad_clip = 1.0.", ""]
    rows, finals = [], {}
    for how in ("mean", "sum"):
        runs = [r for r in plan.runs if r.phase == "official" and dict(r.overrides)["grad_accumulation"] == how]
        clip = [c for c in (last_of(study, r, "train/clip_rate") for r in runs) if c is not None]
        norm = [np.median(n) for n in (series(study, r, "grad_norm")[1] for r in runs) if len(n)]
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


def variants_section(study, plan, losses):
    T = study.T
    rows = [["Sophia-G as tuned (the official algorithm)", mean_std(complete_losses(finals_of(plan, "sophiag", T),
                                                                                    losses))]]
    for variant in protocol.VARIANTS:
        runs = finals_of(plan, "sophiag", T, "variant", tuple(variant.items()))
        rows.append([", ".join(f"{k}={v}" for k, v in variant.items()), mean_std(complete_losses(runs, losses))])
    return ["## Variants (deviations from the official algorithm; Sophia-G at T, tuned settings)", "",
            compare.markdown_table(["Sophia-G", "final val loss"], rows), ""]


NO_SCALING = (("scale_attn_by_inverse_layer_idx", False),)


def no_scaling(study, plan, losses):
    """{optimizer: (final loss with the inverse-layer attention scaling, without it, highest training loss
    without it)} of the pairs run without it (same seed, tuned settings)."""
    found = {}
    for run in (r for r in plan.runs if r.phase == "noscale"):
        with_it = finals_of(plan, run.optimizer, run.iters)
        with_it = [r for r in with_it if r.seed == run.seed]
        if run.name in losses and with_it and with_it[0].name in losses:
            peak = series(study, run, "train/loss")[1]
            found[run.optimizer] = (losses[with_it[0].name], losses[run.name], float(peak.max()) if len(peak) else None)
    return found


def no_scaling_section(study, plan, losses):
    text = ["## Without the attention's inverse-layer scaling", "",
            "The paper reports that Sophia-G trains stably without the official code's scaling of layer i's "
            "attention scores by 1/i (`scale_attn_by_inverse_layer_idx=False`). One run per optimizer at its "
            f"tuned settings, seed {study.final_seeds[0]}, against the same run with the scaling.", ""]
    found = no_scaling(study, plan, losses)
    if not found:
        return text + ["Not run yet.", ""]
    rows = [[LABELS[o], fmt_loss(a), fmt_loss(b), "" if peak is None else f"{peak:.3f}", stability(b)]
            for o, (a, b, peak) in found.items()]
    return text + [compare.markdown_table(["optimizer", "final val loss with the scaling", "without",
                                           "highest logged training loss without", "without the scaling"], rows),
                   ""]


def stability(loss):
    return "stable" if math.isfinite(loss) else "diverged"


def clip_rates(study, plan, optimizer):
    """The clip rate (fraction of steps whose gradient norm exceeded grad_clip) of each final run at T."""
    return [c for c in (last_of(study, r, "train/clip_rate") for r in finals_of(plan, optimizer, study.T))
            if c is not None]


# ----------------------------------------------------------------------------- diagnostics plots

def plot_win_rate(study, plan, losses, path):
    T = study.T
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    ax = axes[0]
    for seed_index, run in enumerate(finals_of(plan, "sophiag", T)):
        for j, key in enumerate(["train/win_rate"] + [f"train/win_rate/{s}" for s in WIN_RATE_SETS]):
            it, values = series(study, run, key)
            if len(it):
                ax.plot(it, values, color=f"C{j}", lw=1, alpha=0.8,
                        label=key.replace("train/", "") if seed_index == 0 else None)
    run = next(iter(finals_of(plan, "sophiag", T)), None)
    if run is not None:
        twin = ax.twinx()
        it, weight = series(study, run, "hessian_ema_weight")
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
            it, values = series(study, run, "train/win_rate")
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


def plot_diagnostics(study, plan, path):
    T = study.T
    keys = ("param_norm", "grad_norm", "update_rms")
    fig, axes = plt.subplots(1, len(keys), figsize=(17, 4.5))
    for ax, key in zip(axes, keys):
        for i, optimizer in enumerate(LABELS):
            for k, run in enumerate(finals_of(plan, optimizer, T)):
                it, values = series(study, run, key)
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


def output(study, name):
    """The path of one of a study's report files: results/<study>_<name>."""
    return f"{OUT}{study.name}_{name}"


def compare_runs(study, runs, name, group_by, baseline=None):
    """scripts/compare.py over the complete runs among `runs`; None where none is complete."""
    dirs = [protocol.result_dir(study, r) for r in runs if protocol.final_loss(study, r.name) not in (None, math.inf)]
    if not dirs:
        return None
    argv = [*dirs, "--out", output(study, name),
            "--group_by", group_by] + (["--baseline", baseline] if baseline else [])
    with contextlib.redirect_stdout(io.StringIO()):  # its tables go to <name>.md
        compare.main(argv)
    return output(study, name)


def header(study, plan, losses, title):
    done = sum(r.name in losses for r in plan.runs)
    progress = ("all of the study's runs are done" if plan.runs and done == len(plan.runs) else
                f"{done} of the {len(plan.runs)} runs planned so far are done; later phases are planned as "
                "earlier ones complete")
    text = [f"# {title}: report", "",
            f"Made by `python scripts/protocol_report.py` from the metrics in {study.results}/ ({progress}).", ""]
    failed = [r.name for r in plan.runs if math.isinf(losses.get(r.name, 0))]
    if failed:
        text += ["Failed runs (counted as infinitely bad): " + ", ".join(failed) + ".", ""]
    unplanned = sorted(set(losses) - {r.name for r in plan.runs})
    if unplanned:
        text += [f"Runs in {study.results}/ that the final plan does not contain (made while an earlier plan "
                 "held them, e.g. before an axis was extended; not used here): " + ", ".join(unplanned) + ".", ""]
    return text


def write(study, text):
    with open(output(study, "report.md"), "w") as f:
        f.write("\n".join(text))


def report(study=protocol.TUNED):
    """The tuned protocol's report: results/tuned_report.md and its figures."""
    os.chdir(protocol.ROOT)
    losses = protocol.known_losses(study)
    plan = protocol.make_plan(study, losses)
    text = header(study, plan, losses, "The tuned small-scale protocol")
    text += tuning_sections(study, plan, losses)
    speedup, _ = speedup_section(study, plan, losses)
    text += (speedup + hessian_section(study, plan, losses) + official_section(plan, losses)
             + variants_section(study, plan, losses))
    plot_heatmaps(study, plan, losses, output(study, "heatmaps.png"))
    plot_win_rate(study, plan, losses, output(study, "win_rate.png"))
    plot_diagnostics(study, plan, output(study, "diagnostics.png"))
    finals = [r for r in plan.runs if r.phase == "final"]
    compare_runs(study, finals, "curves", "optimizer_name,max_iters", f"adamw max_iters={2 * study.T}")
    compare_runs(study, [r for r in plan.runs if r.phase == "official"], "official", "grad_accumulation", "mean")
    compare_runs(study, finals_of(plan, "sophiag", study.T) + [r for r in plan.runs if r.phase == "variant"],
                 "variants", "optimizer_name,hessian_bias_correction,beta2",
                 "sophiag hessian_bias_correction=False beta2=0.99")
    text += ["Figures: tuned_heatmaps.png, tuned_curves.png (with tuned_curves.md), tuned_win_rate.png, "
             "tuned_diagnostics.png, tuned_official.png, tuned_variants.png (all in results/).", ""]
    write(study, text)
    return text


def inband_report(study=protocol.INBAND):
    os.chdir(protocol.ROOT)
    losses = protocol.known_losses(study)
    plan = protocol.make_plan(study, losses)
    text = header(study, plan, losses, "The in-band Hessian control (30M, 32k tokens per iteration)")
    band = plan.best.get("inband")
    if band:
        text += [f"The rule's pick: among the tuned protocol's Sophia-G tuning runs (seed 1337) whose mean win_rate "
                 f"is in {protocol.BAND[0]}–{protocol.BAND[1]}, the one with the lowest final val loss: lr "
                 f"{band.lr:g}, warmup {band.warmup:.3g} of the run, rho {band.rho:g}.", ""]
    text += paired_hessian_section(study, plan, losses)
    write(study, text)
    return text


def study_report(study, title):
    """The report of the 131k bridge or the 124M study: tuning, finals, speedup, the Hessian control, clipping
    and (124M) the runs without the attention scaling."""
    os.chdir(protocol.ROOT)
    losses = protocol.known_losses(study)
    plan = protocol.make_plan(study, losses)
    text = header(study, plan, losses, title) + tuning_sections(study, plan, losses)
    text += speedup_section(study, plan, losses)[0] + paired_hessian_section(study, plan, losses)
    rows = [[LABELS[o], mean_std(clip_rates(study, plan, o))] for o in LABELS if finals_of(plan, o, study.T)]
    text += ["## Clipping (fraction of steps whose gradient norm exceeded grad_clip = 1.0, final runs at T)", "",
             compare.markdown_table(["optimizer", "clip rate (mean ± std)"], rows) if rows else "None yet.", ""]
    if any(r.phase == "noscale" for r in plan.runs):
        text += no_scaling_section(study, plan, losses)
    figures = []
    if study.tuning:  # a grid search of its own (the bridge re-tunes lr only: its table says it all)
        heatmaps = output(study, "heatmaps.png")
        plot_heatmaps(study, plan, losses, heatmaps)
        figures.append(os.path.basename(heatmaps))
    finals = [r for r in plan.runs if r.phase in ("final", "sequential") and not r.overrides]
    if compare_runs(study, finals, "curves", "optimizer_name,max_iters", f"adamw max_iters={study.T}"):
        figures.append(os.path.basename(output(study, "curves.png")) + " (with its .md)")
    if figures:
        text += ["Figures (in results/): " + ", ".join(figures) + ".", ""]
    write(study, text)
    return text


# ----------------------------------------------------------------------------- the paper's claims

# (column, the study whose finals measure the speedup, the study whose runs make the Hessian control)
REGIMES = (("30M, 32k tokens/step", protocol.TUNED, protocol.INBAND),
           ("30M, 131k", protocol.BRIDGE, protocol.BRIDGE),
           ("124M, 131k", protocol.GPT2_SMALL, protocol.GPT2_SMALL))
WORDS = {"reproduces the 2x claim at this scale": "yes", "a smaller gain": "partly", "no gain": "no",
         "inconclusive": "open"}


@dataclasses.dataclass
class Regime:
    """What one regime's records say about each claim (None where not measured yet)."""
    name: str
    sophia: dict = None  # Sophia-G's row of speedups() at T
    others: dict = dataclasses.field(default_factory=dict)  # label -> the speedup row at T of sign momentum, Lion
    overhead: float = None  # Sophia-G's training seconds per iteration over AdamW's, minus 1 (finals at T)
    clip: dict = dataclasses.field(default_factory=dict)  # optimizer -> mean clip rate of its finals at T
    control: dict = None  # paired_control of the first Sophia-G group in the win_rate band, else of the first
    no_scaling: dict = dataclasses.field(default_factory=dict)  # no_scaling()


def measure(name, study, control_study):
    os.chdir(protocol.ROOT)
    losses = protocol.known_losses(study)
    plan = protocol.make_plan(study, losses)
    regime = Regime(name)
    at_T = [r for r in speedups(study, plan, losses) if r["iters"] == study.T]
    regime.sophia = next((r for r in at_T if r["label"] == "Sophia-G"), None)
    regime.others = {r["label"]: r for r in at_T if r["label"] in ("sign momentum", "Lion")}
    spi = {o: seconds_per_iter(study, finals_of(plan, o, study.T)) for o in ("adamw", "sophiag")}
    if all(spi.values()):
        regime.overhead = spi["sophiag"] / spi["adamw"] - 1
    regime.clip = {o: float(np.mean(c)) for o in LABELS if (c := clip_rates(study, plan, o))}
    control_plan = plan if control_study is study else protocol.make_plan(control_study)
    control_losses = losses if control_study is study else protocol.known_losses(control_study)
    controls = [c for _, runs in control_groups(control_study, control_plan)
                if (c := paired_control(control_study, control_plan, control_losses, runs))]
    regime.control = next((c for c in controls if c["in_band"]), controls[0] if controls else None)
    regime.no_scaling = no_scaling(study, plan, losses)
    return regime


def overall(words, regimes, measured, not_tests=()):
    """One word for a claim from each regime's word, and which regimes it rests on when not all (`not_tests`:
    those whose runs exist but cannot answer the claim)."""
    if not measured:
        return "not measured yet"
    word = words[0] if len(set(words)) == 1 else "mixed"
    gaps = [f"{why} at {', '.join(r.name for r in rs)}" for why, rs in (
        ("not a test", [r for r in regimes if r in not_tests]),
        ("not measured", [r for r in regimes if r not in measured and r not in not_tests])) if rs]
    return word if not gaps else f"{word} ({'; '.join(gaps)})"


def speedup_claim(regimes, factor_key=None):
    """Cells and verdict of a 2x claim: Sophia-G's speedup at T in steps, or scaled to tokens or seconds."""
    cells, words, measured = [], [], []
    for regime in regimes:
        row = regime.sophia
        if row is None or (factor_key and row[factor_key] is None):
            cells.append("not run yet")
            continue
        s = scaled(row["s"], row[factor_key]) if factor_key else row["s"]
        cells.append(fmt_interval(s))
        words.append(WORDS[compare.verdict(s["low"], s["high"])])
        measured.append(regime)
    return cells, overall(words, regimes, measured)


def claims_rows(regimes):
    rows = []
    for claim, factor in (("2x fewer steps to AdamW's loss (S, 95% interval)", None),
                          ("2x less compute (refresh batches counted as tokens)", "token"),
                          ("2x less wall-clock time (training seconds, one H200 per run)", "wall")):
        cells, word = speedup_claim(regimes, factor)
        rows.append([claim, *cells, word])

    measured = [r for r in regimes if r.overhead is not None]
    rows.append(["Per-step time about 5% above AdamW's", *[
        "not run yet" if r.overhead is None else f"{100 * r.overhead:+.1f}%" for r in regimes],
        overall(["yes" if r.overhead <= 0.05 else "no" for r in measured], regimes, measured)])

    cells, words, measured = [], [], []
    for r in regimes:
        if "sophiag" not in r.clip or len(r.clip) < 2:
            cells.append("not run yet")
            continue
        cells.append(", ".join(f"{LABELS[o]} {c:.3f}" for o, c in r.clip.items() if o != "signmomentum"))
        words.append("yes" if all(r.clip["sophiag"] < c for o, c in r.clip.items() if o not in ("sophiag",
                                                                                                "signmomentum"))
                     else "no")
        measured.append(r)
    rows.append(["Gradient clipping triggered less often than with AdamW and Lion (clip rate)", *cells,
                 overall(words, regimes, measured)])

    cells, words, measured, not_tests = [], [], [], []
    for r in regimes:
        c = r.control
        if c is None:
            cells.append("not run yet")
        elif not c["in_band"]:
            cells.append(f"not a test: win_rate {c['win_rate']:.3f}, outside the band")
            not_tests.append(r)
        else:
            cells.append(f"{c['diff']:+.4f} ({c['low']:+.4f} to {c['high']:+.4f}), win_rate {c['win_rate']:.2f}")
            words.append("yes" if c["low"] > 0 else "no (hurts)" if c["high"] < 0 else "no")
            measured.append(r)
    rows.append(["The Hessian helps: sign momentum minus Sophia-G in the win_rate band (nats, paired by seed)",
                 *cells, overall(words, regimes, measured, not_tests)])

    largest = regimes[-1]
    found = largest.no_scaling
    cell = "; ".join(f"{LABELS[o]} {stability(b)} ({fmt_loss(b)} without, {fmt_loss(a)} with)"
                     for o, (a, b, _) in found.items()) if found else "not run yet"
    word = ("yes" if math.isfinite(found["sophiag"][1]) else "no") if "sophiag" in found else "not measured yet"
    if word == "yes" and "adamw" in found and math.isfinite(found["adamw"][1]):
        word = "yes (so does AdamW)"  # the paper's point is the contrast: here it is not shown
    rows.append(["Trains without the attention's layer-index scaling", *["—"] * (len(regimes) - 1), cell, word])

    small, large = regimes[1], regimes[2]  # the same 131k batch
    if small.sophia and large.sophia:
        a, b = small.sophia["s"], large.sophia["s"]
        word = "grows" if b["low"] > a["high"] else "shrinks" if b["high"] < a["low"] else "no change detected"
        cell = (f"S {compare.fmt_speedup(b['point'], b['limits'])} vs "
                f"{compare.fmt_speedup(a['point'], a['limits'])} at 30M")
    else:
        word, cell = "not measured yet", "not run yet"
    rows.append(["The gain grows with model size (S at 124M vs 30M, both 131k)", *["—"] * (len(regimes) - 1), cell,
                 word])
    return rows


def claims_table(regimes):
    return compare.markdown_table(["claim of the paper", *[r.name for r in regimes], "verdict"], claims_rows(regimes))


def plot_speedups(regimes, path):
    """S with its interval for Sophia-G, sign momentum and Lion at T, regime by regime."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, label in enumerate(("Sophia-G", "sign momentum", "Lion")):
        rows = [(j, regime.sophia if label == "Sophia-G" else regime.others.get(label))
                for j, regime in enumerate(regimes)]
        rows = [(j + (i - 1) * 0.2, row["s"]) for j, row in rows if row is not None]
        if rows:
            ax.errorbar([x for x, _ in rows], [s["point"] for _, s in rows], fmt="o", color=f"C{i}", capsize=4,
                        label=label, yerr=[[s["point"] - s["low"] for _, s in rows],
                                           [s["high"] - s["point"] for _, s in rows]])
    ax.axhline(1, color="gray", lw=1)
    ax.axhline(2, color="black", ls="--", lw=1, label="the paper's 2x")
    ax.set_xticks(range(len(regimes)), [r.name for r in regimes])
    ax.set_ylabel("step speedup S over AdamW at T (95% interval)")
    ax.set_title("Tuned at each regime; S = AdamW's schedule length reaching the same loss / T", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_win_rates(path):
    """Sophia-G's win_rate per parameter set (mean over the final seeds at T), regime by regime: the runs at
    the tuned rho, and those of the Hessian control in the band."""
    fig, axes = plt.subplots(1, len(REGIMES), figsize=(6 * len(REGIMES), 4.5), squeeze=False)
    for ax, (name, study, control_study) in zip(axes[0], REGIMES):
        os.chdir(protocol.ROOT)
        for k, (group, runs) in enumerate(control_groups(control_study, protocol.make_plan(control_study))[:2]):
            for j, key in enumerate(["train/win_rate"] + [f"train/win_rate/{s}" for s in WIN_RATE_SETS]):
                curves = [series(control_study, r, key) for r in runs]
                curves = [c for c in curves if len(c[0])]
                if curves:
                    n = min(len(c[0]) for c in curves)
                    ax.plot(curves[0][0][:n], np.mean([c[1][:n] for c in curves], axis=0), color=f"C{j}",
                            ls="-" if k == 0 else "--", lw=1,
                            label=f"{key.replace('train/', '')}, {group} (rho {runs[0].rho:g})")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylabel("win_rate (mean over seeds)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "not run yet", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    """Every study's report, then the claims table and its figures (results/claims.md, claims_*.png)."""
    report(protocol.TUNED)
    inband_report(protocol.INBAND)
    study_report(protocol.BRIDGE, "The 30M model at 131k tokens per iteration")
    study_report(protocol.GPT2_SMALL, "GPT-2 small (124M) at 131k tokens per iteration")
    regimes = [measure(*regime) for regime in REGIMES]
    text = ["# The paper's claims, regime by regime", "",
            "Made by `python scripts/protocol_report.py` from the committed records (results/<study>/). "
            "Each regime is tuned on its own: its report (results/<study>_report.md) has the runs.", "",
            claims_table(regimes), ""]
    with open(OUT + "claims.md", "w") as f:
        f.write("\n".join(text))
    plot_speedups(regimes, OUT + "claims_speedups.png")
    plot_win_rates(OUT + "claims_win_rate.png")
    print("\n".join(text))


if __name__ == "__main__":
    main()
