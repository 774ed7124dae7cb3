# Issue 23, device call 1 (nvidia-h200): the in-band Hessian control at 30M / 32k, then the 131k bridge's tuning.
# Each study resumes from what results/ already holds; --budget keeps the call inside its 10 minutes.
export PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $(( ${1} - ($(date +%s) - start) )); }
[ -f data/enwiki/train.bin ] || python3 data/enwiki/prepare.py --src .carry > /tmp/prepare.log 2>&1 || { tail /tmp/prepare.log; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -W ignore scripts/protocol.py --study inband --budget $(left 300) > $OUT/inband.log 2>&1
python3 -W ignore scripts/protocol.py --study bridge131k --budget $(left 560) > $OUT/bridge131k.log 2>&1
tar czf $OUT/results.tgz results/inband results/bridge131k
for f in $OUT/*.log; do tail -n 3 $f; done
echo "took $(( $(date +%s) - start )) s"
