"""
Train exactly as train.py does (same arguments, under torchrun), then check that every process ends with
the same parameters and optimizer state: DDP all-reduces the gradients and Sophia's refresh averages its
estimate over ranks by hand, so the states must agree bit for bit. A rank whose Hessian EMA drifted from
the others' (a refresh summed instead of averaged, or labels sampled per rank) would step differently.

    torchrun --standalone --nproc_per_node=2 scripts/rank_agreement.py config/train_gpt2_small_sophia.py --max_iters=200

Rank 0 prints one line per state ("hessian: identical on 2 ranks (85.0M values)") and exits 1 if any
differs, naming the largest difference.
"""

import os
import sys

import torch
import torch.distributed as torch_dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
import train  # noqa: E402


def flat_states(run):
    """{name: one flat tensor}: the parameters and each per-parameter optimizer state (e.g. exp_avg,
    hessian), in the parameters' order."""
    params = list(run.network.model.parameters())
    states = {"parameters": [p.detach() for p in params]}
    for p in params:
        for key, value in run.optimizer.state[p].items():
            if torch.is_tensor(value) and value.shape == p.shape:
                states.setdefault(key, []).append(value)
    return {name: torch.cat([t.flatten().float() for t in tensors]) for name, tensors in states.items()}


def compare_ranks(run):
    """Gather each state from every rank onto rank 0's view and report; True if all agree."""
    agree, dist = True, run.dist
    for name, tensor in flat_states(run).items():
        gathered = [torch.empty_like(tensor) for _ in range(dist.world_size)]
        torch_dist.all_gather(gathered, tensor)
        worst = max((other - gathered[0]).abs().max().item() for other in gathered[1:])
        same = all(torch.equal(gathered[0], other) for other in gathered[1:])
        agree &= same
        if dist.is_master:
            verdict = "identical" if same else f"DIFFERENT (largest difference {worst:.3g})"
            print(f"{name}: {verdict} on {dist.world_size} ranks ({tensor.numel() / 1e6:.1f}M values, "
                  f"abs sum {tensor.abs().sum().item():.6g})", flush=True)
    return agree


def main():
    verdict = {}

    def check(run):
        if run.dist.world_size < 2:
            raise SystemExit("error: run this under torchrun with 2 or more processes (--nproc_per_node=2)")
        verdict["agree"] = compare_ranks(run)

    train.main(sys.argv[1:], then=check)
    if not verdict["agree"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
