# Issue 23, device calls 7-9 (nvidia-h200): the 124M tuning goes on (the bridge is complete).
export PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $(( ${1} - ($(date +%s) - start) )); }
[ -f data/enwiki/train.bin ] || python3 data/enwiki/prepare.py --src .carry > /tmp/prepare.log 2>&1 || { tail /tmp/prepare.log; exit 1; }
python3 -W ignore scripts/protocol.py --study gpt2small --budget $(left 570) > $OUT/gpt2small.log 2>&1
tar czf $OUT/results.tgz results/gpt2small
tail -n 3 $OUT/gpt2small.log
echo "took $(( $(date +%s) - start )) s"
