# The CPU demo's AdamW run (see train_cpu_demo_sophia.py): the same model, data and schedule.
out_dir = 'out-cpu-demo/adamw'
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

optimizer_name = 'adamw'
learning_rate = 1e-2
min_lr = 5e-4
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
