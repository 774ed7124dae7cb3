"""
Sample text from a trained checkpoint: this project's, or one of the official Sophia code (in its out_dir).

    python sample.py --out_dir=out-cpu-demo/sophiag --prompt="The history of" --num_samples=2 --max_new_tokens=100
"""

import argparse
import math
import os
import sys

import torch

from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.rundir import RunDir
from training.tokenizer import EOT, gpt2_encoding


def load_model(out_dir, device):
    path = RunDir(out_dir).checkpoint
    if not os.path.exists(path):  # checked here: load_checkpoint's own message is about resuming training
        raise CheckpointError(f"no checkpoint at {path}; train one with `python train.py <config> --out_dir={out_dir}`"
                              " or point --out_dir at a run's folder")
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt).to(device).eval(), ckpt["iter_num"]


def settings_problem(args):
    """What is wrong with the command line's settings, or None."""
    for name in ("num_samples", "max_new_tokens", "top_k"):
        if getattr(args, name) < 1:
            return f"--{name} must be at least 1, got {getattr(args, name)}"
    if not 0 <= args.temperature < math.inf:  # nan too
        return f"--temperature must be a number >= 0 (0: always the likeliest token), got {args.temperature}"
    if not args.prompt:
        return "--prompt is empty; give some text to continue, e.g. --prompt=\"The history of\""
    try:
        device = torch.device(args.device)
    except RuntimeError:
        return f"--device={args.device} is not a device PyTorch knows; use cpu or cuda"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device={args.device} but this machine has no CUDA GPU; use --device=cpu"
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="out", help="a run's folder (train.py's out_dir)")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a new line)")
    parser.add_argument("--num_samples", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="below 1: less random; 0: greedy")
    parser.add_argument("--top_k", type=int, default=200, help="sample among the k likeliest tokens")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    problem = settings_problem(args)
    if problem:
        sys.exit(f"error: {problem}")
    try:
        model, iter_num = load_model(args.out_dir, args.device)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    enc = gpt2_encoding()
    prompt = torch.tensor([enc.encode(args.prompt, allowed_special={"<|endoftext|>"})], device=args.device)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    print(f"{args.num_samples} sample{'s' if args.num_samples > 1 else ''} from {args.out_dir} (iteration {iter_num}):")
    for _ in range(args.num_samples):
        out = model.generate(prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             n_vocab=enc.n_vocab, generator=generator)
        text = enc.decode([t for t in out[0].tolist() if t != EOT])
        print(text)
        print("-" * 60)


if __name__ == "__main__":
    main()
