#!/bin/bash
# Session 13 GPU window: two runs from the shipped weights, same time, 128^3 x 4 vs 64^3 x 32.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/DISARegistration
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch;print(torch.__version__, torch.cuda.get_device_name())"; nproc; } > $OUT/gpu.txt 2>&1
W=DISARegistration/Resources/Models/disa_lc2.pt
run() {  # name, extra args
  name=$1; shift
  date +%s > /tmp/$name.t0
  timeout 255 python3 -m disa.cli train --source-dir .packed --output-dir /tmp/$name --init $W --device cuda \
    --lr 1e-4 --warmup-steps 50 --steps 3000 --eval-every 250 --time-limit 185 --render-workers 14 "$@" > $OUT/$name.log 2>&1
  echo "rc=$? wall=$(( $(date +%s) - $(cat /tmp/$name.t0) ))s" >> $OUT/$name.log
  tar czf $OUT/$name.tgz -C /tmp $name
}
run L128 --crop-size 128 --batch-pairs 4
run L64
ls -la $OUT; tail -3 $OUT/L128.log $OUT/L64.log
