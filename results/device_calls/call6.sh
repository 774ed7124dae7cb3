# device call 6 (nvidia-h200-x2): scaling of GPT-2 medium again, bench.py now starting its timing once every rank
# has compiled
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
[ -f data/enwiki/train.bin ] || python3 data/enwiki/prepare.py --src .carry > /tmp/prepare.log 2>&1 || { tail /tmp/prepare.log; exit 1; }
R=/tmp/r6; mkdir -p $R/mg; export RESULTS=$R/mg
start=$(date +%s)
mark() { echo "$1 exit $2 at $(( $(date +%s) - start )) s" >> $R/status.txt; tar czf $OUT/r.tgz -C $R . 2>/dev/null; }
for n in 1 2; do timeout 175 bash scripts/multigpu.sh scaling medium $n; mark "scaling medium $n" $?; done
cat $R/status.txt $R/mg/scaling/*.md
