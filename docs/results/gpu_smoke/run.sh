#!/bin/bash
# GPU smoke run of the quick main job (teacher, transfer set, TS-KD pre-training, student, evaluation).
export PYTHONPATH=$PWD/.gpu/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, monai, timm, peft; print('torch', torch.__version__, 'monai', monai.__version__, 'timm', timm.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
start=$(date +%s)
python3 scripts/run_pipeline.py --dataset demo --data_dir .gpu/demo --profile quick --out /tmp/main > $OUT/main.log 2>&1
rc=$?
echo "main job rc=$rc elapsed_s=$(( $(date +%s) - start ))"
grep -E "^=== |training \(|Engine run finished|best at step|Test|test Dice|precision|autocast|cuda" $OUT/main.log | grep -v "INFO - Epoch" | tail -40
cp /tmp/main/summary.md /tmp/main/metrics.json $OUT/ 2>/dev/null
nvidia-smi --query-gpu=name,memory.used --format=csv
