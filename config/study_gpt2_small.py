# The 124M study (scripts/protocol.py --study gpt2small): GPT-2 small exactly as the paper configs (load it after
# one: 12 layers, 12 heads, 768 channels, block 1024, their betas and weight decay, k = 10, clip 1.0) on the
# 50M-token Wikipedia corpus (`python data/enwiki/prepare.py`), 128 x 1024 = 131,072 tokens per iteration. At
# T = 1000 iterations a run reads 131M tokens, 2.6 passes over the corpus. scripts/protocol.py sets the
# optimizer, learning rate, warmup, run length (max_iters = lr_decay_iters, cosine to lr/20) and seed of each run.
dataset = 'enwiki'
wandb_group = 'study-gpt2-small'

total_bs = 128
batch_size = 64  # 2 micro-steps; ~42 GiB on one H200

eval_interval = 100
eval_iters = 10
val_eval = 'full'  # every run's numbers on the same 241 windows of the val split
log_interval = 10
checkpoint_interval = 100000  # checkpoints only at the end and on SIGTERM
