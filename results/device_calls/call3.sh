# device call 3 (nvidia-h200-x2): Sophia-G with Liger at micro-batch 240 (issue 15); the bf16-noise controls
# of the equivalence check (one GPU, micro-batch 15 x 4); SIGTERM and resume on 2 GPUs
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
[ -f data/enwiki/train.bin ] || python3 data/enwiki/prepare.py --src .carry > /tmp/prepare.log 2>&1 || { tail /tmp/prepare.log; exit 1; }
R=/tmp/r3; K=$R/kernels; mkdir -p $K $R/mg; export RESULTS=$R/mg
start=$(date +%s)
mark() { echo "$1 exit $2 at $(( $(date +%s) - start )) s" >> $R/status.txt; tar czf $OUT/r.tgz -C $R . 2>/dev/null; }
CUDA_VISIBLE_DEVICES=0 timeout 120 python3 -W ignore bench.py --total_bs=480 --rounds=1 --optimizers=sophiag:output_layer=liger:batch_size=240 --out=$K/sophiag_liger240.md > $K/sophiag_liger240.log 2>&1; mark "liger 240" $?
( timeout 150 bash scripts/multigpu.sh equivalence-1gpu adamw 0 15; mark "control adamw" $? ) &
( timeout 150 bash scripts/multigpu.sh equivalence-1gpu sophiag 1 15; mark "control sophiag" $? ) &
wait
timeout 200 bash scripts/multigpu.sh sigterm; mark "sigterm" $?
cat $R/status.txt $K/*.md $R/mg/sigterm/events.txt
