# Issue 23, device call 4 (nvidia-h200): the 124M study's tuning first (its runs are the long ones), then what is
# left of the 131k bridge (Sophia-G seed 2103, sign momentum's finals) in the time that remains.
export PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $(( ${1} - ($(date +%s) - start) )); }
[ -f data/enwiki/train.bin ] || python3 data/enwiki/prepare.py --src .carry > /tmp/prepare.log 2>&1 || { tail /tmp/prepare.log; exit 1; }
python3 -W ignore scripts/protocol.py --study gpt2small --budget $(left 560) > $OUT/gpt2small.log 2>&1
python3 -W ignore scripts/protocol.py --study bridge131k --budget $(left 560) > $OUT/bridge131k.log 2>&1
tar czf $OUT/results.tgz results/gpt2small results/bridge131k
for f in $OUT/*.log; do tail -n 3 $f; done
echo "took $(( $(date +%s) - start )) s"
