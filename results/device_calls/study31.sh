# Issue 23, device calls 31 on (nvidia-h200): the 124M study, whole runs only. Argument: the session's device
# seconds left as the call starts (status's budget_left_s; less ~40 s when the machine is cold).
# Calls 14-30 (study14.sh) let a run go on past the call's end, to be resumed by the next call on the warm
# machine; of the 10 runs so cut (calls 17-29), 7 were lost: the machine had been released (30 s idle) or
# could not be started before the next call. So a call now starts only runs that the protocol's estimate says
# finish within it, and ends when the next one would not fit (from call 36: when no run left in the plan fits).
export PYTHONUNBUFFERED=1
session=${1:?usage: bash study31.sh SESSION_SECONDS_LEFT}
start=$(date +%s)
left() { echo $(( ${1} - ($(date +%s) - start) )); }
call=$(( session - 30 < 570 ? session - 30 : 570 ))  # the tar below must come back before the call's limit
[ -f data/enwiki/train.bin ] || python3 data/enwiki/prepare.py --src .carry > /tmp/prepare.log 2>&1 || { tail /tmp/prepare.log; exit 1; }
echo "data ready after $(( $(date +%s) - start )) s" > $OUT/gpt2small.log
python3 -W ignore scripts/protocol.py --study gpt2small --budget $(left $call) >> $OUT/gpt2small.log 2>&1
tar czf $OUT/results.tgz results/gpt2small
tail -n 3 $OUT/gpt2small.log
echo "took $(( $(date +%s) - start )) s"
