#!/bin/bash
# Session 15 GPU window (as it ran): L128 of session 13 with one change, more real ultrasound (--mix 0.5 0.35 0.15).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/DISARegistration
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch;print(torch.__version__, torch.cuda.get_device_name())"; nproc; } > $OUT/gpu.txt 2>&1
W=DISARegistration/Resources/Models/disa_lc2.pt
t0=$(date +%s)
timeout 520 python3 -m disa.cli train --source-dir .packed --output-dir /tmp/M128 --init $W --device cuda \
  --mix 0.5 0.35 0.15 --crop-size 128 --batch-pairs 4 \
  --lr 1e-4 --warmup-steps 50 --steps 3000 --eval-every 500 --time-limit 430 --render-workers 14 > $OUT/M128.log 2>&1
echo "rc=$? wall=$(( $(date +%s) - t0 ))s" >> $OUT/M128.log
tar czf $OUT/M128.tgz -C /tmp M128
ls -la $OUT; tail -4 $OUT/M128.log
