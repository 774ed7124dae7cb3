# The CPU demo (scripts/demo.sh): a 2-layer GPT trained for a few minutes on the embedded Wikipedia sample
# (data/enwiki_sample, ~1M tokens; `python data/enwiki_sample/prepare.py`). Load it after a paper config,
# which sets the optimizer's hyperparameters, and give the learning rates on the command line:
#   python train.py config/train_gpt2_small_adam.py config/train_cpu_demo.py \
#       --out_dir=out-cpu-demo/adamw --learning_rate=1e-2 --min_lr=5e-4
#   python train.py config/train_gpt2_small_sophia.py config/train_cpu_demo.py \
#       --out_dir=out-cpu-demo/sophiag --learning_rate=3e-3 --min_lr=3e-4
# The loss falls from ~10.8 (uniform over 50k tokens) below the unigram baseline (7.77 nats on this
# validation split).
dataset = 'enwiki_sample'
device = 'cpu'
dtype = 'float32'
compile = False
wandb_group = 'cpu-demo'

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
