# GPT-2 small (125M) with Sophia-H, the paper's Hutchinson variant (Liu et al. 2023).
# Shared with every paper config (training/config.py's defaults): OpenWebText, 480 sequences x 1024
# tokens per iteration, 100k iterations, 2k warmup then cosine decay to min_lr, gradient clipping 1.0,
# evaluation every 1000 iterations over 200 batches, no bias, no dropout, inverse-layer attention scaling.
# Sophia-H (Hutchinson): the official repository never released it for GPT-2. Its h is u * (H u) of the
# mean loss and its step uses bs = 1, so rho is the paper's gamma (0.01 in the paper's text); the other
# values are Sophia-G's. Untuned here. Its refresh runs a Hessian-vector product through the explicit
# (double-backward) attention path, uncompiled, so it costs more than Sophia-G's.

out_dir = 'out-gpt2-small-sophiah'
wandb_log = False  # True to log to wandb (needs `wandb login`)
wandb_group = 'gpt2-small-100k'
wandb_run_name = 'gpt2-small-sophiah'

n_layer = 12
n_head = 12
n_embd = 768
batch_size = 12

optimizer_name = 'sophiah'
learning_rate = 0.0006
min_lr = 1.5e-05
weight_decay = 0.2
beta1 = 0.965
beta2 = 0.99
hess_interval = 10
rho = 0.01
