# A few minutes on a laptop CPU: a small GPT trained with Sophia-G on the embedded Wikipedia sample
# (data/enwiki_sample, ~1M tokens; make it with `python data/enwiki_sample/prepare.py`).
# The loss should fall from ~10.8 (uniform over 50k tokens) to well below the unigram baseline (~7.6).
out_dir = 'out-cpu-demo'
dataset = 'enwiki_sample'
device = 'cpu'
dtype = 'float32'
compile = False

n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 16
total_bs = 32

max_iters = 300
lr_decay_iters = 300
warmup_iters = 30
eval_interval = 100
eval_iters = 10
log_interval = 10

optimizer_name = 'sophiag'
learning_rate = 3e-3
min_lr = 3e-4
weight_decay = 0.2
beta1 = 0.965
beta2 = 0.99
rho = 0.05
hess_interval = 10
