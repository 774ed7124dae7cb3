# device call 1 (nvidia-h200-x2): issue 15's last rows, then the multi-GPU equivalence runs
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
[ -f data/enwiki/train.bin ] || python3 data/enwiki/prepare.py --src .carry > /tmp/prepare.log 2>&1 || { tail /tmp/prepare.log; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv
R=/tmp/r; K=$R/kernels; mkdir -p $K $R/mg
export RESULTS=$R/mg
start=$(date +%s)
mark() { echo "$1 exit $2 at $(( $(date +%s) - start )) s" >> $K/status.txt; tar czf $OUT/r.tgz -C $R . 2>/dev/null; }
( CUDA_VISIBLE_DEVICES=1 timeout 150 python3 -W ignore bench.py --total_bs=480 --rounds=1 --optimizers=adamw:compile_mode=reduce-overhead --out=$K/compile_modes.md > $K/reduce_overhead.log 2>&1; mark "reduce-overhead" $?
  CUDA_VISIBLE_DEVICES=1 timeout 250 python3 -W ignore bench.py --total_bs=480 --rounds=1 --optimizers=adamw:compile_mode=max-autotune-no-cudagraphs --out=$K/compile_modes.md > $K/max_autotune.log 2>&1; mark "max-autotune" $? ) &
( CUDA_VISIBLE_DEVICES=0 timeout 200 python3 -W ignore bench.py --total_bs=480 --rounds=1 --optimizers=sophiag:output_layer=torch,sophiag:output_layer=liger:batch_size=120,sophiag:output_layer=liger:batch_size=240 --out=$K/sophiag_liger.md > $K/sophiag_liger.log 2>&1; mark "liger rows" $?
  CUDA_VISIBLE_DEVICES=0 timeout 90 python3 -W ignore bench.py --total_bs=120 --rounds=1 --optimizers=sophiag --profile --out=$K/profile.md > $K/profile.log 2>&1; mark "profile" $?; cp out-bench/trace_sophiag.txt $K/
  timeout 150 bash scripts/multigpu.sh equivalence-1gpu adamw 0; mark "eq adamw 1gpu" $?
  timeout 150 bash scripts/multigpu.sh equivalence-1gpu sophiag 0; mark "eq sophiag 1gpu" $? ) &
wait
for opt in adamw sophiag; do
  timeout 120 bash scripts/multigpu.sh equivalence-2gpu $opt; mark "eq $opt 2gpu" $?
done
cat $K/status.txt
tar czf $OUT/r.tgz -C $R .
