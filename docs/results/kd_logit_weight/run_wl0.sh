# The three seeds of one label budget with w_logit 0 (w_hidden 0.1): bash run_wl0.sh 10 (or 5).
set -e
labels=$1
cd /work/main
for s in 1234 1235 1236; do
  /work/main/.venv/bin/python /work/runs/exp/kdw.py 0.0 0.1 --dataset demo --profile quick --labels $labels --seed $s \
    --teacher_checkpoint /work/runs/grid_warmup/teacher/labels$labels/models/model.pt --out /work/runs/exp/wl0_l${labels}_s$s
done
