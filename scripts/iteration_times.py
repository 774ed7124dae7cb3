"""
Each training iteration's wall-clock time, with the Hessian refresh and its update of the EMA timed on
their own, and how many graphs torch.compile has compiled so far: where a one-time cost falls, on each rank.
Sophia-G's paper config at GPT-2 small on bench.py's synthetic data; --key=value config keys override it.
Lines: "rank R iter I total MS graphs G" for iteration I (from 0); "rank R iter N refresh MS graphs G" (and
update_hessian) for the refresh at the end of iteration N (from 0; the logs in results/multigpu/compile_wait/,
made before the loop's parts moved into training/, number it N + 1: the iterations done).

    python scripts/iteration_times.py 35
    torchrun --standalone --nproc_per_node=2 scripts/iteration_times.py 35

(results/multigpu/compile_wait/: on 2 GPUs the iteration after the first refresh took 1.3 s longer on rank 0,
as long as rank 1's compilation of the Hessian update outlasted rank 0's.) Lines go to stderr, flushed.
"""

import os
import sys

from torch._dynamo.utils import counters

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import make_synthetic_dataset, parse_settings, row_config, timed  # noqa: E402
from train import build  # noqa: E402
from training.distributed import init_distributed  # noqa: E402


def report(run, iteration, what, seconds):
    print(f"rank {run.dist.rank} iter {iteration} {what} {1000 * seconds:.1f} ms "
          f"graphs {counters['stats']['unique_graphs']}", file=sys.stderr, flush=True)


class Timed:
    """`target` (a function or a callable object) with each call's time reported; its attributes are the target's."""

    def __init__(self, run, target, name):
        self.run, self.target, self.name = run, target, name

    def __getattr__(self, attribute):
        return getattr(self.target, attribute)

    def __call__(self, *args, **kwargs):
        out = []
        seconds = timed(lambda: out.append(self.target(*args, **kwargs)), self.run.dist.device)
        report(self.run, self.run.progress.iter_num, self.name, seconds)
        return out[0]


def main(argv):
    iterations = int(argv[0]) if argv else 35
    overrides = parse_settings([arg.removeprefix("--") for arg in argv[1:]])
    cfg, dist = init_distributed(row_config("small", "sophiag", {"dataset": make_synthetic_dataset(), **overrides}))
    run = build(cfg, dist)
    run.step.refresh = Timed(run, run.step.refresh, "refresh")
    run.optimizer.update_hessian = Timed(run, run.optimizer.update_hessian, "update_hessian")
    for i in range(iterations):
        report(run, i, "total", timed(run.iteration, dist.device))


if __name__ == "__main__":
    main(sys.argv[1:])
