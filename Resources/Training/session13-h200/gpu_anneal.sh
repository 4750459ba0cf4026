#!/bin/bash
# Session 13, second call: resume the 128^3 x 4 run at step 1000 with --steps 2000, so that its
# cosine schedule decays to the minimum rate in the remaining 1000 steps (annealing experiment).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/DISARegistration
cp -r .packed/L128run $OUT/A128
timeout 262 python3 -m disa.cli train --source-dir .packed --output-dir $OUT/A128 --resume --steps 2000 \
  --eval-every 500 --device cuda --time-limit 150 --render-workers 14 > $OUT/A128.log 2>&1
echo "rc=$?" >> $OUT/A128.log
ls -la $OUT/A128 $OUT/A128/snapshots
