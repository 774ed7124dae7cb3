"""
Sample text from a trained checkpoint.

    python sample.py --out_dir=out-cpu-demo --prompt="The history of" --num_samples=2 --max_new_tokens=100
"""

import argparse
import os
import sys

import torch

from checkpoint import CheckpointError, load_checkpoint
from model import GPT, GPTConfig
from tokenizer import EOT, gpt2_encoding


def load_model(out_dir, device):
    ckpt = load_checkpoint(os.path.join(out_dir, "ckpt.pt"))
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt["iter_num"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="out", help="folder holding ckpt.pt")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a new line)")
    parser.add_argument("--num_samples", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="below 1: less random")
    parser.add_argument("--top_k", type=int, default=200, help="sample among the k likeliest tokens")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    try:
        model, iter_num = load_model(args.out_dir, args.device)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    enc = gpt2_encoding()
    prompt = torch.tensor([enc.encode(args.prompt, allowed_special={"<|endoftext|>"})], device=args.device)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    print(f"{args.num_samples} samples from {args.out_dir} (iteration {iter_num}):")
    for _ in range(args.num_samples):
        out = model.generate(prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             n_vocab=enc.n_vocab, generator=generator)
        text = enc.decode([t for t in out[0].tolist() if t != EOT])
        print(text)
        print("-" * 60)


if __name__ == "__main__":
    main()
