# device call 5 (nvidia-h200-x2): scaling of GPT-2 small again, bench.py now starting its timing once every rank
# has compiled; the 2-GPU Sophia-G train.py run again, its logged times now leaving out the other rank's compilation
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
[ -f data/enwiki/train.bin ] || python3 data/enwiki/prepare.py --src .carry > /tmp/prepare.log 2>&1 || { tail /tmp/prepare.log; exit 1; }
R=/tmp/r5; mkdir -p $R/mg $R/after; export RESULTS=$R/mg
start=$(date +%s)
mark() { echo "$1 exit $2 at $(( $(date +%s) - start )) s" >> $R/status.txt; tar czf $OUT/r.tgz -C $R . 2>/dev/null; }
for n in 1 2; do timeout 160 bash scripts/multigpu.sh scaling small $n; mark "scaling small $n" $?; done
RESULTS=$R/after RUNS=out-after timeout 150 bash scripts/multigpu.sh equivalence-2gpu sophiag; mark "sophiag 2gpu" $?
cat $R/status.txt $R/mg/scaling/*.md; grep -E "^iter (10|20|30|40)/" $R/after/equivalence/sophiag-2gpu.log
