"""
Compare training runs from their metrics.jsonl files: loss curves per group of runs (mean over seeds with
a min-max band) and a Markdown table of speedups over a baseline, read the way the Sophia paper reads its
claim (Sophia-G reaches AdamW's loss in about half the steps).

    python scripts/compare.py 'results/protocol/*' --out results/protocol/compare
    python scripts/compare.py out-adamw-* out-sophiag-* --group_by optimizer_name,max_iters,learning_rate
    python scripts/compare.py 'runs/*' --baseline "adamw max_iters=100000" --target 2.95 --logx

RUN is an out_dir, a metrics.jsonl or a glob (expanded here, so it may be quoted; a glob skips what is
not a run, such as this script's own outputs). Runs are grouped by config keys (--group_by): the label
is the first key's value, then key=value for the others. Writes <out>.png (val loss vs iterations, tokens
and training time; smoothed training loss vs iterations) and <out>.md (the tables, also printed).

Definitions
- A run is complete when it has an evaluation at iter == max_iters; its final val loss is that one.
  A group's curves and final loss use its complete runs; a group without any uses its incomplete runs
  (and is marked so).
- Group curve: each run is linearly interpolated (in iterations) onto the union of the runs' evaluation
  iterations inside the range every run covers (a no-op when they share them, as seeds of one config do);
  the curve is the mean over runs, the band min..max over runs. Tokens and time are averaged alike.
- Target: --target, else the baseline group's final val loss (mean over its runs). Baseline: --baseline,
  else the adamw group with the largest max_iters.
- To target: where a curve first reaches the target, linearly interpolated between the two evaluations
  around the crossing; tokens and seconds are interpolated between the same two points.
- Speedup: the baseline's iterations (tokens, seconds) to target over the group's. Over seeds: the
  baseline mean curve's iterations over each run's own, min..max over the runs that reach the target.
- Schedule speedup: the baseline optimizer's final val loss (mean over seeds) at each max_iters it has
  complete runs for, piecewise linear in log(max_iters); a group's equivalent baseline length is where
  that equals the group's final loss, and the speedup is that length over the group's max_iters. Outside
  the measured lengths only a bound is given (no extrapolation).
"""

import argparse
import dataclasses
import glob
import os
import sys
from functools import cached_property

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from training.config import Config  # noqa: E402
from training.metrics import MetricsError, read_metrics  # noqa: E402
from training.rundir import RunDir  # noqa: E402

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BASELINE_OPTIMIZER = "adamw"
RUN_HINT = "pass a run's out_dir, its metrics.jsonl, or a glob such as 'results/protocol/*'"
EVAL_FIELDS = {"iter": "iter", "tokens": "tokens", "time": "time", "loss": "val/loss"}
TRAIN_FIELDS = {"iter": "iter", "loss": "train/loss"}
AXES = ("iter", "tokens", "time")  # the x-axes progress to the target is measured in


class CompareError(ValueError):
    pass


# ----------------------------------------------------------------------------- reading runs

@dataclasses.dataclass
class Run:
    path: str  # its metrics.jsonl
    config: dict  # the last config line: a resumed run appends one
    evals: dict  # arrays over evaluations: iter, tokens, time, loss (val)
    train: dict  # arrays over training records: iter, loss

    @property
    def max_iters(self):
        return self.config["max_iters"]

    @property
    def seed(self):
        return self.config.get("seed")

    @property
    def complete(self):
        return len(self.evals["iter"]) > 0 and self.evals["iter"][-1] == self.max_iters

    @property
    def final_loss(self):
        """The val loss at max_iters; None for an incomplete run."""
        return float(self.evals["loss"][-1]) if self.complete else None


def columns(records, fields):
    """Arrays of the given fields over records, in iteration order (a repeated iteration keeps its last)."""
    by_iter = {r["iter"]: r for r in records}
    rows = [by_iter[i] for i in sorted(by_iter)]
    return {name: np.array([r[field] for r in rows], dtype=float) for name, field in fields.items()}


def metrics_path(path):
    """The metrics.jsonl of an out_dir, or the path itself if it is a file; None if neither exists."""
    if os.path.isdir(path):
        path = RunDir(path).metrics
    return path if os.path.isfile(path) else None


def load_run(path):
    """A Run from an out_dir or a metrics.jsonl."""
    metrics = metrics_path(path)
    if metrics is None:
        raise CompareError(f"no metrics.jsonl under {path}; {RUN_HINT}")
    records = read_metrics(metrics)
    configs = [r["config"] for r in records if "config" in r]
    if not configs:
        raise CompareError(f"{metrics} has no config line; is it a metrics.jsonl written by train.py?")
    # a key the run's record lacks was added to train.py after the run: the run had its default
    return Run(path=metrics, config={**dataclasses.asdict(Config()), **configs[-1]},
               evals=columns([r for r in records if "val/loss" in r], EVAL_FIELDS),
               train=columns([r for r in records if "train/loss" in r], TRAIN_FIELDS))


def expand_runs(patterns):
    """The metrics.jsonl paths that RUN arguments name: out_dirs, files, or globs (expanded here)."""
    paths = []
    for pattern in patterns:
        is_glob = any(c in pattern for c in "*?[")
        candidates = sorted(glob.glob(pattern)) if is_glob else [pattern]
        # a glob keeps only runs: it may also match notes or this script's own outputs
        found = [metrics_path(c) for c in candidates if not is_glob or os.path.isdir(c) or c.endswith(".jsonl")]
        found = [path for path in found if path is not None]
        if not found:
            raise CompareError(f"no metrics.jsonl under {pattern}; {RUN_HINT}")
        paths += found
    return list({os.path.realpath(p): p for p in paths}.values())  # a run named twice counts once


def load_runs(patterns):
    """The runs RUN arguments name; a run without any evaluation yet is skipped with a warning."""
    runs = []
    for path in expand_runs(patterns):
        run = load_run(path)
        if len(run.evals["iter"]) == 0:
            print(f"warning: skipping {path}: no evaluation yet", file=sys.stderr)
        else:
            runs.append(run)
    if not runs:
        raise CompareError("none of the runs has an evaluation yet")
    return runs


# ----------------------------------------------------------------------------- groups and curves

def common_iters(curves):
    """The union of the curves' iterations within the range that every curve covers."""
    start = max(c["iter"][0] for c in curves)
    end = min(c["iter"][-1] for c in curves)
    union = np.unique(np.concatenate([c["iter"] for c in curves]))
    return union[(union >= start) & (union <= end)]


def mean_curve(curves):
    """The mean of curves (dicts of arrays keyed by 'iter') on their common iterations, with the min and
    max of 'loss' over curves (the band)."""
    grid = common_iters(curves)
    stacked = {k: np.stack([np.interp(grid, c["iter"], c[k]) for c in curves]) for k in curves[0] if k != "iter"}
    mean = {"iter": grid, **{k: v.mean(axis=0) for k, v in stacked.items()}}
    mean["loss_min"], mean["loss_max"] = stacked["loss"].min(axis=0), stacked["loss"].max(axis=0)
    return mean


def format_value(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def group_label(config, keys):
    """E.g. 'sophiag max_iters=600': the first key's value alone, the others as key=value."""
    first, *rest = keys
    return " ".join([format_value(config.get(first))] + [f"{k}={format_value(config.get(k))}" for k in rest])


def sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


@dataclasses.dataclass
class Group:
    label: str
    runs: list

    @property
    def used(self):
        """The runs its curves and final loss average: the complete ones, or all when none is."""
        return [r for r in self.runs if r.complete] or self.runs

    @property
    def complete(self):
        return any(r.complete for r in self.runs)

    @property
    def finals(self):
        return [r.final_loss for r in self.runs if r.complete]

    @property
    def max_iters(self):
        return max(r.max_iters for r in self.runs)

    @cached_property
    def val(self):
        return mean_curve([r.evals for r in self.used])


def group_runs(runs, keys):
    """Groups of runs with equal values of the config keys, in order of those values (runs by seed)."""
    if not keys:
        raise CompareError("--group_by needs at least one config key, e.g. optimizer_name,max_iters")
    unknown = [k for k in keys if all(k not in r.config for r in runs)]
    if unknown:
        raise CompareError(f"unknown --group_by key {unknown[0]!r}; config keys: {', '.join(runs[0].config)}")
    groups = {}
    for run in sorted(runs, key=lambda r: [sort_key(r.config.get(k)) for k in keys] + [sort_key(r.seed)]):
        groups.setdefault(group_label(run.config, keys), []).append(run)
    return [Group(label, members) for label, members in groups.items()]


def find_baseline(groups, label=None):
    """The group named by --baseline, else the adamw group with the largest max_iters."""
    labels = ", ".join(repr(g.label) for g in groups)
    if label is not None:
        for group in groups:
            if group.label == label:
                return group
        raise CompareError(f"no group labelled {label!r}; groups: {labels}")
    candidates = [g for g in groups if all(r.config.get("optimizer_name") == BASELINE_OPTIMIZER for r in g.runs)]
    if not candidates:
        raise CompareError(f"no {BASELINE_OPTIMIZER} group to compare against; pick one with --baseline LABEL "
                           f"(groups: {labels})")
    longest = [g for g in candidates if g.max_iters == max(c.max_iters for c in candidates)]
    if len(longest) > 1:
        raise CompareError(f"several {BASELINE_OPTIMIZER} groups with max_iters={longest[0].max_iters}: "
                           f"{', '.join(repr(g.label) for g in longest)}; pick one with --baseline LABEL")
    return longest[0]


# ----------------------------------------------------------------------------- speedups

def steps_to_target(xs, losses, target):
    """The x at which `losses` first reaches `target`, linearly interpolated between the two points
    around the crossing; None if it never does."""
    losses = np.asarray(losses, dtype=float)
    # a relative slack of 1e-12: the baseline's mean curve ends at its own mean final loss, up to rounding
    hits = np.flatnonzero(losses <= target + 1e-12 * abs(target))
    if len(hits) == 0:
        return None
    i = hits[0]
    if i == 0:
        return float(xs[0])
    fraction = (losses[i - 1] - target) / (losses[i - 1] - losses[i])
    return float(xs[i - 1] + fraction * (xs[i] - xs[i - 1]))


def to_target(curve, target):
    """Iterations, tokens and seconds a curve needs to reach the target (each None if it never does)."""
    return {x: steps_to_target(curve[x], curve["loss"], target) for x in AXES}


def ratio(baseline, other):
    return baseline / other if baseline is not None and other else None


def choose_target(baseline, target=None):
    """The target val loss and a sentence on where it comes from."""
    if target is not None:
        return target, "set with --target"
    if not baseline.finals:
        raise CompareError(f"the baseline {baseline.label!r} has no complete run to take a target loss from; "
                           f"pass --target LOSS")
    return float(np.mean(baseline.finals)), (f"the final val loss of the baseline {baseline.label!r} "
                                             f"(mean over {len(baseline.finals)} run(s))")


def speedup_rows(groups, baseline, target):
    """Per group: its iterations, tokens and seconds to target, the baseline's ratios to them, and the
    step speedup of each of its runs (None where the run does not reach the target)."""
    base = to_target(baseline.val, target)
    rows = []
    for group in groups:
        need = to_target(group.val, target)
        per_run = [steps_to_target(r.evals["iter"], r.evals["loss"], target) for r in group.used]
        rows.append({"group": group, "to_target": need,
                     "speedup": {x: ratio(base[x], need[x]) for x in AXES},
                     "run_speedups": [ratio(base["iter"], steps) for steps in per_run]})
    return rows


def like_baseline(run, baseline, keys):
    """Whether a run matches the baseline on the optimizer and every --group_by key but max_iters."""
    reference = baseline.runs[0].config
    return all(run.config.get(k) == reference.get(k) for k in (set(keys) | {"optimizer_name"}) - {"max_iters"})


def baseline_lengths(groups, baseline, keys):
    """[(max_iters, mean final val loss)] of the baseline optimizer's complete runs at each schedule length."""
    finals = {}
    for group in groups:
        for run in group.runs:
            if run.complete and like_baseline(run, baseline, keys):
                finals.setdefault(run.max_iters, []).append(run.final_loss)
    return [(length, float(np.mean(losses))) for length, losses in sorted(finals.items())]


def schedule_speedup(lengths, final_loss, max_iters):
    """The baseline schedule length whose final loss equals `final_loss` (piecewise linear in
    log(max_iters) between the measured `lengths`, whose losses must fall with length), and its ratio to
    `max_iters`. Returns (length, ratio, relation): relation '=' inside the measured range; '>' or '<'
    outside it, where length is the range's end and both are bounds."""
    steps = np.array([length for length, _ in lengths], dtype=float)
    losses = np.array([loss for _, loss in lengths])
    if final_loss < losses[-1]:
        return steps[-1], steps[-1] / max_iters, ">"
    if final_loss > losses[0]:
        return steps[0], steps[0] / max_iters, "<"
    # np.interp needs increasing x: interpolate over the losses from the longest schedule down
    length = float(np.exp(np.interp(final_loss, losses[::-1], np.log(steps[::-1]))))
    return length, length / max_iters, "="


# ----------------------------------------------------------------------------- the decision rule

# Stated before the final runs of the tuned protocol (docs/studies.md, "The decision rule"), on the schedule-matched
# step speedup S and its 95% interval [low, high] over seeds:
REPRODUCES = 1.5  # low >= 1.5: "reproduces the 2x claim at this scale"
GAIN = 1.1  # high < 1.1: "no gain"; low >= 1.1 and high < 1.5: "a smaller gain"; else "inconclusive"
LEVEL = 0.95
RESAMPLES = 10_000


def verdict(low, high):
    """The verdict on the 2x claim from the interval [low, high] of the schedule-matched speedup."""
    if low >= REPRODUCES:
        return "reproduces the 2x claim at this scale"
    if high < GAIN:
        return "no gain"
    if low >= GAIN and high < REPRODUCES:
        return "a smaller gain"
    return "inconclusive"


def schedule_speedup_of_means(baseline_finals, finals, max_iters):
    """schedule_speedup on means over seeds: baseline_finals {length: [final losses]}, finals [final
    losses at max_iters]. None when the baseline's mean losses do not fall with length."""
    lengths = [(n, float(np.mean(losses))) for n, losses in sorted(baseline_finals.items())]
    if np.any(np.diff([loss for _, loss in lengths]) >= 0):
        return None
    return schedule_speedup(lengths, float(np.mean(finals)), max_iters)


def speedup_interval(baseline_finals, finals, max_iters, level=LEVEL, resamples=RESAMPLES, seed=0):
    """The schedule-matched step speedup S = n* / max_iters (n*: the baseline length, interpolated in
    log length, whose final loss equals the mean final loss of `finals`) and its percentile-bootstrap
    interval: seeds are resampled with replacement within each baseline length and within `finals`.
    S is only measured between the shortest and the longest baseline length (`limits`, as speedups):
    outside, S is a bound (`relation` '<' or '>'), and resamples there count at the limit, so an
    interval end at a limit means "at most" (the lower limit) or "at least" (the upper) that value.
    Returns dict(point, relation, low, high, limits, dropped), where `dropped` counts resamples whose
    baseline losses did not fall with length; None if the baseline's mean losses do not."""
    measured = schedule_speedup_of_means(baseline_finals, finals, max_iters)
    if measured is None:
        return None
    _, point, relation = measured
    rng = np.random.default_rng(seed)
    draws, dropped = [], 0
    for _ in range(resamples):
        resampled = {n: rng.choice(losses, len(losses)) for n, losses in baseline_finals.items()}
        result = schedule_speedup_of_means(resampled, rng.choice(finals, len(finals)), max_iters)
        if result is None:
            dropped += 1
        else:
            draws.append(result[1])
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    limits = (min(baseline_finals) / max_iters, max(baseline_finals) / max_iters)
    return dict(point=point, relation=relation, low=float(low), high=float(high), limits=limits, dropped=dropped)


def fmt_speedup(value, limits):
    """A speedup, marked as a bound where it sits at a limit of the measured range."""
    mark = "≤" if np.isclose(value, limits[0]) else "≥" if np.isclose(value, limits[1]) else ""
    return f"{mark}{value:.2f}x"


def difference_interval(a, b, level=LEVEL, resamples=RESAMPLES, seed=0):
    """mean(a) - mean(b) and its percentile-bootstrap interval (each sample resampled on its own)."""
    rng = np.random.default_rng(seed)
    draws = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(resamples)]
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(np.mean(a) - np.mean(b)), float(low), float(high)


def paired_difference_interval(a, b, level=LEVEL, resamples=RESAMPLES, seed=0):
    """mean(a - b) over pairs (a[i] and b[i] share a seed) and its percentile-bootstrap interval: the pairs
    are resampled together, so what the seeds share cancels."""
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    draws = [rng.choice(differences, len(differences)).mean() for _ in range(resamples)]
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(differences.mean()), float(low), float(high)


# ----------------------------------------------------------------------------- Markdown

def fmt_steps(x):
    return "not reached" if x is None else f"{x:,.0f}"


def fmt_tokens(x):
    if x is None:
        return "not reached"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if x >= scale:
            return f"{x / scale:,.2f}{suffix}"
    return f"{x:.0f}"


def fmt_seconds(x):
    return "not reached" if x is None else f"{x:,.1f} s" if x < 100 else f"{x:,.0f} s"


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}x"


def fmt_final(group):
    finals = group.finals
    if not finals:
        return "— (no complete run)"
    spread = f" ± {np.std(finals, ddof=1):.4f}" if len(finals) > 1 else ""
    return f"{np.mean(finals):.4f}{spread} (n={len(finals)})"


def fmt_run_spread(speedups):
    reached = [s for s in speedups if s is not None]
    counts = f"({len(reached)}/{len(speedups)} runs)"
    if not reached:
        return f"— {counts}"
    low, high = min(reached), max(reached)
    return f"{low:.2f}x {counts}" if low == high else f"{low:.2f}–{high:.2f}x {counts}"


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def join_values(values):
    return ", ".join(format_value(v) for v in sorted(set(values), key=sort_key))


def runs_section(groups, keys):
    rows = [[g.label, join_values(r.seed for r in g.runs), join_values(r.max_iters for r in g.runs),
             join_values(fmt_tokens(r.max_iters * r.config["total_bs"] * r.config["block_size"]) for r in g.runs),
             f"{sum(r.complete for r in g.runs)}/{len(g.runs)}"] for g in groups]
    text = [f"Runs grouped by {', '.join(keys)}; curves are means over a group's runs (seeds).", "",
            markdown_table(["group", "seeds", "max_iters", "tokens per run", "complete"], rows)]
    incomplete = [r for g in groups for r in g.runs if not r.complete]
    if incomplete:
        text += ["", "Incomplete runs (no evaluation at max_iters; left out of their group's curves when it has "
                     "complete runs): " + "; ".join(f"{r.path} (last evaluation at iter {r.evals['iter'][-1]:.0f} "
                                                    f"of {r.max_iters})" for r in incomplete) + "."]
    return text


def speedup_section(groups, baseline, target):
    rows = []
    for row in speedup_rows(groups, baseline, target):
        group, need, speedup = row["group"], row["to_target"], row["speedup"]
        name = group.label + (" (baseline)" if group is baseline else "")
        name += "" if group.complete else " (incomplete)"
        rows.append([name, fmt_final(group), fmt_steps(need["iter"]), fmt_ratio(speedup["iter"]),
                     fmt_run_spread(row["run_speedups"]), fmt_tokens(need["tokens"]), fmt_ratio(speedup["tokens"]),
                     fmt_seconds(need["time"]), fmt_ratio(speedup["time"])])
    header = ["group", "final val loss", "iters to target", "step speedup", "step speedup over runs",
              "tokens to target", "token speedup", "time to target", "time speedup"]
    return [markdown_table(header, rows), "",
            "- Speedup = the baseline's iterations (tokens, seconds) to the target / the group's; >1 is faster.",
            "- Final val loss: mean ± sample std over the group's complete runs, n runs.",
            "- Step speedup over runs: the baseline mean curve's iterations to target / each run's own, "
            "min–max over the runs that reach the target (how many do, of how many).",
            "- Time is training wall-clock from the records (evaluation and checkpointing excluded). Unlike "
            "steps and tokens it charges Sophia's Hessian refreshes, so it is the honest speedup, provided "
            "the runs shared the same hardware."]


def schedule_section(groups, baseline, keys):
    optimizer = baseline.runs[0].config.get("optimizer_name")
    lengths = baseline_lengths(groups, baseline, keys)
    text = ["## Schedule-aware speedup", "",
            "Midway through a long cosine schedule the loss is higher than at the end of a shorter one, so "
            f"each group's final val loss is set against {optimizer}'s final val loss as a function of its "
            "schedule length (piecewise linear in log(max_iters), mean over seeds; no extrapolation).", ""]
    measured = ", ".join(f"{length}: {loss:.4f}" for length, loss in lengths)
    if len(lengths) < 2:
        return text + [f"Not computed: needs complete {optimizer} runs at 2 or more max_iters; "
                       f"measured: {measured or 'none'}."]
    if np.any(np.diff([loss for _, loss in lengths]) >= 0):
        return text + [f"Not computed: {optimizer}'s final val loss does not fall monotonically with "
                       f"max_iters ({measured})."]
    text += [f"{optimizer} final val loss by max_iters: {measured}.", ""]
    rows = []
    for group in groups:
        own = {r.max_iters for r in group.runs if r.complete}
        if not own or all(like_baseline(r, baseline, keys) for r in group.runs):
            continue  # nothing finished, or one of the measured points itself
        if len(own) > 1:
            rows.append([group.label, join_values(own), fmt_final(group), "— (mixed max_iters)", "—"])
            continue
        max_iters = own.pop()
        length, speedup, relation = schedule_speedup(lengths, float(np.mean(group.finals)), max_iters)
        bound = "" if relation == "=" else relation
        beyond = "" if relation == "=" else " (beyond measured range)"
        rows.append([group.label, str(max_iters), fmt_final(group), f"{bound}{length:.0f}{beyond}",
                     f"{bound}{speedup:.2f}x"])
    header = ["group", "max_iters", "final val loss", f"equivalent {optimizer} max_iters", "schedule speedup"]
    return text + [markdown_table(header, rows) if rows else "No other group has complete runs."]


def speedup_table(groups, baseline, keys, target=None):
    """The Markdown report: runs, target, speedup table with notes, and the schedule-aware speedups."""
    target, source = choose_target(baseline, target)
    text = ["# Run comparison", ""] + runs_section(groups, keys)
    text += ["", f"Target val loss: {target:.4f}, {source}.", "", "## Speedup to the target", ""]
    text += speedup_section(groups, baseline, target) + [""] + schedule_section(groups, baseline, keys)
    return "\n".join(text) + "\n"


# ----------------------------------------------------------------------------- plots

def moving_average(values, n):
    """Centred moving average over n points (fewer at the ends, where the window is cut off)."""
    n = max(1, min(n, len(values)))
    window = np.ones(n)
    return np.convolve(values, window, "same") / np.convolve(np.ones(len(values)), window, "same")


def train_curve(group, smooth):
    """The group's mean smoothed training-loss curve; None without training records."""
    curves = [{"iter": r.train["iter"], "loss": moving_average(r.train["loss"], smooth)}
              for r in group.used if len(r.train["iter"])]
    return mean_curve(curves) if curves else None


def loss_limits(curves):
    """y-limits just below the lowest band and a bit above the loss at ~10% of each curve, so the end of
    training is readable rather than squashed by the initial drop; None when the curves are flat."""
    low = min(c["loss_min"].min() for c in curves)
    high = max(np.interp(0.1 * c["iter"][-1], c["iter"], c["loss_max"]) for c in curves)
    pad = 0.05 * (high - low)
    return (low - pad, high + pad) if pad > 0 else None


def draw(ax, xs, curve, color, label, logx):
    keep = curve["iter"] > 0 if logx else np.ones(len(xs), dtype=bool)  # a log axis cannot show iter 0
    ax.plot(xs[keep], curve["loss"][keep], color=color, label=label, lw=1.5)
    ax.fill_between(xs[keep], curve["loss_min"][keep], curve["loss_max"][keep], color=color, alpha=0.2, lw=0)


def plot(groups, path, logx=False, smooth=1):
    """Val loss vs iterations, tokens and training time, and smoothed training loss vs iterations: mean
    over each group's runs, band min..max over them."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    val_panels = [(axes[0, 0], "iter", "iterations"), (axes[0, 1], "tokens", "tokens"),
                  (axes[1, 0], "time", "training time (s, evaluation excluded)")]
    train_ax = axes[1, 1]
    val_curves, train_curves = [], []
    for i, group in enumerate(groups):
        n = len(group.used)
        label = f"{group.label} ({n} run{'s' * (n > 1)}{'' if group.complete else ', incomplete'})"
        for ax, x, _ in val_panels:
            draw(ax, group.val[x], group.val, f"C{i}", label, logx)
        val_curves.append(group.val)
        train = train_curve(group, smooth)
        if train is not None and len(train["iter"]):
            draw(train_ax, train["iter"], train, f"C{i}", label, logx)
            train_curves.append(train)
    panels = [(ax, xlabel, "val loss", val_curves) for ax, _, xlabel in val_panels]
    panels.append((train_ax, "iterations", f"train loss (moving average over {smooth} logs)", train_curves))
    for ax, xlabel, ylabel, curves in panels:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if logx:
            ax.set_xscale("log")
        limits = loss_limits(curves) if curves else None
        if limits:
            ax.set_ylim(*limits)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("mean over runs, band: min–max over runs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="out_dir, metrics.jsonl or glob")
    parser.add_argument("--out", default="results/compare", help="writes <out>.png and <out>.md")
    parser.add_argument("--group_by", default="optimizer_name,max_iters", help="comma-separated config keys")
    parser.add_argument("--baseline", help="label of the baseline group (default: the adamw group with the "
                                           "largest max_iters)")
    parser.add_argument("--target", type=float, help="target val loss (default: the baseline's final val loss)")
    parser.add_argument("--logx", action="store_true", help="log-scale x axes")
    parser.add_argument("--smooth", type=int, default=5, help="training-loss moving average, in log records")
    args = parser.parse_args(argv)
    if args.smooth < 1:
        parser.error("--smooth must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    keys = [k.strip() for k in args.group_by.split(",") if k.strip()]
    groups = group_runs(load_runs(args.runs), keys)
    baseline = find_baseline(groups, args.baseline)
    text = speedup_table(groups, baseline, keys, args.target)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    plot(groups, args.out + ".png", logx=args.logx, smooth=args.smooth)
    print(text)
    print(f"wrote {args.out}.md and {args.out}.png")
    return text


if __name__ == "__main__":
    try:
        main()
    except (CompareError, MetricsError) as e:
        sys.exit(f"error: {e}")
