"""Write tables.md and results.json from the runs of probe.py (/work/runs/teacher_warmup/results.jsonl) and the three
seed-1234 runs made before it with the same code and budget (the main job's teacher, the vessel grid's teacher and
the two warm-up probes of docs/results/vessels_candidates). Run from the repository root:
python docs/results/teacher_warmup/tables.py"""
import json
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))


def _earlier():
    probe = json.load(open(os.path.join(ROOT, "docs/results/vessels_candidates/teacher_probe.json")))
    main = json.load(open(os.path.join(ROOT, "docs/results/main_job/teacher_training.json")))
    main_test = json.load(open(os.path.join(ROOT, "docs/results/main_job/metrics.json")))["teacher"]["mean_dice"]
    vessel = json.load(open("/work/runs/vessels_skip/teacher/labels5/models/training.json"))
    vessel_test = json.load(open("/work/runs/vessels_skip/cells/teacher_labels5.json"))["row"]["mean_dice"]
    rows = [("demoall", "default", main_test, main, "docs/results/main_job (commit b630f83)"),
            ("demoall", "half", probe["demo_warmup88"]["test_mean_dice"], probe["demo_warmup88"],
             "docs/results/vessels_candidates/teacher_probe.json demo_warmup88"),
            ("vessels", "default", vessel_test, vessel, "docs/results/vessels_candidates skip grid's teacher cell"),
            ("vessels", "half", probe["warmup88"]["test_mean_dice"], probe["warmup88"],
             "docs/results/vessels_candidates/teacher_probe.json warmup88")]
    return [{"set": s, "variant": v, "seed": 1234, "test_mean_dice": d, "steps": t["steps"],
             "best_step": t["best_step"], "history": t["history"], "source": src} for s, v, d, t, src in rows]


rows = _earlier() + [json.loads(line) for line in open("/work/runs/teacher_warmup/results.jsonl")]
json.dump(rows, open(os.path.join(HERE, "results.json"), "w"), indent=1)
names = {"demo5": "demo, 5 labels (+5 val)", "demoall": "demo, all 50 labels", "vessels": "vessels, 5 labels (+2 val)"}
lines = ["# The teacher's warm-up over seeds (written by tables.py from results.json)", "",
         "LiteMedSAM + LoRA teacher, quick profile (175 steps, lr 0.005, poly decay, validation every 25 steps, stop "
         "after 3 without a better Dice), fp32, 2 CPU cores. `default`: linear warm-up over a tenth of the run "
         "(17 steps); `half`: over half of it (88 steps). Test Dice (mean over classes without background).", "",
         "| set | seed | default | half | half − default | default: validation Dice every 25 steps | "
         "half: validation Dice every 25 steps |", "|---|---|---|---|---|---|---|"]
diffs_all = []
summary = ["", "| set | default, mean ± sd | half, mean ± sd | mean difference | seeds half better |", "|---|---|---|---|---|"]
for name in ("demo5", "demoall", "vessels"):
    by_seed = {}
    for r in rows:
        if r["set"] == name:
            by_seed.setdefault(r["seed"], {})[r["variant"]] = r
    diffs, d_all, h_all = [], [], []
    for seed in sorted(by_seed):
        pair = by_seed[seed]
        if set(pair) != {"default", "half"}:
            continue
        d, h = pair["default"]["test_mean_dice"], pair["half"]["test_mean_dice"]
        diffs.append(h - d)
        d_all.append(d)
        h_all.append(h)
        curve = [" / ".join(f"{v:.2f}" for _, v in pair[k]["history"]) for k in ("default", "half")]
        lines.append(f"| {names[name]} | {seed} | {d:.4f} | {h:.4f} | {h - d:+.4f} | {curve[0]} | {curve[1]} |")
    if diffs:
        sd = (lambda x: statistics.stdev(x) if len(x) > 1 else 0.0)
        summary.append(f"| {names[name]} | {statistics.mean(d_all):.4f} ± {sd(d_all):.4f} | "
                       f"{statistics.mean(h_all):.4f} ± {sd(h_all):.4f} | {statistics.mean(diffs):+.4f} | "
                       f"{sum(x > 0 for x in diffs)} of {len(diffs)} |")
        diffs_all += diffs
better = sum(x > 0 for x in diffs_all)
n = len(diffs_all)
# two-sided exact sign test over every (set, seed) pair
tail = sum(__import__("math").comb(n, k) for k in range(max(better, n - better), n + 1)) / 2 ** n
summary += ["", f"Over all {n} pairs: half better in {better}, mean difference {statistics.mean(diffs_all):+.4f}; "
            f"two-sided sign test p = {min(1.0, 2 * tail):.3f}."]
open(os.path.join(HERE, "tables.md"), "w").write("\n".join(lines + summary) + "\n")
print("\n".join(lines + summary))
