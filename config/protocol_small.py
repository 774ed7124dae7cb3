# The small-scale protocol (scripts/protocol.py): a 6-layer GPT-2 (30M parameters, 19M of them the tied
# embedding) on the 50M-token Wikipedia corpus (make it with `python data/enwiki/prepare.py`), 64 x 512
# tokens per iteration, on one GPU. scripts/protocol.py sets the optimizer, learning rate, run length
# (max_iters = lr_decay_iters) and seed of each run; everything else is here and shared.
dataset = 'enwiki'
wandb_group = 'protocol-small'

n_layer = 6
n_head = 6
n_embd = 384
block_size = 512
batch_size = 64
total_bs = 64

warmup_iters = 50  # fixed for every run length, as the paper's 2k steps
eval_interval = 50
eval_iters = 10
log_interval = 10

grad_clip = 1.0
hess_interval = 10
checkpoint_interval = 100000  # checkpoints only at the end and on SIGTERM: saving costs more than these runs
