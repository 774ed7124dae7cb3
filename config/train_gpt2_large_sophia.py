# The paper's GPT-2 large (770M) run with Sophia-G (Liu et al. 2023), values as in the official repository
# (github.com/Liuhong99/Sophia). Shared by every paper config and set by training/config.py's defaults:
# OpenWebText, 480 sequences x 1024 tokens per iteration (batch_size is per GPU; accumulation =
# 480 / (batch_size * GPUs)), 100k iterations, 2k warmup then cosine decay to min_lr, gradient
# clipping 1.0, evaluation every 1000 iterations over 200 batches, no bias, no dropout, attention
# scaled by the inverse layer index.

out_dir = 'out-gpt2-large-sophiag'
wandb_log = False  # True to log to wandb (needs `wandb login`)
wandb_group = 'gpt2-large-100k'
wandb_run_name = 'gpt2-large-sophiag'

n_layer = 36
n_head = 20
n_embd = 1280
batch_size = 4

optimizer_name = 'sophiag'
learning_rate = 0.0003
min_lr = 1e-05
weight_decay = 0.2
beta1 = 0.965
beta2 = 0.99
hess_interval = 10
rho = 0.05
