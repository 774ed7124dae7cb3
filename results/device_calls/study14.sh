# Issue 23, device calls 14 on (nvidia-h200): the 124M tuning goes on. Argument: the session's device
# seconds left as the call starts (status's budget_left_s; less ~90 s when the machine is cold). A run that
# does not fit in this call starts if it fits in the session, and the next call on the warm machine resumes
# it from its checkpoint in out-gpt2small/.
export PYTHONUNBUFFERED=1
session=${1:?usage: bash study14.sh SESSION_SECONDS_LEFT}
start=$(date +%s)
left() { echo $(( ${1} - ($(date +%s) - start) )); }
call=$(( session - 30 < 570 ? session - 30 : 570 ))  # the tar below must come back before the call's limit
[ -f data/enwiki/train.bin ] || python3 data/enwiki/prepare.py --src .carry > /tmp/prepare.log 2>&1 || { tail /tmp/prepare.log; exit 1; }
python3 -W ignore scripts/protocol.py --study gpt2small --budget $(left $call) \
    --finish-within $(left $(( session - 60 ))) > $OUT/gpt2small.log 2>&1
tar czf $OUT/results.tgz results/gpt2small
tail -n 3 $OUT/gpt2small.log
echo "took $(( $(date +%s) - start )) s"
