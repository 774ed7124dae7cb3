# device call 2 (nvidia-h200-x2): scaling (bench.py on 1 and 2 GPUs, each GPU otherwise idle), then two nodes
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
[ -f data/enwiki/train.bin ] || python3 data/enwiki/prepare.py --src .carry > /tmp/prepare.log 2>&1 || { tail /tmp/prepare.log; exit 1; }
R=/tmp/r2; mkdir -p $R/mg; export RESULTS=$R/mg
start=$(date +%s)
mark() { echo "$1 exit $2 at $(( $(date +%s) - start )) s" >> $R/status.txt; tar czf $OUT/r.tgz -C $R . 2>/dev/null; }
for size in small medium; do for n in 1 2; do
  timeout 150 bash scripts/multigpu.sh scaling $size $n; mark "scaling $size $n" $?
done; done
timeout 170 bash scripts/multigpu.sh twonode; mark "twonode" $?
cat $R/status.txt; cat $R/mg/scaling/*.md; cat $R/mg/twonode/events.txt
