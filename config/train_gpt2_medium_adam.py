# The paper's GPT-2 medium (355M) run with AdamW (Liu et al. 2023), values as in the official repository
# (github.com/Liuhong99/Sophia). Shared by every paper config and set by training/config.py's defaults:
# OpenWebText, 480 sequences x 1024 tokens per iteration (batch_size is per GPU; accumulation =
# 480 / (batch_size * GPUs)), 100k iterations, 2k warmup then cosine decay to min_lr, gradient
# clipping 1.0, evaluation every 1000 iterations over 200 batches, no bias, no dropout, attention
# scaled by the inverse layer index.

out_dir = 'out-gpt2-medium-adamw'
wandb_log = False  # True to log to wandb (needs `wandb login`)
wandb_group = 'gpt2-medium-100k'
wandb_run_name = 'gpt2-medium-adamw'

n_layer = 24
n_head = 16
n_embd = 1024
batch_size = 6

optimizer_name = 'adamw'
learning_rate = 0.0003
min_lr = 6e-05
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
