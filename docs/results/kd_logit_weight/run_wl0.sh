set -e
cd /work/main
for s in 1234 1235 1236; do
  /work/main/.venv/bin/python /work/runs/exp/kdw.py 0.0 0.1 --dataset demo --profile quick --labels 10 --seed $s \
    --teacher_checkpoint /work/runs/grid_warmup/teacher/labels10/models/model.pt --out /work/runs/exp/wl0_l10_s$s
done
