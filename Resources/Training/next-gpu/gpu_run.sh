#!/bin/bash
# Prepared in session 18 (no GPU lent then). One device call runs both arms side by side on one GPU,
# one change apart: F (--fine-us-share 0.7) and C (control, 0), from the shipped weights, M128's
# layout (crop 128, batch 4), 7 render workers each. Resumable: a later call that carries .packed with
# the returned run_F/run_C folders unpacked there continues both (--resume).
# Before: disa train --source-dir ../shared/data --pack-sources .packed --fine-us-share 0.7  (47 MiB;
# .packed ignored by git: echo /.packed/ >> .git/info/exclude). Then one device call, carry [".packed"],
# timeout_s 560:  bash Resources/Training/next-gpu/gpu_run.sh ; fetch run_F.tgz / run_C.tgz, unpack them
# into .packed/ to resume in a later window, and choose with: disa train --select --fine-check
# --output-dir RUN --source-dir ../shared/data (CPU, here).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/DISARegistration
W=DISARegistration/Resources/Models/disa_lc2.pt
arm() {  # name share
  local START="--init $W"  # a resumed run goes on from its checkpoint (--init would be refused)
  if [ -f .packed/run_$1/checkpoint.pt ]; then START="--resume"; cp -r .packed/run_$1 /tmp/run_$1; fi
  timeout 500 python3 -m disa.cli train --source-dir .packed --output-dir /tmp/run_$1 --device cuda $START \
    --mix 0.3 0.5 0.2 --fine-us-share $2 --crop-size 128 --batch-pairs 4 --render-workers 7 \
    --lr 1e-4 --warmup-steps 50 --steps 3000 --eval-every 500 --time-limit 420 > $OUT/$1.log 2>&1
  echo "rc=$? $(date +%s)" >> $OUT/$1.log
}
t0=$(date +%s)
arm F 0.7 & arm C 0 & wait
for n in F C; do tar -C /tmp -czf $OUT/run_$n.tgz run_$n; tail -3 $OUT/$n.log; done
echo "wall=$(( $(date +%s) - t0 ))s"
