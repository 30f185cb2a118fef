set -e
cd /work/main
for s in 1234 1235 1236; do
  /work/main/.venv/bin/python /work/runs/exp/kdw.py 0.0 0.1 --dataset demo --profile quick --labels 5 --seed $s \
    --teacher_checkpoint /work/runs/grid_warmup/teacher/labels5/models/model.pt --out /work/runs/exp/wl0_l5_s$s
done
