#!/usr/bin/env bash
# The multi-GPU checks of results/multigpu/ (docs/multi-gpu.md), on one host with 2 GPUs:
#
#   bash scripts/multigpu.sh equivalence-1gpu adamw 0   # one GPU (here GPU 0): the reference curve
#   bash scripts/multigpu.sh equivalence-1gpu adamw 0 15  # the control: micro-batch 15 instead of 30
#   bash scripts/multigpu.sh equivalence-2gpu adamw     # the same run on 2 GPUs, then the ranks' states compared
#   bash scripts/multigpu.sh scaling small 1            # bench.py on 1 or 2 GPUs (small: 124M, medium: 355M);
#                                                       # its rows: $OPTIMIZERS (default adamw,sophiag)
#   bash scripts/multigpu.sh sigterm                    # SIGTERM to torchrun mid-run, then resume
#   bash scripts/multigpu.sh twonode                    # two torchrun launchers (two "nodes", one GPU each):
#                                                       # train, checkpoint, resume, then SIGKILL one node's rank
#
# Logs and metrics go to $RESULTS (default results/multigpu/<step>/), checkpoints to $RUNS (default
# out-multigpu/). $SHRINK is appended to every training command (e.g. a tiny CPU model to rehearse the
# script: SHRINK="--device=cpu --compile=False ..."). Every run is GPT-2 small on enwiki
# (data/enwiki/prepare.py), 200 iterations of 60 x 1024 tokens: 2 micro-steps of 30 on one GPU, one on each
# of two.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-results/multigpu}
RUNS=${RUNS:-out-multigpu}
SHRINK=${SHRINK:-}
METRICS=metrics.jsonl CKPT=ckpt.pt  # a run folder's files (training/rundir.py)
TORCHRUN=${TORCHRUN:-python3 -m torch.distributed.run}  # torchrun of the python3 that has torch
COMMON="--dataset=enwiki --total_bs=60 --batch_size=30 --max_iters=200 --warmup_iters=20 --lr_decay_iters=200
        --eval_interval=50 --eval_iters=10 --log_interval=10 $SHRINK"

config() {  # the paper config of an optimizer
    case $1 in adamw) echo config/train_gpt2_small_adam.py ;; sophiag) echo config/train_gpt2_small_sophia.py ;; esac
}

now() { date +%s.%N; }

keep_metrics() {  # copy a run's metrics beside its log
    cp "$RUNS/$1/$METRICS" "$RESULTS/$1.$METRICS"
}

wait_for_iter() {  # until run folder $1's metrics have a record of iteration >= $2 (or the process $3 ended)
    until python3 - "$1/$METRICS" "$2" <<'EOF'
import json, sys
try:
    lines = open(sys.argv[1]).read().splitlines()
except FileNotFoundError:
    sys.exit(1)
sys.exit(0 if any(json.loads(l).get("iter", -1) >= int(sys.argv[2]) for l in lines if l.endswith("}")) else 1)
EOF
    do
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.5
    done
}

two_nodes() {  # two launchers ("nodes" 0 and 1), one GPU each, as the README's multi-node command (which
              # node becomes global rank 0 is decided at the rendezvous); logs $1.node0.log, $1.node1.log
    local name=$1; shift
    for node in 0 1; do
        CUDA_VISIBLE_DEVICES=$node $TORCHRUN --nnodes=2 --nproc_per_node=1 \
            --rdzv_backend=c10d --rdzv_endpoint=127.0.0.1:29512 --rdzv_id="$name" \
            train.py "$@" > "$RESULTS/$name.node$node.log" 2>&1 &
        eval "launcher$node=$!"
    done
}

step=${1:?"usage: bash scripts/multigpu.sh equivalence-1gpu|equivalence-2gpu|scaling|sigterm|twonode ..."}
shift
case $step in
equivalence-1gpu)  # OPTIMIZER GPU [MICRO_BATCH]: a micro-batch of 15 (4 micro-steps) is the control: the same
                   # run as on one GPU with 2 micro-steps, summed in another order (the size of bf16 noise);
                   # for Sophia-G also other refresh labels (they are seeded per micro-batch)
    RESULTS=$RESULTS/equivalence; mkdir -p "$RESULTS"
    name=$1-1gpu${3:+-micro$3}
    CUDA_VISIBLE_DEVICES=$2 python3 train.py "$(config "$1")" $COMMON ${3:+--batch_size=$3} --out_dir="$RUNS/$name" \
        > "$RESULTS/$name.log" 2>&1
    keep_metrics "$name"
    ;;
equivalence-2gpu)  # OPTIMIZER
    RESULTS=$RESULTS/equivalence; mkdir -p "$RESULTS"
    $TORCHRUN --standalone --nproc_per_node=2 scripts/rank_agreement.py "$(config "$1")" $COMMON \
        --out_dir="$RUNS/$1-2gpu" > "$RESULTS/$1-2gpu.log" 2>&1
    echo "exit status $?" >> "$RESULTS/$1-2gpu.log"
    keep_metrics "$1-2gpu"
    ;;
scaling)  # SIZE GPUS: bench.py, AdamW and Sophia-G; small at the paper's 480 x 1024 tokens per iteration,
          # medium at 96 x 1024 (micro-batch 16) to fit the device time
    RESULTS=$RESULTS/scaling; mkdir -p "$RESULTS"
    batch="--total_bs=480"; [ "$1" = medium ] && batch="--total_bs=96 --batch_size=16"
    launch="python3"; [ "$2" = 2 ] && launch="$TORCHRUN --standalone --nproc_per_node=2"
    devices=0; [ "$2" = 2 ] && devices=0,1
    CUDA_VISIBLE_DEVICES=$devices $launch bench.py --size="$1" $batch --rounds=1 --optimizers="${OPTIMIZERS:-adamw,sophiag}" \
        --out="$RESULTS/$1-$2gpu.md" $SHRINK > "$RESULTS/$1-$2gpu.log" 2>&1
    ;;
sigterm)  # Sophia-G on 2 GPUs; SIGTERM to the launcher once iteration 100 is logged; then resume to 200
    RESULTS=$RESULTS/sigterm; mkdir -p "$RESULTS"
    run=(scripts/rank_agreement.py "$(config sophiag)" $COMMON --out_dir="$RUNS/sophiag-2gpu-stopped")
    $TORCHRUN --standalone --nproc_per_node=2 "${run[@]}" > "$RESULTS/stopped.log" 2>&1 &
    launcher=$!
    wait_for_iter "$RUNS/sophiag-2gpu-stopped" 100 $launcher
    echo "$(now) SIGTERM to the launcher" > "$RESULTS/events.txt"
    kill -TERM $launcher
    wait $launcher
    echo "$(now) launcher exit status $?" >> "$RESULTS/events.txt"
    $TORCHRUN --standalone --nproc_per_node=2 "${run[@]}" --init_from=resume > "$RESULTS/resumed.log" 2>&1
    echo "$(now) resumed run's exit status $?" >> "$RESULTS/events.txt"
    cp "$RUNS/sophiag-2gpu-stopped/$METRICS" "$RESULTS/stopped-resumed.$METRICS"
    ;;
twonode)  # Sophia-G as two nodes: to iteration 100 (one checkpoint, at 100); resume towards 200, and once
          # iteration 140 is logged SIGKILL node 1's training process: node 0 must exit within dist_timeout
          # (60 s here), and the checkpoint of iteration 100 must load
    RESULTS=$RESULTS/twonode; mkdir -p "$RESULTS"
    run=("$(config sophiag)" $COMMON --checkpoint_interval=100 --out_dir="$RUNS/sophiag-twonode")
    two_nodes train "${run[@]}" --max_iters=100
    wait $launcher0; s0=$?; wait $launcher1; s1=$?
    echo "$(now) first part: launchers' exit statuses $s0 $s1" > "$RESULTS/events.txt"
    two_nodes resume "${run[@]}" --init_from=resume --dist_timeout=60
    wait_for_iter "$RUNS/sophiag-twonode" 140 $launcher0
    worker=$(pgrep -P $launcher1 -f train.py | head -1)
    echo "$(now) SIGKILL to node 1's training process (pid $worker)" >> "$RESULTS/events.txt"
    kill -KILL "$worker"
    wait $launcher1; s1=$?; echo "$(now) node 1's launcher exit status $s1" >> "$RESULTS/events.txt"
    wait $launcher0; s0=$?; echo "$(now) node 0's launcher exit status $s0" >> "$RESULTS/events.txt"
    python3 -c "from training.checkpoint import load_checkpoint; c = load_checkpoint('$RUNS/sophiag-twonode/$CKPT'); \
print('checkpoint after the kill: loads, iteration', c['iter_num'])" >> "$RESULTS/events.txt" 2>&1
    cp "$RUNS/sophiag-twonode/$METRICS" "$RESULTS/twonode.$METRICS"
    ;;
*)
    echo "unknown step $step" >&2; exit 2 ;;
esac
