# The demo grid's 5-label TS-KD cells again, distilled from the bf16 225-step teacher of seed 1234 (test Dice 0.8556)
# instead of the grid's fp32 175-step one (0.8024); everything else the grid's (each seed its own transfer set and
# pre-training, quick profile). A grid cell equals this run_pipeline run with the same teacher to the last digit.
# bash docs/results/teacher_bf16/run_students.sh   (from the repository root; ~8 min a seed on 2 cores alone)
# Seed 1234 ran beside a CI run, 1235 and 1236 alone (2026-12-05). Compared with the grid:
# PYTHONPATH=. python docs/results/kd_logit_weight/cmp.py GRID tskd 5 /work/runs/tb/student_l5_s > student_compare.txt
# with GRID/cells holding ../demo_grid_perseed/cells/tskd_* and ../demo_grid_bf16/cells/dynunet_* (the grid's reference).
set -e
for s in 1234 1235 1236; do
  .venv/bin/python scripts/run_pipeline.py --dataset demo --profile quick --labels 5 --seed $s \
    --data_dir /work/runs/tb/all/data \
    --teacher_checkpoint /work/runs/tb/l5/bf16_steps_225_seed1234/models/model.pt --out /work/runs/tb/student_l5_s$s
done
