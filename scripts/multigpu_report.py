"""
Summarise what scripts/multigpu.sh left in results/multigpu/: the equivalence of 1 and 2 GPUs (against the
micro-batch control), the ranks' agreement, scaling, the iteration after the first refresh (compile_wait/:
scripts/iteration_times.py and a train.py run), the two-node run, and the SIGTERM stop and resume.
Writes results/multigpu/summary.md and equivalence.png; a step whose files are missing is reported as not run.

    python scripts/multigpu_report.py [results/multigpu]
"""

import glob
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from training.metrics import read_metrics  # noqa: E402

OPTIMIZERS = ("adamw", "sophiag")


def curves(path):
    """({iteration: train loss}, {iteration: val loss}) of a metrics.jsonl."""
    records = read_metrics(path)
    train = {r["iter"]: r["train/loss"] for r in records if "train/loss" in r}
    val = {r["iter"]: r["val/loss"] for r in records if "val/loss" in r}
    return train, val


def largest_difference(a, b, iterations=None):
    """The largest |a - b| over the iterations both have (within `iterations`, if given)."""
    common = [i for i in a if i in b and (iterations is None or i in iterations)]
    return max(abs(a[i] - b[i]) for i in common), len(common)


def median_tokens_per_s(path, after=30):
    """tokens/s of a run's log records after iteration `after` (compilation and one-time work excluded)."""
    values = sorted(r["tokens_per_s"] for r in read_metrics(path) if "tokens_per_s" in r and r["iter"] > after)
    return values[len(values) // 2]


def rank_lines(log):
    return [line for line in open(log).read().splitlines() if re.match(r"^\w+: (identical|DIFFERENT) on", line)]


def equivalence(folder):
    lines = ["## 1. One GPU against two (GPT-2 small, enwiki, 200 iterations of 60 x 1024 tokens)", "",
             "| optimizer | 1 vs 2 GPUs: max train-loss difference | max val-loss difference | "
             "control (1 GPU, micro-batch 15 vs 30): train | control: val | final val loss 1 GPU / 2 GPUs | "
             "steady tokens/s 1 GPU / 2 GPUs |",
             "|---|---|---|---|---|---|---|"]
    plots = {}
    for opt in OPTIMIZERS:
        paths = {k: os.path.join(folder, f"{opt}-{k}.metrics.jsonl") for k in ("1gpu", "2gpu", "1gpu-micro15")}
        if not all(os.path.exists(p) for p in paths.values()):
            lines.append(f"| {opt} | not run | | | | | |")
            continue
        runs = {k: curves(p) for k, p in paths.items()}
        plots[opt] = runs
        (one_t, one_v), (two_t, two_v), (ctl_t, ctl_v) = runs["1gpu"], runs["2gpu"], runs["1gpu-micro15"]
        last = max(one_v)
        lines.append(f"| {opt} | {largest_difference(one_t, two_t)[0]:.4f} | "
                     f"{largest_difference(one_v, two_v)[0]:.4f} | "
                     f"{largest_difference(one_t, ctl_t)[0]:.4f} | {largest_difference(one_v, ctl_v)[0]:.4f} | "
                     f"{one_v[last]:.4f} / {two_v[last]:.4f} | {median_tokens_per_s(paths['1gpu']):,.0f} / "
                     f"{median_tokens_per_s(paths['2gpu']):,.0f} |")
    lines += ["", "Each rank's state after the 2-GPU runs (`scripts/rank_agreement.py`):", ""]
    for opt in OPTIMIZERS:
        log = os.path.join(folder, f"{opt}-2gpu.log")
        if os.path.exists(log):
            lines += [f"- {opt}: " + "; ".join(rank_lines(log))]
    if plots:
        plot(plots, os.path.join(os.path.dirname(folder), "equivalence.png"))
        lines += ["", "![train loss on 1 and 2 GPUs](equivalence.png)"]
    return lines


def plot(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(runs), figsize=(6 * len(runs), 7), squeeze=False, sharex=True)
    labels = {"1gpu": "1 GPU (2 micro-steps of 30)", "2gpu": "2 GPUs (1 micro-step of 30 each)",
              "1gpu-micro15": "control: 1 GPU, 4 micro-steps of 15"}
    for col, (opt, curves_of) in enumerate(runs.items()):
        reference = curves_of["1gpu"][0]
        for key, (train, _) in curves_of.items():
            its = sorted(train)
            axes[0][col].plot(its, [train[i] for i in its], label=labels[key])
            if key != "1gpu":
                common = [i for i in its if i in reference]
                axes[1][col].plot(common, [train[i] - reference[i] for i in common], label=labels[key])
        axes[0][col].set_title(f"{opt}: train loss (mean over 10 iterations)")
        axes[1][col].set_title(f"{opt}: difference from 1 GPU")
        axes[1][col].axhline(0, color="gray", lw=0.5)
        axes[1][col].set_xlabel("iteration")
        axes[0][col].legend()
        axes[1][col].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def scaling(folder):
    lines = ["## 2. Scaling (bench.py on 1 and 2 GPUs)", "",
             "| model | tokens per iteration | optimizer | 1 GPU tokens/s | 2 GPUs tokens/s | efficiency |",
             "|---|---|---|---|---|---|"]
    sources = []
    for size in ("small", "medium"):
        logs = {n: sorted(glob.glob(os.path.join(folder, f"{size}-{n}gpu*.log"))) for n in (1, 2)}
        if not all(logs.values()):
            lines.append(f"| {size} | not run | | | | |")
            continue
        sources += [os.path.basename(log) for n in (1, 2) for log in logs[n]]
        rows = {n: {opt: tps for log in paths for opt, tps in bench_rows(log).items()} for n, paths in logs.items()}
        tokens = re.search(r"(\d+ x \d+) tokens per iteration", open(logs[1][0]).read()).group(1)
        for opt in OPTIMIZERS:
            one, two = rows[1].get(opt), rows[2].get(opt)
            if one and two:
                lines.append(f"| {size} | {tokens} | {opt} | {one:,.0f} | {two:,.0f} | {100 * two / (2 * one):.1f}% |")
    if sources:
        lines += ["", "From " + ", ".join(sources) + "."]
    return lines


def bench_rows(path):
    """{optimizer: tokens/s} of the bench.py tables in a file: its --out, or its log (rank 0 prints each row's
    table as the row finishes, so a log keeps the rows of a run that did not finish)."""
    rows, header = {}, None
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "tokens/s" in cells:
            header = cells
        elif header and len(cells) == len(header) and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = float(cells[header.index("tokens/s")].replace(",", ""))
    return rows


def iteration_times(log):
    """{(rank, what, iteration): ms} of a scripts/iteration_times.py log (what: total, refresh,
    update_hessian; two ranks' lines may share a line of the file)."""
    found = re.findall(r"rank (\d+) iter (\d+) (total|refresh|update_hessian) ([\d.]+) ms", open(log).read())
    return {(int(rank), what, int(it)): float(ms) for rank, it, what, ms in found}


def compile_wait(folder, equivalence_folder):
    lines = ["## 2b. The iteration after the first refresh (Sophia-G, scripts/iteration_times.py, GPT-2 small, "
             "480 x 1024 tokens)", ""]
    probes = {n: os.path.join(folder, f"probe-{n}gpu.log") for n in (1, 2)}
    if not all(os.path.exists(p) for p in probes.values()):
        return lines + ["not run"]
    for n, probe in probes.items():
        times = iteration_times(probe)
        for rank in range(n):
            totals = {it: ms for (r, what, it), ms in times.items() if r == rank and what == "total"}
            done = min(it for (r, what, it) in times if r == rank and what == "refresh")  # iterations before it
            median = sorted(totals.values())[len(totals) // 2]
            lines.append(f"- {n} GPU{'s' if n > 1 else ''}, rank {rank}: the first refresh "
                         f"{times[(rank, 'refresh', done)]:,.0f} ms (its "
                         f"Hessian update, compiled then, {times[(rank, 'update_hessian', done)]:,.0f} ms); the "
                         f"iteration after it {totals[done]:,.0f} ms, {totals[done] - median:+,.0f} ms against the "
                         f"median iteration ({median:,.0f} ms)")
    fixed = os.path.join(folder, "sophiag-2gpu.metrics.jsonl")
    before = os.path.join(equivalence_folder, "sophiag-2gpu.metrics.jsonl")
    if os.path.exists(fixed) and os.path.exists(before):
        ms = {path: {r["iter"]: r["ms_per_iter"] for r in read_metrics(path) if "ms_per_iter" in r}
              for path in (fixed, before)}
        lines.append(f"- train.py on 2 GPUs (equivalence-2gpu sophiag, 60 x 1024 tokens), logged ms/iter of iterations "
                     f"11-20: {ms[before][20]:.1f} when each rank left out only its own compilation, "
                     f"{ms[fixed][20]:.1f} leaving out the longest of any rank (then {ms[fixed][30]:.1f} at 21-30)")
    return lines


def read_events(path):
    """[(seconds or None, text)] of an events.txt: multigpu.sh stamps its own lines with the time; lines
    that a command printed into it have none."""
    events = []
    for line in open(path).read().splitlines():
        stamp, _, text = line.partition(" ")
        events.append((float(stamp), text) if re.match(r"^\d+\.\d+$", stamp) else (None, line))
    return events


def sigterm(folder, equivalence_folder):
    lines = ["## 4a. SIGTERM to torchrun mid-run, then resume (Sophia-G, 2 GPUs)", ""]
    events = os.path.join(folder, "events.txt")
    if not os.path.exists(events):
        return lines + ["not run"]
    stopped = open(os.path.join(folder, "stopped.log")).read()
    stops = re.findall(r"rank (\d+): stopping at iteration (\d+)", stopped)
    lines += ["- each rank's stop: " + ", ".join(f"rank {r} at iteration {i}" for r, i in sorted(stops)),
              "- " + "; ".join(re.findall(r"^saved \S+ at iteration \d+", stopped, re.M)[-1:])
              + " (the stop's checkpoint)",
              "- events: " + "; ".join(text for _, text in read_events(events))]
    uninterrupted = os.path.join(equivalence_folder, "sophiag-2gpu.metrics.jsonl")
    if os.path.exists(uninterrupted):
        (a_t, a_v), (b_t, b_v) = curves(uninterrupted), curves(os.path.join(folder, "stopped-resumed.metrics.jsonl"))
        stop = int(stops[0][1]) if stops else 100
        before, after = range(stop), range(stop, 10**9)
        lines.append(f"- against the uninterrupted 2-GPU run (same command, equivalence step): largest train-loss "
                     f"difference {largest_difference(a_t, b_t, before)[0]:.4f} before the stop, "
                     f"{largest_difference(a_t, b_t, after)[0]:.4f} after the resume; val loss "
                     f"{largest_difference(a_v, b_v, before)[0]:.4f} / {largest_difference(a_v, b_v, after)[0]:.4f}")
    resumed = open(os.path.join(folder, "resumed.log")).read()
    lines += ["- after the resume: " + "; ".join(rank_lines(os.path.join(folder, "resumed.log")))]
    lines += [f"- resumed run: {m}" for m in re.findall(r"^resuming .*$", resumed, re.M)]
    return lines


def twonode(folder, equivalence_folder):
    lines = ["## 3 and 4b. Two nodes on one host; SIGKILL of one node's process", ""]
    events = os.path.join(folder, "events.txt")
    if not os.path.exists(events):
        return lines + ["not run"]
    events = read_events(events)
    kill = next((t for t, text in events if t is not None and text.startswith("SIGKILL")), None)
    for t, text in events:
        after_kill = kill is not None and t is not None and t > kill
        lines.append(f"- {text} ({t - kill:.1f} s after the SIGKILL)" if after_kill else f"- {text}")
    for log in sorted(glob.glob(os.path.join(folder, "*.log"))):
        text = open(log).read()
        saved = re.findall(r"^(?:saved \S+|resuming \S+) at iteration \d+", text, re.M)
        errors = [line[:300] for line in text.splitlines() if line.startswith("error: rank")]
        lines.append(f"- {os.path.basename(log)}: "
                     f"{'; '.join(saved + errors) or 'no checkpoint written, no error line'}")
    standalone = os.path.join(equivalence_folder, "sophiag-2gpu.metrics.jsonl")
    if os.path.exists(standalone):
        (a_t, _), (b_t, _) = curves(standalone), curves(os.path.join(folder, "twonode.metrics.jsonl"))
        difference, n = largest_difference(a_t, b_t)
        lines.append(f"- against the same run by one launcher (`--standalone`, equivalence step): largest train-loss "
                     f"difference {difference:.4f} over the {n} logged iterations up to {max(b_t)}")
    return lines


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    root = argv[0] if argv else "results/multigpu"
    sections = [equivalence(os.path.join(root, "equivalence")), scaling(os.path.join(root, "scaling")),
                compile_wait(os.path.join(root, "compile_wait"), os.path.join(root, "equivalence")),
                twonode(os.path.join(root, "twonode"), os.path.join(root, "equivalence")),
                sigterm(os.path.join(root, "sigterm"), os.path.join(root, "equivalence"))]
    text = ("# Multi-GPU checks (`python scripts/multigpu_report.py`)\n\n" + "\n\n".join("\n".join(s) for s in sections)
            + "\n")
    with open(os.path.join(root, "summary.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
