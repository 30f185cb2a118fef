"""Compare ad hoc runs (OUT/metrics.json student) with grid cells of the same seed, per image."""
import json, sys, statistics as st
from scipy.stats import wilcoxon
grid, tag, labels, prefix = sys.argv[1:5]   # grid folder, cell method tag, labels, exp prefix (…_s<seed>)
seeds = [1234, 1235, 1236]
new_all, old_all, ref_all = [], [], []
for s in seeds:
    try:
        m = json.load(open(f"{prefix}{s}/metrics.json"))["student"]
    except FileNotFoundError:
        continue
    cell = json.load(open(f"{grid}/cells/{tag}_labels{labels}_transfer160_seed{s}.json"))
    ref = json.load(open(f"{grid}/cells/dynunet_labels{labels}_seed{s}.json"))
    new = [sum(d) / len(d) for d in m["per_image"]["dice"]]
    old = [sum(d) / len(d) for d in cell["per_image_class_dice"]]
    r = [sum(d) / len(d) for d in ref["per_image_class_dice"]]
    print(f"seed {s}: new {m['mean_dice']:.4f}  grid {cell['row']['mean_dice']:.4f}  ref {ref['row']['mean_dice']:.4f}  diff {m['mean_dice']-cell['row']['mean_dice']:+.4f}")
    new_all.append(new); old_all.append(old); ref_all.append(r)
n = len(new_all)
if n:
    avg = lambda xs: [st.mean(v) for v in zip(*xs)]
    a, b, r = avg(new_all), avg(old_all), avg(ref_all)
    means = lambda xs: [st.mean(x) for x in xs]
    print(f"{n} seeds: new {st.mean(means(new_all)):.4f} ± {st.stdev(means(new_all)) if n>1 else 0:.4f}, grid {st.mean(means(old_all)):.4f}, ref {st.mean(means(ref_all)):.4f}")
    print("new - grid per image %+.4f p %.3g" % (st.mean(a) - st.mean(b), wilcoxon(a, b).pvalue))
    print("new - ref per image %+.4f p %.3g" % (st.mean(a) - st.mean(r), wilcoxon(a, r).pvalue))
