"""scripts/multigpu_report.py: its arithmetic on made-up runs, and the committed results/multigpu/ summary and
docs/multi-gpu.md figures are what it computes from the committed logs and metrics."""

import json
import os
import shutil

import multigpu_report

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMITTED = os.path.join(REPO_ROOT, "results", "multigpu")


def write_run(path, train, val, tokens_per_s=1000.0):
    with open(path, "w") as f:
        f.write(json.dumps({"config": {}}) + "\n")
        for it, loss in train.items():
            f.write(json.dumps({"iter": it, "train/loss": loss, "tokens_per_s": tokens_per_s}) + "\n")
        for it, loss in val.items():
            f.write(json.dumps({"iter": it, "val/loss": loss}) + "\n")


def test_differences_efficiency_and_missing_steps(tmp_path):
    eq = tmp_path / "equivalence"
    eq.mkdir()
    train = {10 * i: 10.0 - i for i in range(1, 11)}
    val = {0: 11.0, 50: 6.0, 100: 5.0}
    for opt in multigpu_report.OPTIMIZERS:
        write_run(eq / f"{opt}-1gpu.metrics.jsonl", train, val, tokens_per_s=500.0)
        write_run(eq / f"{opt}-2gpu.metrics.jsonl", {**train, 70: train[70] + 0.25}, {**val, 50: 5.875},
                  tokens_per_s=950.0)
        write_run(eq / f"{opt}-1gpu-micro15.metrics.jsonl", {**train, 20: train[20] - 0.5}, val)
    scaling = tmp_path / "scaling"
    scaling.mkdir()
    for n, (adamw, sophiag) in {1: ("100,000", "90,000"), 2: ("196,000", "171,000")}.items():
        header = "gpt2-small (12 layers, 768 wide), 480 x 1024 tokens per iteration\n\n"
        table = "| optimizer | micro-batch | ms/iter | tokens/s |\n|---|---|---|---|\n"
        (scaling / f"small-{n}gpu.log").write_text(f"{header}{table}| adamw | 30 | 1.0 | {adamw} |\nTraceback ...\n")
        (scaling / f"small-{n}gpu-sophiag.log").write_text(f"{header}{table}| sophiag | 30 | 1.0 | {sophiag} |\n")
    wait = tmp_path / "compile_wait"
    wait.mkdir()
    for n in (1, 2):  # iterations of 500 ms, the refresh at the end of iteration 2; on 2 GPUs rank 0 waits 300 ms
        lines = [f"rank {r} iter {i} total {500 + 300 * (n == 2 and r == 0 and i == 3)} ms graphs 3"
                 for i in range(6) for r in range(n)]
        lines += [f"rank {r} iter 3 refresh {900 + 300 * r} ms graphs 5rank {r} iter 3 update_hessian 400 ms graphs 5"
                  for r in range(n)]
        (wait / f"probe-{n}gpu.log").write_text("\n".join(lines) + "\n")
    nodes = tmp_path / "twonode"
    nodes.mkdir()
    (nodes / "events.txt").write_text("100.0 first part: exit statuses 0 0\n200.0 SIGKILL to node 1's process\n"
                                      "201.5 node 0's launcher exit status 1\ncheckpoint after the kill: loads\n")
    write_run(nodes / "twonode.metrics.jsonl", {**train, 70: train[70] + 0.25, 100: train[100] + 0.125}, {})
    multigpu_report.main([str(tmp_path)])
    summary = (tmp_path / "summary.md").read_text()
    assert "| adamw | 0.2500 | 0.1250 | 0.5000 | 0.0000 | 5.0000 / 5.0000 | 500 / 950 |" in summary
    assert "| small | 480 x 1024 | adamw | 100,000 | 196,000 | 98.0% |" in summary
    assert "| small | 480 x 1024 | sophiag | 90,000 | 171,000 | 95.0% |" in summary
    assert "| medium | not run |" in summary
    assert "From small-1gpu-sophiag.log, small-1gpu.log, small-2gpu-sophiag.log, small-2gpu.log." in summary
    assert "- 1 GPU, rank 0: the first refresh 900 ms (its Hessian update, compiled then, 400 ms); the iteration " \
           "after it 500 ms, +0 ms against the median iteration (500 ms)" in summary
    assert "- 2 GPUs, rank 0: the first refresh 900 ms" in summary and "after it 800 ms, +300 ms" in summary
    assert "- 2 GPUs, rank 1: the first refresh 1,200 ms" in summary and "after it 500 ms, +0 ms" in summary
    assert "- SIGKILL to node 1's process\n- node 0's launcher exit status 1 (1.5 s after the SIGKILL)\n" in summary
    assert "largest train-loss difference 0.1250 over the 10 logged iterations up to 100" in summary
    assert summary.count("not run") == 2  # medium, SIGTERM
    assert (tmp_path / "equivalence.png").stat().st_size > 0


def test_the_committed_summary_is_what_the_committed_results_give(tmp_path):
    copy = tmp_path / "multigpu"
    shutil.copytree(COMMITTED, copy)
    multigpu_report.main([str(copy)])
    assert (copy / "summary.md").read_text() == open(os.path.join(COMMITTED, "summary.md")).read()
    readme = open(os.path.join(REPO_ROOT, "docs", "multi-gpu.md")).read()
    summary = (copy / "summary.md").read_text()
    for figure in ("0.0096", "0.0033", "0.0082", "0.0024", "6.3830 / 6.3775", "6.9045 / 6.9021", "511,805", "949,762",
                   "465,221", "865,207", "508,166", "987,718", "97.2%", "456,807", "896,336", "98.1%", "196,790",
                   "377,767", "96.0%", "179,550", "345,993", "96.4%", "1,257 ms", "696.9", "76.1", "0.0041",
                   "0.8 s after the SIGKILL"):
        assert figure in summary and figure in readme, figure
