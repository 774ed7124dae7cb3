# GPT-2 small (125M) with Lion, a baseline in the paper (Liu et al. 2023).
# Shared with every paper config (training/config.py's defaults): OpenWebText, 480 sequences x 1024
# tokens per iteration, 100k iterations, 2k warmup then cosine decay to min_lr, gradient clipping 1.0,
# evaluation every 1000 iterations over 200 batches, no bias, no dropout, inverse-layer attention scaling.
# Lion: the paper's betas (0.95, 0.98) and peak lr 1e-4 for 125M; weight decay 1.0 keeps lr * wd near
# AdamW's (the Lion paper's advice: 3-10x AdamW's decay at 3-10x lower lr). min_lr = 0.05 x peak, the
# paper's schedule. The official repository has no Lion config; these are not tuned here.

out_dir = 'out-gpt2-small-lion'
wandb_log = False  # True to log to wandb (needs `wandb login`)
wandb_group = 'gpt2-small-100k'
wandb_run_name = 'gpt2-small-lion'

n_layer = 12
n_head = 12
n_embd = 768
batch_size = 30  # per GPU: the fastest measured on an H100 (docs/performance.md), ~21 GiB; 12 needs ~10 GiB

optimizer_name = 'lion'
learning_rate = 0.0001
min_lr = 5e-06
weight_decay = 1.0
beta1 = 0.95
beta2 = 0.98
