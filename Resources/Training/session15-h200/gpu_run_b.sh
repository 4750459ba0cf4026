#!/bin/bash
# Session 15, second GPU call (as it ran): M2 = M128 with the real-ultrasound share pushed further (--mix 0.3 0.5 0.2),
# in a shorter schedule (1400 steps) to fit what was left of the window.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/DISARegistration
W=DISARegistration/Resources/Models/disa_lc2.pt
t0=$(date +%s)
timeout 285 python3 -m disa.cli train --source-dir .packed --output-dir $OUT/M2 --init $W --device cuda \
  --mix 0.3 0.5 0.2 --crop-size 128 --batch-pairs 4 \
  --lr 1e-4 --warmup-steps 50 --steps 1400 --eval-every 700 --time-limit 200 --render-workers 14 > $OUT/M2.log 2>&1
echo "rc=$? wall=$(( $(date +%s) - t0 ))s" >> $OUT/M2.log
tail -4 $OUT/M2.log
