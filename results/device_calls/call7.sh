# device call 7 (nvidia-h200-x2): Sophia-G's rows of the GPT-2 medium scaling (call 6 ran out of time in them)
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=/tmp/r7; mkdir -p $R/mg; export RESULTS=$R/mg OPTIMIZERS=sophiag
start=$(date +%s)
mark() { echo "$1 exit $2 at $(( $(date +%s) - start )) s" >> $R/status.txt; tar czf $OUT/r.tgz -C $R . 2>/dev/null; }
for n in 1 2; do timeout 200 bash scripts/multigpu.sh scaling medium $n; mark "scaling medium $n" $?; done
cat $R/status.txt $R/mg/scaling/*.md
