"""Sophia-G in a Hugging Face `transformers.Trainer`: the optimizer goes in through `optimizers=`, the
Hessian refresh runs from a TrainerCallback every k optimizer steps. A tiny randomly initialised GPT-2
learns sequences that count up; nothing is downloaded. Runs on a CPU in seconds:

    pip install -e ".[hf]"
    python examples/hf_trainer_sophia.py
"""

import tempfile

import torch
from transformers import (GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments,
                          get_cosine_schedule_with_warmup)

from sophia import SophiaG, gnb_refresh

torch.manual_seed(0)
VOCAB, LENGTH, BATCH, STEPS, K = 128, 32, 16, 80, 10  # K: refresh the Hessian every K optimizer steps

config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=64,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
model = GPT2LMHeadModel(config)  # random weights, from the config alone


def counting(n):
    """n sequences that count up (mod VOCAB) from a random start: all but the first token are predictable."""
    return (torch.randint(VOCAB, (n, 1)) + torch.arange(LENGTH)) % VOCAB


# The model shifts the labels itself: labels = input_ids.
train_data = [{"input_ids": x, "labels": x} for x in counting(BATCH * STEPS)]

# Weight decay on the 2-D weights only (matmuls, embeddings), not on biases and LayerNorm gains.
params = [p for p in model.parameters() if p.requires_grad]
groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
          {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
optimizer = SophiaG(groups, lr=3e-3, betas=(0.965, 0.99), rho=0.05)
scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=5, num_training_steps=STEPS)


class SophiaRefresh(TrainerCallback):
    """After every K-th optimizer step (the official order: step, then refresh), fold a fresh Gauss-Newton-
    Bartlett estimate into the Hessian EMA. The Trainer has already zeroed the gradients by on_step_end,
    and gnb_refresh clears the ones it makes, so the next training backward starts clean. It also leaves the
    optimizer the number of tokens behind the estimate, the bs of its steps (the Trainer calls step())."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % K == 0:
            # `optimizer` is our SophiaG, not the kwargs' one (accelerate's wrapper, without update_hessian);
            # the plain `model`, not a wrapper the Trainer may have made.
            gnb_refresh(optimizer, lambda x: model(input_ids=x).logits, [counting(BATCH)],
                        max_norm=args.max_grad_norm, seed=state.global_step)


with tempfile.TemporaryDirectory() as output_dir:
    args = TrainingArguments(output_dir=output_dir, max_steps=STEPS, per_device_train_batch_size=BATCH,
                             max_grad_norm=1.0, logging_steps=K, logging_first_step=True, save_strategy="no",
                             report_to="none", disable_tqdm=True, use_cpu=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=train_data, optimizers=(optimizer, scheduler),
                      callbacks=[SophiaRefresh()])
    trainer.train()

losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
stats = optimizer.diagnostics()
print(f"first loss {losses[0]:.3f}, last loss {losses[-1]:.3f}")
print(f"hessian refreshes {optimizer.param_groups[0].get('hessian_updates', 0)}, "
      f"win rate {stats['train/win_rate'].item():.3f}, bs {optimizer.hessian_bs(optimizer.param_groups[0])}")
