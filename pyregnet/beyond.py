"""The report's sections on the experiments beyond the paper (docs/experiments.md E5-E8): the
proximal penalty step against the paper's coupled penalty, SGD's sparsity order against Adam's,
what each regularizer's sparsity is worth once weights are pruned, and the paper's claims on
ResNet-20, whose conv kernels feed batch normalization. Same statistics as the
claims table: paired by seed, 95% paired-t intervals, Holm across one table's comparisons."""

import math
import statistics
from pathlib import Path

from . import report
from .experiments import ENDPOINT_EPOCHS
from .runs import is_complete, load_runs
from . import tables
from .tables import lambda_text

ZEROS = "sparsity_0"
SMALL = "sparsity_0.001"
NAMES = {"endpoint_acc": "endpoint test acc", "gap": "gap", ZEROS: "exact zeros", SMALL: "\\|w\\| ≤ 1e-3",
         report.TINY_KEY: "\\|w\\| < 1.18e-38", "within_1pp": "largest sparsity within 1 pp",
         "acc_at_0.9": "test acc at 90% zeros"}
E5_ZEROS_AT_LEAST = 0.10  # "makes exact zeros": at least this fraction of kernel weights on every seed
E6_LAMBDA = 1e-3          # the λ at which E6 tests SGD's order


def finished(root, name, **config):
    """The finished runs of experiment `name` whose config.json has the given values."""
    d = Path(root) / name
    if not d.is_dir():
        return []
    return [r for r in load_runs(d) if is_complete(r) and "test_acc" in r["history"][-1]
            and all(r["config"].get(k) == v for k, v in config.items())]


def comparison_table(results, labels):
    """Markdown rows of paired_tests results; labels: {method key: display name}."""
    head = ["comparison (A − B)", "n", "mean (pp)", "95% CI (pp)", "p", "Holm p", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (quantity, a, b, sign, *_), res, p_holm, v in results:
        arrow = {1: " (claimed > 0)", -1: " (claimed < 0)", 0: " (two-sided)"}[sign]
        lines.append("| " + " | ".join([f"{NAMES[quantity]}: {labels[a]} − {labels[b]}{arrow}", str(res.n),
                                        f"{100 * res.mean:+.2f}", f"[{100 * res.low:+.2f}, {100 * res.high:+.2f}]",
                                        f"{res.p:.3g}", f"{p_holm:.3g}", v]) + " |")
    return lines


def runs_table(groups, labels):
    """Per group of runs: λ, seeds, endpoint test accuracy, gap, |w| ≤ 1e-3 and exact zeros (%),
    mean ± std over seeds."""
    head = ["method", "λ", "seeds", "endpoint test acc (%)", "gap (pp)", "\\|w\\| ≤ 1e-3 (%)", "exact zeros (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, runs in groups.items():
        c, numbers = runs[0]["config"], [report.run_numbers(r["history"]) for r in runs]
        cells = [labels[key], lambda_text(c["reg"], c["l1"], c["l2"]), ",".join(str(r["config"]["seed"]) for r in runs)]
        cells += [report.mean_std_text([n[q] for n in numbers], digits=3 if q.startswith("sparsity") else 2)
                  for q in ("endpoint_acc", "gap", SMALL, ZEROS)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def e5_section(root):
    grid = finished(root, "E5-grid")
    groups = {"prox-l1": finished(root, "E5", reg="l1"), "prox-l2": finished(root, "E5", reg="l2")}
    if not grid:
        return ["E5 has no finished runs yet."]
    lines = ["Grid (seed 0, 5,000 training images held out; the score chooses, the test accuracy is shown):", "",
             *runs_table({f"{r['config']['reg']}:{r['name']}": [r] for r in grid},
                         {f"{r['config']['reg']}:{r['name']}": f"proximal {r['config']['reg'].upper()}" for r in grid})]
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return lines + ["", "E5's seed runs have not finished."]
    seeds = sorted({r["config"]["seed"] for runs in groups.values() for r in runs})
    baseline = {"none": [r for r in finished(root, "E1", reg="none") if r["config"]["seed"] in seeds],
                "l1": [r for r in finished(root, "E3", reg="l1") if r["config"]["seed"] in seeds],
                "l2": [r for r in finished(root, "E3", reg="l2") if r["config"]["seed"] in seeds]}
    everything = {**{k: v for k, v in baseline.items() if v}, **groups}
    labels = {"none": "none", "l1": "L1 (gradient)", "l2": "L2 (gradient)", "prox-l1": "L1 (proximal)",
              "prox-l2": "L2 (proximal)"}
    numbers = {k: report.numbers_by_seed(v) for k, v in everything.items()}
    results = report.paired_tests(numbers, [(ZEROS, "prox-l1", "l1", 1), ("endpoint_acc", "prox-l1", "l1", 0),
                                            ("endpoint_acc", "prox-l1", "none", 0), ("gap", "prox-l1", "none", -1),
                                            ("endpoint_acc", "prox-l2", "l2", 0), ("gap", "prox-l2", "l2", 0)])
    lines += ["", "Seed runs (all 50,000 training images; E3's gradient-step runs of the same seeds beside them):", "",
              *runs_table(everything, labels), "", *comparison_table(results, labels), ""]
    prox = groups.get("prox-l1", [])
    if prox:
        zeros = [report.run_numbers(r["history"])[ZEROS] for r in prox]
        lines.append(f"Criterion 'proximal L1 makes exact zeros' (≥ {100 * E5_ZEROS_AT_LEAST:g}% on every seed): "
                     f"{'met' if min(zeros) >= E5_ZEROS_AT_LEAST else 'not met'} "
                     f"({', '.join(f'{100 * z:.1f}%' for z in zeros)}).")
    found = {c[:3]: (res, v) for c, res, _, v in results}
    if (ZEROS, "prox-l1", "l1") in found and ("endpoint_acc", "prox-l1", "l1") in found:
        zeros_ok = found[(ZEROS, "prox-l1", "l1")][1] == "supported"
        acc_low = found[("endpoint_acc", "prox-l1", "l1")][0].low * 100
        beats = zeros_ok and acc_low > -report.NO_DIFFERENCE_PP
        lines.append(f"Criterion 'beats the paper's L1 on the accuracy–sparsity frontier' (more exact zeros, "
                     f"supported, and accuracy not lower by more than {report.NO_DIFFERENCE_PP} pp: interval's lower "
                     f"end {acc_low:+.2f} pp): **{'met' if beats else 'not met'}**.")
    return lines


def e6_section(root):
    runs = finished(root, "E6", optimizer="sgd")
    if not runs:
        return ["E6 has no finished runs yet."]
    groups = {}
    for r in runs:
        c = r["config"]
        groups.setdefault((c["reg"], c["l1"], c["l2"]), []).append(r)
    labels = {k: f"{tables.method_label(*k)} (SGD)" for k in groups}
    lines = ["SGD, lr 0.01, momentum 0.9, no augmentation, all 50,000 training images:", "",
             *runs_table(dict(sorted(groups.items())), labels), ""]
    l1, l2 = ("l1", E6_LAMBDA, 0.0), ("l2", 0.0, E6_LAMBDA)
    numbers = {k: report.numbers_by_seed(groups.get(k, [])) for k in (l1, l2, ("none", 0.0, 0.0))}
    results = report.paired_tests(numbers, [(SMALL, l1, l2, 1), (report.TINY_KEY, l1, l2, 1),
                                            ("endpoint_acc", l1, ("none", 0.0, 0.0), 0),
                                            ("endpoint_acc", l2, ("none", 0.0, 0.0), 0)])
    if not results:
        return lines + [f"The λ = {E6_LAMBDA:g} runs have fewer than 2 common seeds: nothing tested yet."]
    lines += comparison_table(results, {k: labels.get(k, str(k)) for k in numbers})
    sgd = next((v for c, _, _, v in results if c[:3] == (SMALL, l1, l2)), None)
    adam = report.claims_rows(report.load_regime(root, "E3"))
    adam_v = next((r[-1] for r in adam if r[2:5] == (SMALL, "l1", "l2")), None)
    if sgd is not None and adam_v is not None:
        reversed_ = sgd == "supported" and adam_v != "supported"
        lines += ["", f"Criterion 'SGD ranks L1 sparser than L2 where Adam does not' (\\|w\\| ≤ 1e-3, L1 − L2): SGD "
                      f"{sgd}, Adam (E3, at E2's λ) {adam_v}: **{'met' if reversed_ else 'not met'}**."]
    return lines


PRUNED_LEVELS = (0.9, 0.95)  # the pruning levels whose test accuracy the E5 table shows


def prune_numbers(runs):
    """{seed: {"within_1pp": ..., "acc_at_<level>": ...}} of the runs that were pruned."""
    out = {}
    for r in runs:
        curve = tables.prune_curve(r)
        if curve is not None:
            at = {p["level"]: p["test_acc"] for p in curve}
            out[r["config"]["seed"]] = {"within_1pp": tables.largest_within(curve),
                                        **{f"acc_at_{lv:g}": at.get(lv, math.nan) for lv in PRUNED_LEVELS}}
    return out


def _mean_std_or_dash(values):
    """mean ± std (%) of the values, or "-" when any seed's curve lacks the level (NaN)."""
    return "-" if any(math.isnan(v) for v in values) else report.mean_std_text(values, digits=1)


def pruned_table(numbers, labels):
    """Per method: seeds pruned, largest sparsity within 1 pp and test accuracy at PRUNED_LEVELS (%),
    mean ± std over seeds."""
    head = ["method", "seeds pruned", "largest sparsity within 1 pp (%)",
            *(f"test acc at {100 * lv:g}% zeros (%)" for lv in PRUNED_LEVELS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, by_seed in numbers.items():
        if by_seed:
            values = list(by_seed.values())
            lines.append("| " + " | ".join([labels[method], ",".join(map(str, sorted(by_seed))),
                                            *(_mean_std_or_dash([v[q] for v in values])
                                              for q in ("within_1pp", *(f"acc_at_{lv:g}" for lv in PRUNED_LEVELS)))])
                         + " |")
    return lines


def e7_section(root):
    """What sparsity is worth once weights are removed: E3's penalties against none, and E5's
    proximal step against the gradient step of the same seeds; paired by seed."""
    numbers = {m: prune_numbers(runs) for m, runs in report.load_regime(root, "E3").items()}
    results = report.paired_tests(numbers, [("within_1pp", m, "none", 1) for m in ("l1", "l2", "l1l2")])
    if not results:
        return ["E7: fewer than 2 seeds of E3 pruned for any penalty and the baseline."]
    prox = {f"prox-{k}": prune_numbers(finished(root, "E5", reg=k)) for k in ("l1", "l2")}
    prox = {k: v for k, v in prox.items() if v}
    labels = tables.METHOD_NAMES if not prox else {
        **tables.METHOD_NAMES, "l1": "L1 (gradient)", "l2": "L2 (gradient)", "l1l2": "L1L2 (gradient)",
        "prox-l1": "L1 (proximal, E5)", "prox-l2": "L2 (proximal, E5)"}
    lines = ["Largest sparsity whose test accuracy stays within 1 pp of the unpruned run's (E3, global magnitude "
             "pruning), penalty − none:", "", *comparison_table(results, labels), "",
             "Per method (E3 with E1's baseline" + (", and E5's proximal runs" if prox else "") +
             "; each row over the seeds it has pruned):", "", *pruned_table({**numbers, **prox}, labels)]
    if not prox:
        return lines
    results = report.paired_tests({**numbers, **prox}, [
        ("within_1pp", "prox-l1", "l1", 0), ("acc_at_0.9", "prox-l1", "l1", 0),
        ("within_1pp", "prox-l1", "none", 1), ("within_1pp", "prox-l2", "none", 0)])
    return lines + ["", "The proximal step against the gradient step and the baseline, paired by seed:", "",
                    *comparison_table(results, labels)]


def kernel_norms(run):
    """(Euclidean norm of the BN-fed conv kernels together, of the dense kernel) after the last
    epoch; None for a run recorded before metrics.jsonl held the layers' norms."""
    hist = run["history"][-1]["weight_hist"]
    if any("norm" not in h for h in hist.values()):
        return None
    return tuple(math.sqrt(sum(h["norm"] ** 2 for name, h in hist.items() if name.startswith("dense") == dense))
                 for dense in (False, True))


def norms_table(groups):
    """Per method: the norms of kernel_norms, mean ± std over seeds, and each as a multiple of the
    baseline's mean."""
    head = ["method", "‖BN-fed conv kernels‖", "× none's", "‖dense kernel‖", "× none's"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    norms = {m: [n for n in map(kernel_norms, runs) if n is not None] for m, runs in groups.items()}
    base = [statistics.fmean(n[i] for n in norms["none"]) if norms.get("none") else None for i in (0, 1)]
    for method, values in norms.items():
        if not values:
            continue
        cells = [tables.METHOD_NAMES[method]]
        for i in (0, 1):
            mine = [n[i] for n in values]
            cells += [report.mean_std_text(mine, scale=1.0, digits=2),
                      f"{statistics.fmean(mine) / base[i]:.3f}" if base[i] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


E8_NORM_RATIO = 0.5   # "the penalty acts through the kernels' scale": BN-fed norm / none's below this, every seed


def per_seed_rows(groups):
    """[(method, seed, Δ endpoint acc, Δ gap, BN-fed norm ratio, dense norm ratio)] of each penalty's
    run against the baseline run of the same seed (ratios None without recorded norms)."""
    base = {r["config"]["seed"]: r for r in groups.get("none", [])}
    rows = []
    for method in ("l1", "l2", "l1l2"):
        for r in groups.get(method, []):
            b = base.get(r["config"]["seed"])
            if b is None:
                continue
            mine, theirs = report.run_numbers(r["history"]), report.run_numbers(b["history"])
            n, nb = kernel_norms(r), kernel_norms(b)
            ratios = (n[0] / nb[0], n[1] / nb[1]) if n and nb else (None, None)
            rows.append((method, r["config"]["seed"], mine["endpoint_acc"] - theirs["endpoint_acc"],
                         mine["gap"] - theirs["gap"], *ratios))
    return rows


def claim_verdicts(rows):
    """{claim id: the claim's verdict} of claims_rows' rows, as the claims table states it."""
    out = {}
    for cid, _, _ in report.CLAIMS:
        directional = [r[-1] for r in rows if r[0] == cid and r[5] != 0]
        if directional:
            out[cid] = report.claim_verdict(directional)
    return out


def e8_criteria(root, groups, rows):
    """The per-seed differences and docs/experiments.md's three E8 criteria, judged."""
    seeds = per_seed_rows(groups)
    ratio = lambda v: "-" if v is None else f"{v:.3f}"
    lines = ["Per seed, each penalty against the baseline of the same seed:", "",
             "| method | seed | Δ endpoint test acc (pp) | Δ gap (pp) | ‖BN-fed conv kernels‖ / none's | "
             "‖dense kernel‖ / none's |", "|---|---|---|---|---|---|"]
    lines += [f"| {tables.METHOD_NAMES[m]} | {seed} | {100 * da:+.2f} | {100 * dg:+.2f} | {ratio(rb)} | {ratio(rd)} |"
              for m, seed, da, dg, rb, rd in seeds]
    lines += ["", "Criteria (docs/experiments.md, E8):", ""]
    for method in ("l1", "l2", "l1l2"):
        mine = [rb for m, _, _, _, rb, _ in seeds if m == method and rb is not None]
        if len(mine) >= 2:
            met = all(v < E8_NORM_RATIO for v in mine)
            lines.append(f"- The penalty acts through the kernels' scale, {tables.METHOD_NAMES[method]} (BN-fed "
                         f"norm / none's < {E8_NORM_RATIO} on every seed: {', '.join(f'{v:.3f}' for v in mine)}): "
                         f"**{'met' if met else 'not met'}**.")
    for _, _, quantity, a, b, sign, res, p_holm, v in (r for r in rows if r[0] == "C3"):
        lines.append(f"- It still regularizes, {tables.METHOD_NAMES[a]} (gap − none's gap < 0, paired, Holm): "
                     f"{100 * res.mean:+.2f} pp [{100 * res.low:+.2f}, {100 * res.high:+.2f}], {v}: "
                     f"**{'met' if v == 'supported' else 'not met'}**.")
    here, cnn = claim_verdicts(rows), claim_verdicts(report.claims_rows(report.load_regime(root, "E3")))
    for cid in here:
        if cid in cnn:
            lines.append(f"- {cid} carries over (the same verdict as on the CNN, E3): E3 {cnn[cid]}, E8 {here[cid]}: "
                         f"**{'yes' if cnn[cid] == here[cid] else 'no'}**.")
    return lines


def e8_section(root):
    """ResNet-20: the grid, the four methods at seeds 0-1, their kernels' norms and the claims
    table's comparisons on its runs."""
    grid = finished(root, "E8-grid", model="resnet20")
    if not grid:
        return ["E8 has no finished runs yet."]
    keys = {f"{r['config']['reg']}:{r['name']}": r for r in grid}
    lines = ["Grid (ResNet-20, seed 0, 5,000 training images held out, 10 epochs; the held-out score chooses, the "
             "test accuracy is shown):", "", *runs_table({k: [r] for k, r in keys.items()},
                                                        {k: tables.METHOD_NAMES[r["config"]["reg"]] for k, r in keys.items()})]
    groups = report.load_regime(root, "E8")
    if not groups:
        return lines + ["", "E8's seed runs have not finished."]
    lines += ["", "Seed runs (all 50,000 training images, 10 epochs, no augmentation; endpoint = mean of the last "
                  f"{ENDPOINT_EPOCHS} epochs):", "", *runs_table(groups, tables.METHOD_NAMES), "",
              "What the penalty does to the kernels' scale (batch normalization makes each conv's output "
              "independent of it; the dense kernel feeds the logits directly):", "", *norms_table(groups), ""]
    rows = report.claims_rows(groups)
    if rows:
        lines += ["The paper's claims on ResNet-20, paired by seed (95% paired-t intervals, Holm across the table; "
                  "with two seeds an interval has one degree of freedom, so most verdicts can only be "
                  "'inconclusive'):", "", *report.claims_table(rows), ""]
    return lines + e8_criteria(root, groups, rows)
