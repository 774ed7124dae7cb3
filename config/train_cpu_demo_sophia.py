# The CPU demo (scripts/demo.sh): a 2-layer GPT trained for a few minutes on the embedded Wikipedia sample
# (data/enwiki_sample, ~1M tokens; `python data/enwiki_sample/prepare.py`), with Sophia-G. Its twin,
# train_cpu_demo_adam.py, differs only in the optimizer. The loss falls from ~10.8 (uniform over 50k
# tokens) towards and below the unigram baseline (7.77 nats on this validation split).
out_dir = 'out-cpu-demo/sophiag'
dataset = 'enwiki_sample'
device = 'cpu'
dtype = 'float32'
compile = False

n_layer = 2
n_head = 2
n_embd = 64
block_size = 64
batch_size = 32
total_bs = 32

max_iters = 300
lr_decay_iters = 300
warmup_iters = 20
eval_interval = 50
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
