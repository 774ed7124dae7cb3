# device call 4 (nvidia-h200-x2): where Sophia-G's one-time stall on 2 GPUs comes from (per-iteration times,
# the refresh timed, dynamo's recompiles; 2 GPUs cold, then 1 GPU); then the two-node run with its SIGKILL
# (.carry/probe_stall.py, run here, is what scripts/iteration_times.py now is: the same lines)
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
[ -f data/enwiki/train.bin ] || python3 data/enwiki/prepare.py --src .carry > /tmp/prepare.log 2>&1 || { tail /tmp/prepare.log; exit 1; }
R=/tmp/r4; P=$R/probe; mkdir -p $P $R/mg; export RESULTS=$R/mg
start=$(date +%s)
mark() { echo "$1 exit $2 at $(( $(date +%s) - start )) s" >> $R/status.txt; tar czf $OUT/r.tgz -C $R . 2>/dev/null; }
TORCH_LOGS=recompiles,graph_breaks timeout 150 python3 -m torch.distributed.run --standalone --nproc_per_node=2 .carry/probe_stall.py 35 > $P/2gpu.log 2>&1; mark "probe 2gpu" $?
TORCH_LOGS=recompiles,graph_breaks CUDA_VISIBLE_DEVICES=0 timeout 120 python3 .carry/probe_stall.py 35 > $P/1gpu.log 2>&1; mark "probe 1gpu" $?
timeout 330 bash scripts/multigpu.sh twonode; mark "twonode" $?
cat $R/status.txt; grep -E "refresh|iter (8|9|1[0-9]|2[0-9]) total" $P/2gpu.log | grep "rank 0" | head -40; cat $R/mg/twonode/events.txt
