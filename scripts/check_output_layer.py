"""
Numerics of the fused output layers (kernels.OUTPUT_LAYERS) against the reference, on a CUDA GPU: per-token
cross-entropy and the gradients w.r.t. the hidden states and the output weight, each under bf16 autocast as in
training, compared with the same function in float64. The torch row (logits materialised, then cross-entropy)
is the reference path: a fused kernel passes when its errors are of the same size as that row's.

    python scripts/check_output_layer.py --out results/bench/output_layer_numerics.md

The inputs are GPT-2 small's shapes: 16,384 tokens of hidden states (unit variance, as LayerNorm leaves
them) times a 50,304 x 768 output weight whose logits spread like a trained model's (std ~3), 5% of the
targets ignored (-1). Fresh inputs for every trial.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training.kernels import OUTPUT_LAYERS, installed, torch_linear_cross_entropy  # noqa: E402


def inputs(seed, tokens=16384, width=768, vocab=50304, device="cuda"):
    gen = torch.Generator(device).manual_seed(seed)
    hidden = torch.randn(tokens, width, device=device, generator=gen)
    weight = torch.randn(vocab, width, device=device, generator=gen) * (3 / width ** 0.5)
    targets = torch.randint(0, vocab, (tokens,), device=device, generator=gen)
    targets[torch.rand(tokens, device=device, generator=gen) < 0.05] = -1
    return hidden, weight, targets


def loss_and_grads(fn, hidden, weight, targets, dtype):
    """Per-token losses, and the gradients of their mean over the counted tokens, through fn."""
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float64):
        per_token = fn(hidden, weight, targets, reduction="none").reshape(-1)
        mean = fn(hidden, weight, targets)
    mean.backward()
    return per_token.detach().double(), mean.detach().double(), hidden.grad.double(), weight.grad.double()


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", default="", help="also write the table to this Markdown file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: this check runs the fused kernels, which need a CUDA GPU")
    names = [name for name, (_, module, _) in OUTPUT_LAYERS.items() if module is None or installed(module)]
    rows = {name: [] for name in names}
    for trial in range(args.trials):
        hidden, weight, targets = inputs(seed=trial)
        counted = targets != -1
        exact = loss_and_grads(torch_linear_cross_entropy, hidden.double(), weight.double(), targets, torch.float64)
        for name in names:
            loss, mean, d_hidden, d_weight = loss_and_grads(OUTPUT_LAYERS[name][0], hidden, weight, targets,
                                                            torch.bfloat16)
            rows[name].append({
                "max |loss - fp64| per token": (loss - exact[0])[counted].abs().max().item(),
                "ignored tokens' loss": loss[~counted].abs().max().item(),
                "|mean loss - fp64|": (mean - exact[1]).abs().item(),
                "rel. error d hidden": relative(d_hidden, exact[2]),
                "rel. error d weight": relative(d_weight, exact[3]),
            })
    lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 autocast vs float64; "
             f"{args.trials} trials of 16,384 tokens x 50,304 classes (GPT-2 small's output layer), the worst shown",
             "", "| output layer | " + " | ".join(rows[names[0]][0]) + " |", "|---|" + "---|" * len(rows[names[0]][0])]
    for name in names:
        worst = {key: max(r[key] for r in rows[name]) for key in rows[name][0]}
        lines.append(f"| {name} | " + " | ".join(f"{v:.2e}" for v in worst.values()) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
