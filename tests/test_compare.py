"""Tests for scripts/compare.py on synthetic metrics.jsonl files whose answers are known: AdamW runs with
val loss L(iter) = 3 + 5 exp(-iter / 200), a Sophia group on L(2 iter) (twice as fast per step, 10% slower
per iteration), and AdamW schedule lengths with chosen final losses."""

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from training.config import make_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS_PER_ITER = 4 * 32  # total_bs x block_size of the synthetic runs


def load_compare():
    spec = importlib.util.spec_from_file_location("compare", os.path.join(REPO_ROOT, "scripts", "compare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = load_compare()


def loss_curve(it):
    return 3 + 5 * math.exp(-it / 200)


def write_run(out_dir, optimizer, max_iters, val_loss, seed=1, eval_interval=50, log_interval=10,
              seconds_per_iter=0.1, stop_at=None):
    """A metrics.jsonl as train.py writes it: config line, then per iteration its training record (every
    log_interval) and its evaluation (every eval_interval and at max_iters); `stop_at` interrupts it."""
    cfg = make_config(out_dir=str(out_dir), optimizer_name=optimizer, max_iters=max_iters, seed=seed,
                      eval_interval=eval_interval, log_interval=log_interval, total_bs=4, block_size=32)
    records = [{"config": dataclasses.asdict(cfg)}]
    for it in range(0, (max_iters if stop_at is None else stop_at) + 1):
        base = {"iter": it, "tokens": it * TOKENS_PER_ITER, "time": it * seconds_per_iter}
        if it > 0 and it % log_interval == 0:
            records.append({**base, "train/loss": val_loss(it) + 0.05, "lr": 1e-3, "mfu": 0.3,
                            "ms_per_iter": 1000 * seconds_per_iter,
                            "tokens_per_s": TOKENS_PER_ITER / seconds_per_iter, "train/clip_rate": 0.0})
        if it % eval_interval == 0 or it == max_iters:
            records.append({**base, "val/loss": val_loss(it), "eval/train_loss": val_loss(it) - 0.01})
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(out_dir)


def interpolated_crossing(xs, losses, target):
    """The expected steps to target, written out independently: the first segment that crosses it."""
    for x0, x1, l0, l1 in zip(xs, xs[1:], losses, losses[1:]):
        if l0 > target >= l1:
            return x0 + (l0 - target) / (l0 - l1) * (x1 - x0)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """AdamW at 1000 iterations (two seeds, +-0.01) and Sophia-G at 500 on L(2 iter), 10% slower per iter."""
    root = tmp_path_factory.mktemp("runs")
    for seed, offset in ((1, 0.01), (2, -0.01)):
        write_run(root / f"adamw-{seed}", "adamw", 1000, lambda it, o=offset: loss_curve(it) + o, seed=seed)
        write_run(root / f"sophiag-{seed}", "sophiag", 500, lambda it, o=offset: loss_curve(2 * it) + o,
                  seed=seed, eval_interval=25, seconds_per_iter=0.11)
    (root / "notes.md").write_text("not a run\n")  # a glob over the folder must skip this
    return root


def groups_of(root, keys=("optimizer_name", "max_iters")):
    return compare.group_runs(compare.load_runs([str(root / "*")]), list(keys))


# ----------------------------------------------------------------------------- reading and grouping

def test_steps_to_target_interpolates_the_first_crossing():
    xs, losses = [0, 10, 20, 30], [5.0, 3.0, 1.0, 2.5]
    assert compare.steps_to_target(xs, losses, 2.0) == pytest.approx(15.0, abs=1e-12)
    assert compare.steps_to_target(xs, losses, 3.0) == pytest.approx(10.0, abs=1e-12)
    assert compare.steps_to_target(xs, losses, 6.0) == 0.0  # already there at the first point
    assert compare.steps_to_target(xs, losses, 0.5) is None


def test_load_run_flags_incomplete_runs_and_uses_the_last_config(tmp_path):
    path = write_run(tmp_path / "stopped", "adamw", 1000, loss_curve, stop_at=320)
    run = compare.load_run(path)
    assert not run.complete and run.final_loss is None
    assert run.evals["iter"][-1] == 300 and run.train["iter"][-1] == 320
    with open(os.path.join(path, "metrics.jsonl"), "a") as f:
        f.write('{"iter": 330, "tokens": 42')  # killed mid-write
    assert compare.load_run(path).train["iter"][-1] == 320

    done = write_run(tmp_path / "resumed", "adamw", 400, loss_curve)
    lines = open(os.path.join(done, "metrics.jsonl")).read().splitlines()
    first_config = json.loads(lines[0])
    first_config["config"]["max_iters"] = 200  # started with a shorter schedule, resumed at 400
    with open(os.path.join(done, "metrics.jsonl"), "w") as f:
        f.write("\n".join([json.dumps(first_config)] + lines) + "\n")
    run = compare.load_run(os.path.join(done, "metrics.jsonl"))
    assert run.max_iters == 400 and run.complete and run.final_loss == pytest.approx(loss_curve(400))


def test_glob_expansion_skips_non_runs_and_missing_paths_fail_clearly(runs_dir, tmp_path):
    paths = compare.expand_runs([str(runs_dir / "*")])
    assert [os.path.basename(os.path.dirname(p)) for p in paths] == ["adamw-1", "adamw-2", "sophiag-1", "sophiag-2"]
    assert compare.expand_runs([str(runs_dir / "adamw-1"), str(runs_dir / "adamw-1" / "metrics.jsonl")]) == \
        [str(runs_dir / "adamw-1" / "metrics.jsonl")]
    with pytest.raises(compare.CompareError, match=r"^no metrics.jsonl under .*out-x; pass a run's out_dir"):
        compare.expand_runs([str(tmp_path / "out-x")])
    with pytest.raises(compare.CompareError, match="no metrics.jsonl under"):
        compare.expand_runs([str(tmp_path / "nothing-*")])


def test_group_runs_by_config_keys(runs_dir):
    groups = groups_of(runs_dir)
    assert [g.label for g in groups] == ["adamw max_iters=1000", "sophiag max_iters=500"]
    assert [[r.seed for r in g.runs] for g in groups] == [[1, 2], [1, 2]]
    assert [g.label for g in groups_of(runs_dir, ["seed"])] == ["1", "2"]
    with pytest.raises(compare.CompareError, match="unknown --group_by key 'optimiser'"):
        groups_of(runs_dir, ["optimiser"])


def test_mean_curve_and_band_over_seeds(runs_dir):
    adamw = groups_of(runs_dir)[0]
    curve = adamw.val
    np.testing.assert_array_equal(curve["iter"], np.arange(0, 1001, 50))
    np.testing.assert_allclose(curve["loss"], [loss_curve(it) for it in curve["iter"]], rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve["loss_max"] - curve["loss_min"], 0.02, atol=1e-12)
    np.testing.assert_allclose(curve["tokens"], curve["iter"] * TOKENS_PER_ITER)

    # different evaluation iterations: interpolated onto their union within the range both cover
    a = {"iter": np.array([0.0, 10, 20]), "loss": np.array([4.0, 3.0, 2.0])}
    b = {"iter": np.array([0.0, 5, 15]), "loss": np.array([4.0, 3.0, 1.0])}
    mean = compare.mean_curve([a, b])
    np.testing.assert_array_equal(mean["iter"], [0, 5, 10, 15])
    np.testing.assert_allclose(mean["loss"], [4.0, (3.5 + 3.0) / 2, (3.0 + 2.0) / 2, (2.5 + 1.0) / 2])


def test_default_baseline_and_errors(runs_dir):
    groups = groups_of(runs_dir)
    assert compare.find_baseline(groups).label == "adamw max_iters=1000"
    assert compare.find_baseline(groups, "sophiag max_iters=500") is groups[1]
    with pytest.raises(compare.CompareError, match="no group labelled 'lion'"):
        compare.find_baseline(groups, "lion")
    with pytest.raises(compare.CompareError, match="--baseline"):
        compare.find_baseline(groups[1:])


# ----------------------------------------------------------------------------- speedups

def test_speedups_to_a_target_inside_the_curves(runs_dir):
    groups = groups_of(runs_dir)
    adamw, sophia = groups
    rows = compare.speedup_rows(groups, adamw, 3.5)
    base, fast = rows[0]["to_target"], rows[1]["to_target"]

    evals = np.arange(0, 1001, 50)
    expected = interpolated_crossing(evals, [loss_curve(it) for it in evals], 3.5)
    assert base["iter"] == pytest.approx(expected, abs=1e-6)
    assert base["iter"] == pytest.approx(200 * math.log(10), abs=2.0)  # the analytic inverse, up to interpolation
    assert fast["iter"] == pytest.approx(expected / 2, abs=1e-6)
    assert base["tokens"] == pytest.approx(expected * TOKENS_PER_ITER, rel=1e-9)
    assert fast["time"] == pytest.approx(expected / 2 * 0.11, rel=1e-9)
    assert rows[1]["speedup"]["iter"] == pytest.approx(2, rel=1e-9)
    assert rows[1]["speedup"]["tokens"] == pytest.approx(2, rel=1e-9)
    assert rows[1]["speedup"]["time"] == pytest.approx(2 / 1.1, rel=1e-9)

    # per seed: each run's own crossing; the +0.01 seed is slower than the mean, the -0.01 one faster
    own = [compare.steps_to_target(r.evals["iter"], r.evals["loss"], 3.5) for r in sophia.used]
    assert rows[1]["run_speedups"] == pytest.approx([base["iter"] / s for s in own], rel=1e-12)
    assert rows[1]["run_speedups"][0] < 2 < rows[1]["run_speedups"][1]


def test_default_target_is_the_baseline_final_loss(runs_dir):
    groups = groups_of(runs_dir)
    target, source = compare.choose_target(groups[0])
    assert target == pytest.approx(loss_curve(1000), abs=1e-12) and "adamw max_iters=1000" in source
    rows = compare.speedup_rows(groups, groups[0], target)
    assert rows[0]["to_target"]["iter"] == pytest.approx(1000, abs=1e-6)
    assert rows[1]["to_target"]["iter"] == pytest.approx(500, abs=1e-6)
    assert rows[1]["speedup"]["iter"] == pytest.approx(2, rel=1e-9)
    assert rows[0]["run_speedups"][0] is None  # the seed above the mean never reaches the mean's final loss
    assert rows[0]["run_speedups"][1] > 1


def test_target_override_and_not_reached(runs_dir):
    groups = groups_of(runs_dir)
    text = compare.speedup_table(groups, groups[0], ["optimizer_name", "max_iters"], target=2.9)
    assert "Target val loss: 2.9000, set with --target." in text
    rows = [line for line in text.splitlines() if line.startswith("| adamw") or line.startswith("| sophiag")]
    assert len(rows) == 4  # two in the runs table, two in the speedup table
    assert all(row.count("not reached") == 3 for row in rows[2:])
    assert "| — |" in rows[3]


def write_schedule_runs(root):
    """AdamW complete at 250/500/1000 with final losses 3.6/3.3/3.1 (curves L scaled to end there), Sophia
    at 500 ending at 3.2 and 3.05, and one interrupted Sophia run."""
    def ending_at(final, max_iters):
        return lambda it: final + 5 * (math.exp(-it / (max_iters / 5)) - math.exp(-5))

    for max_iters, final in ((250, 3.6), (500, 3.3), (1000, 3.1)):
        write_run(root / f"adamw-{max_iters}", "adamw", max_iters, ending_at(final, max_iters))
    write_run(root / "sophiag-500", "sophiag", 500, ending_at(3.2, 500))
    write_run(root / "sophiag-250", "sophiag", 250, ending_at(3.05, 250))
    write_run(root / "sophiag-1000", "sophiag", 1000, ending_at(3.0, 1000), stop_at=430)


def test_schedule_speedup_interpolates_in_log_length():
    lengths = [(250, 3.6), (500, 3.3), (1000, 3.1)]
    length, speedup, relation = compare.schedule_speedup(lengths, 3.2, 500)
    assert relation == "=" and length == pytest.approx(500 * math.sqrt(2), rel=1e-12)
    assert speedup == pytest.approx(math.sqrt(2), rel=1e-12)
    assert compare.schedule_speedup(lengths, 3.45, 250)[0] == pytest.approx(250 * math.sqrt(2), rel=1e-12)
    assert compare.schedule_speedup(lengths, 3.3, 250)[:2] == pytest.approx((500, 2))
    assert compare.schedule_speedup(lengths, 3.0, 250) == (1000, 4.0, ">")
    assert compare.schedule_speedup(lengths, 3.7, 500) == (250, 0.5, "<")


def test_main_writes_the_report_and_the_plot(tmp_path):
    write_schedule_runs(tmp_path / "runs")
    out = tmp_path / "results" / "cmp"
    text = compare.main([str(tmp_path / "runs" / "*"), "--out", str(out), "--logx", "--smooth", "3"])
    assert os.path.getsize(f"{out}.png") > 0
    assert open(f"{out}.md").read() == text
    assert "Target val loss: 3.1000, the final val loss of the baseline 'adamw max_iters=1000'" in text
    assert "| group | final val loss | iters to target | step speedup |" in text
    assert "sophiag-1000/metrics.jsonl (last evaluation at iter 400 of 1000)" in text
    assert "sophiag max_iters=1000 (incomplete)" in text
    assert "adamw final val loss by max_iters: 250: 3.6000, 500: 3.3000, 1000: 3.1000." in text
    assert "| sophiag max_iters=500 | 500 | 3.2000 (n=1) | 707 | 1.41x |" in text
    assert "| sophiag max_iters=250 | 250 | 3.0500 (n=1) | >1000 (beyond measured range) | >4.00x |" in text
    assert "sophiag max_iters=1000 |" not in text.split("## Schedule-aware speedup")[1]  # no complete run


def test_schedule_speedup_not_monotone_or_too_few_lengths(tmp_path):
    write_run(tmp_path / "a", "adamw", 250, lambda it: 3.2 + 1 / (1 + it))
    write_run(tmp_path / "b", "adamw", 500, lambda it: 3.3 + 1 / (1 + it))
    groups = groups_of(tmp_path)
    text = compare.speedup_table(groups, groups[1], ["optimizer_name", "max_iters"])
    assert "Not computed: adamw's final val loss does not fall monotonically with max_iters" in text
    text = compare.speedup_table(groups[1:], groups[1], ["optimizer_name", "max_iters"])
    assert "Not computed: needs complete adamw runs at 2 or more max_iters" in text


def test_command_line_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "scripts/compare.py", str(tmp_path / "out-x")], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == f"error: no metrics.jsonl under {tmp_path / 'out-x'}; pass a run's out_dir, its " \
                            f"metrics.jsonl, or a glob such as 'results/protocol/*'\n"


# ----------------------------------------------------------------------------- the decision rule

REPRODUCES = "reproduces the 2x claim at this scale"
NO_GAIN = "no gain"
SMALLER = "a smaller gain"
INCONCLUSIVE = "inconclusive"


@pytest.mark.parametrize("low, high, expected", [
    (1.5, 1.5, REPRODUCES), (1.5, 9.0, REPRODUCES), (2.0, 2.4, REPRODUCES),  # low >= 1.5
    (1.4999, 9.0, INCONCLUSIVE), (1.4999, 1.6, INCONCLUSIVE),
    (0.3, 0.4, NO_GAIN), (0.5, 1.0999, NO_GAIN), (1.05, 1.0999, NO_GAIN),  # high < 1.1
    (0.5, 1.1, INCONCLUSIVE), (1.0, 1.2, INCONCLUSIVE),
    (1.1, 1.1, SMALLER), (1.1, 1.4999, SMALLER), (1.2, 1.3, SMALLER),  # low >= 1.1 and high < 1.5
    (1.1, 1.5, INCONCLUSIVE), (1.0999, 1.4, INCONCLUSIVE), (0.9, 1.6, INCONCLUSIVE), (1.2, 2.5, INCONCLUSIVE),
])
def test_verdict_on_each_range_and_its_boundaries(low, high, expected):
    assert compare.verdict(low, high) == expected


def test_verdict_over_every_interval_of_hand_picked_ends():
    """Every interval [low, high] with ends among values at, just below and around the thresholds, against
    the rule as docs/studies.md states it."""
    ends = (0.5, 1.0, 1.0999, 1.1, 1.1001, 1.3, 1.4999, 1.5, 1.5001, 2.0, 3.0)
    checked = 0
    for low in ends:
        for high in (h for h in ends if h >= low):
            if low >= 1.5:
                expected = REPRODUCES
            elif high < 1.1:
                expected = NO_GAIN
            elif low >= 1.1 and high < 1.5:
                expected = SMALLER
            else:
                expected = INCONCLUSIVE
            assert compare.verdict(low, high) == expected, (low, high)
            checked += 1
    assert checked == 66


ADAMW_MEANS = {250: 3.6, 500: 3.3, 1000: 3.1}  # AdamW's final loss by schedule length


def adamw_finals(spread=0.0, seeds=3):
    """AdamW's final losses per length: the means above, seeds spread evenly by +-spread around them."""
    offsets = np.linspace(-spread, spread, seeds)
    return {n: list(mean + offsets) for n, mean in ADAMW_MEANS.items()}


def test_speedup_interval_without_seed_spread_is_the_point():
    s = compare.speedup_interval(adamw_finals(), [3.2] * 3, 500)  # the defaults: 10,000 resamples
    assert s["point"] == pytest.approx(math.sqrt(2), rel=1e-12)  # halfway between 500 and 1000 in log length
    means = [(n, float(np.mean(v))) for n, v in sorted(adamw_finals().items())]
    assert s["point"] == pytest.approx(compare.schedule_speedup(means, 3.2, 500)[1], rel=1e-12)
    assert s["low"] == pytest.approx(s["point"], rel=1e-12) and s["high"] == pytest.approx(s["point"], rel=1e-12)
    assert s["relation"] == "=" and s["dropped"] == 0
    assert s["limits"] == (0.5, 2.0)
    assert compare.fmt_speedup(s["point"], s["limits"]) == "1.41x"
    assert compare.verdict(s["low"], s["high"]) == SMALLER  # [1.41, 1.41]: within [1.1, 1.5)


@pytest.mark.parametrize("final, max_iters, point, relation, text", [
    (3.0, 500, 2.0, ">", "≥2.00x"),  # below AdamW's loss at its longest schedule: at least 1000/500
    (3.7, 500, 0.5, "<", "≤0.50x"),  # above its loss at its shortest: at most 250/500
    (3.0, 250, 4.0, ">", "≥4.00x"),
    (3.3, 250, 2.0, "=", "2.00x"),  # exactly AdamW's loss at 500: measured, not a bound
])
def test_outside_the_measured_range_the_speedup_is_a_bound_at_the_limits(final, max_iters, point, relation, text):
    s = compare.speedup_interval(adamw_finals(), [final] * 3, max_iters, resamples=500)
    assert s["point"] == pytest.approx(point, rel=1e-12) and s["relation"] == relation
    assert s["low"] == pytest.approx(point, rel=1e-12) and s["high"] == pytest.approx(point, rel=1e-12)
    assert s["limits"] == (250 / max_iters, 1000 / max_iters)
    assert compare.fmt_speedup(s["point"], s["limits"]) == text
    if relation == "=":
        return
    # with seed spread, resamples beyond the measured range count at the limit: both ends sit there
    spread = compare.speedup_interval(adamw_finals(0.02), [final - 0.03, final, final + 0.03], max_iters,
                                      resamples=500)
    assert spread["point"] == pytest.approx(point) and spread["relation"] == relation
    assert (spread["low"], spread["high"]) == pytest.approx((point, point))
    assert compare.fmt_speedup(spread["low"], spread["limits"]) == text


def test_an_interval_that_reaches_past_the_range_ends_at_the_limit():
    s = compare.speedup_interval(adamw_finals(0.01), [3.02, 3.12, 3.22], 500, resamples=2000)
    assert s["relation"] == "=" and 1.5 < s["point"] < 2.0
    assert s["high"] == pytest.approx(2.0)  # some resamples fall below AdamW's loss at 1000
    assert s["low"] < s["point"]
    assert compare.fmt_speedup(s["high"], s["limits"]) == "≥2.00x"
    assert not compare.fmt_speedup(s["low"], s["limits"]).startswith(("≥", "≤"))


def test_speedup_interval_with_spread_contains_the_point_and_widens_with_it():
    finals = np.array([3.19, 3.2, 3.21])
    narrow = compare.speedup_interval(adamw_finals(0.01), list(finals), 500, resamples=2000)
    wide = compare.speedup_interval(adamw_finals(0.03), list(3.2 + 3 * (finals - 3.2)), 500, resamples=2000)
    for s in (narrow, wide):
        assert s["point"] == pytest.approx(math.sqrt(2), rel=1e-9)  # the seed means are unchanged
        assert s["low"] < s["point"] < s["high"]
        assert s["dropped"] == 0
    assert wide["low"] < narrow["low"] and narrow["high"] < wide["high"]
    assert wide["high"] - wide["low"] > 2 * (narrow["high"] - narrow["low"])
    # a narrower level gives a nested interval
    half = compare.speedup_interval(adamw_finals(0.01), list(finals), 500, level=0.5, resamples=2000)
    assert narrow["low"] < half["low"] < half["point"] < half["high"] < narrow["high"]


def test_speedup_interval_is_deterministic_for_a_given_seed():
    args = (adamw_finals(0.02), [3.15, 3.2, 3.28], 500)
    first = compare.speedup_interval(*args, resamples=1000, seed=5)
    assert compare.speedup_interval(*args, resamples=1000, seed=5) == first
    other = compare.speedup_interval(*args, resamples=1000, seed=6)
    assert other["point"] == first["point"] and (other["low"], other["high"]) != (first["low"], first["high"])


def test_speedup_interval_needs_a_falling_baseline():
    assert compare.speedup_interval({250: [3.6], 500: [3.7], 1000: [3.1]}, [3.2], 500, resamples=100) is None
    assert compare.speedup_interval({250: [3.6], 500: [3.3], 1000: [3.3]}, [3.2], 500, resamples=100) is None
    # falling means whose resamples need not fall: those resamples are dropped and counted
    s = compare.speedup_interval({250: [3.35, 3.45], 500: [3.3, 3.4], 1000: [3.1, 3.1]}, [3.3], 500,
                                 resamples=1000)
    assert 0 < s["dropped"] < 1000
    assert s["low"] <= s["point"] <= s["high"]


def test_difference_interval():
    a, b = [1.0, 1.2, 1.4], [0.5, 0.6]
    point, low, high = compare.difference_interval(a, b, resamples=2000)
    assert point == pytest.approx(1.2 - 0.55, rel=1e-12)
    assert min(a) - max(b) <= low < point < high <= max(a) - min(b)
    assert compare.difference_interval(a, b, resamples=2000) == (point, low, high)  # deterministic
    assert compare.difference_interval(b, a, resamples=2000)[0] == pytest.approx(-point)
    wider = compare.difference_interval([0.8, 1.2, 1.6], [0.4, 0.7], resamples=2000)
    assert wider[0] == pytest.approx(point) and wider[1] < low and high < wider[2]
    assert compare.difference_interval([2.0] * 3, [1.5] * 4, resamples=500) == pytest.approx((0.5, 0.5, 0.5))
    for a, b in (([1.0] * 3, [0.4, 0.5, 0.6]), ([0.4, 0.5, 0.6], [1.0] * 3)):  # each sample is resampled
        point, low, high = compare.difference_interval(a, b, resamples=500)
        assert low < point < high


def test_paired_difference_interval_cancels_what_the_seeds_share():
    """Losses that differ a lot from seed to seed but by a steady 0.01 within each seed: the paired interval
    is about that 0.01 and excludes 0, the unpaired one cannot tell."""
    shared = np.array([5.40, 5.48, 5.44, 5.52])
    a, b = shared + 0.01 + np.array([0.001, -0.001, 0.0, 0.001]), shared
    point, low, high = compare.paired_difference_interval(a, b, resamples=2000)
    assert point == pytest.approx(np.mean(a - b)) and 0.0085 < low <= point <= high < 0.0115
    assert compare.difference_interval(a, b, resamples=2000)[1] < 0  # unpaired: the seed spread swamps it
    assert compare.paired_difference_interval(b, a, resamples=2000)[0] == pytest.approx(-point)
    assert compare.paired_difference_interval([1.0, 2.0], [0.5, 1.5], resamples=100) == pytest.approx((0.5, 0.5, 0.5))
