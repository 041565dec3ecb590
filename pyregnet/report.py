"""python -m pyregnet.sweep report --root DIR: the results of the experiments E1-E4
(docs/experiments.md) as DIR/report.md and figures under DIR/figures/, from the runs' config.json
and metrics.jsonl alone: per regime the endpoint numbers (mean ± std over seeds), E1's
overfitting criterion, E2's λ grid, the claims table with paired-by-seed differences, 95% paired-t
intervals and Holm-corrected p-values, the paper's Figures 10-11, log10|w| histograms and, for
runs pruned with `python -m pyregnet.prune`, test accuracy against sparsity."""

import json
import statistics
from collections import Counter
from pathlib import Path

from . import experiments as ex
from . import stats, tables
from .runs import is_complete, load_runs

METHODS = ("none", "l1", "l2", "l1l2")
REGIMES = {"E3": "no augmentation (E3; its baseline runs are E1's)", "E4": "with augmentation (E4)"}
NO_DIFFERENCE_PP = 0.5  # "no difference" needs the whole 95% interval inside ± this
ALPHA = 0.05
# Paper's numbers, read off its text (single runs): docs/design.md §1.
PAPER = {"none": "12 epochs: train ≈85%, val 65–70%, val loss rising", "l1": "20 epochs: train ≈73%, val close",
         "l2": "train ≈70%, val close", "l1l2": "train ≈74%"}


# ---------------------------------------------------------------- per run

def run_numbers(history):
    """The endpoint numbers of one run (fractions; the loss rise in loss units)."""
    last = history[-1]
    losses = [h["test_loss"] for h in history]
    acc = ex.endpoint(history, "test_acc")
    clean = ex.endpoint(history, "train_clean_acc")
    out = {"endpoint_acc": acc, "clean_acc": clean, "gap": clean - acc,
           "best_loss_epoch": history[losses.index(min(losses))]["epoch"], "loss_rise": losses[-1] - min(losses)}
    for key, value in last["sparsity"]["total"].items():
        out[f"sparsity_{key}"] = value
    return out


def load_regime(root, name):
    """{method: [run, ...] sorted by seed} of the finished runs of experiment `name` (E3 adds
    E1's baseline runs)."""
    dirs = [Path(root) / name] + ([Path(root) / "E1"] if name == "E3" else [])
    groups = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for run in load_runs(d):
            if is_complete(run) and "test_acc" in run["history"][-1]:
                if d.name == "E1" and run["config"]["reg"] != "none":
                    continue
                groups.setdefault(run["config"]["reg"], []).append(run)
    for runs in groups.values():
        runs.sort(key=lambda r: r["config"]["seed"])
    return {m: groups[m] for m in METHODS if m in groups}


# ---------------------------------------------------------------- tables

def mean_std_text(values, scale=100.0, digits=2):
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _threshold_text(key):
    return {"0": "= 0", TINY_KEY.removeprefix("sparsity_"): "< 1.18e-38 (subnormal or 0)"}.get(key, f"≤ {key}")


def regime_table(groups):
    """Per method: seeds, λ, endpoint accuracy, clean training accuracy, gap, epochs of the lowest
    test loss, and the sparsity at every threshold (%), mean ± std over seeds."""
    keys = [k for k in next(iter(groups.values()))[0]["history"][-1]["sparsity"]["total"]]
    head = ["method", "λ", "seeds", "endpoint test acc (%)", "clean train acc (%)", "gap (pp)",
            "epoch of lowest test loss", *(f"\\|w\\| {_threshold_text(k)} (%)" for k in keys), "paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, runs in groups.items():
        numbers = [run_numbers(r["history"]) for r in runs]
        c = runs[0]["config"]
        cells = [tables.METHOD_NAMES[method], tables.lambda_text(method, c["l1"], c["l2"]),
                 ",".join(str(r["config"]["seed"]) for r in runs)]
        cells += [mean_std_text([n[k] for n in numbers]) for k in ("endpoint_acc", "clean_acc", "gap")]
        cells.append(", ".join(str(n["best_loss_epoch"]) for n in numbers))
        cells += [mean_std_text([n[f"sparsity_{k}"] for n in numbers], digits=3) for k in keys]
        lines.append("| " + " | ".join(cells + [PAPER[method]]) + " |")
    return lines


def e1_section(root):
    runs = load_regime(root, "E1").get("none", [])
    if not runs:
        return ["E1 has no finished runs yet."]
    numbers = [run_numbers(r["history"]) for r in runs]
    gap = statistics.fmean(n["gap"] for n in numbers) * 100
    rise = statistics.fmean(n["loss_rise"] for n in numbers)
    holds = gap >= 10 and rise >= 0.05
    return [f"Seeds {', '.join(str(r['config']['seed']) for r in runs)}. Criterion (fixed before the runs): mean gap "
            f"≥ 10 pp and mean test-loss rise ≥ 0.05. Measured: gap {gap:.2f} pp "
            f"({sum(n['gap'] >= 0.10 for n in numbers)}/{len(runs)} seeds ≥ 10), test-loss rise {rise:.3f} "
            f"({sum(n['loss_rise'] >= 0.05 for n in numbers)}/{len(runs)} seeds ≥ 0.05); endpoint test accuracy "
            f"{mean_std_text([n['endpoint_acc'] for n in numbers])}%, clean train accuracy "
            f"{mean_std_text([n['clean_acc'] for n in numbers])}%. **The baseline {'overfits' if holds else 'does not overfit'} "
            f"by the criterion.**"]


def e2_section(root):
    d = Path(root) / "E2"
    runs = [r for r in load_runs(d) if is_complete(r)] if d.is_dir() else []
    if not runs:
        return ["E2 has no finished runs yet."]
    try:
        chosen = json.loads((d / ex.CHOSEN_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        chosen = {}
    held = sorted({r["config"].get("holdout", 0) for r in runs})
    lines = [f"Seed 0, {', '.join(f'{h:,}' for h in held)} training images held out; the score is the held-out "
             f"accuracy averaged over the last "
             f"{ex.ENDPOINT_EPOCHS} epochs (the test accuracy is shown, not used).", "",
             "| penalty | λ | held-out score (%) | test acc (%) | clean train acc (%) | chosen |",
             "|---|---|---|---|---|---|"]
    rows = []
    for r in runs:
        c, h = r["config"], r["history"]
        pick = chosen.get(c["reg"], {})
        rows.append((METHODS.index(c["reg"]), c["l1"], c["l2"], "| " + " | ".join([
            tables.METHOD_NAMES[c["reg"]], tables.lambda_text(c["reg"], c["l1"], c["l2"]),
            f"{100 * ex.endpoint(h):.2f}", f"{100 * ex.endpoint(h, 'test_acc'):.2f}",
            f"{100 * ex.endpoint(h, 'train_clean_acc'):.2f}",
            "**chosen**" if (pick.get("l1"), pick.get("l2")) == (c["l1"], c["l2"]) else ""]) + " |"))
    lines += [row[-1] for row in sorted(rows)]
    if not chosen:
        lines += ["", "E2 has not finished: no λ chosen yet."]
    return lines


# ---------------------------------------------------------------- claims

TINY_KEY = "sparsity_1.17549e-38"
# (claim, the paper's words, [(quantity, method A, method B, claimed sign of A − B; 0: two-sided)])
CLAIMS = (
    ("C2", "regularization improves accuracy (cures the baseline's overfitting)",
     [("endpoint_acc", "l1", "none", 1), ("endpoint_acc", "l2", "none", 1), ("endpoint_acc", "l1l2", "none", 1)]),
    ("C3", "regularization narrows the train/validation gap",
     [("gap", "l1", "none", -1), ("gap", "l2", "none", -1), ("gap", "l1l2", "none", -1)]),
    ("C4", "L1L2 narrows the gap the most", [("gap", "l1l2", "l1", -1), ("gap", "l1l2", "l2", -1)]),
    ("C5", "L2 (or L1L2) gives the best accuracy",
     [("endpoint_acc", "l2", "l1", 1), ("endpoint_acc", "l1l2", "l1", 1), ("endpoint_acc", "l2", "l1l2", 0)]),
    ("C6", "L1 gives the sparsest weights (\"shrunk exactly to zero\")",
     [(TINY_KEY, "l1", "l2", 1), (TINY_KEY, "l1", "l1l2", 1), ("sparsity_0.001", "l1", "l2", 1),
      ("sparsity_0.001", "l1", "l1l2", 1)]),
)
QUANTITY_NAMES = {"endpoint_acc": "endpoint test acc", "gap": "gap", TINY_KEY: "\\|w\\| < 1.18e-38",
                  "sparsity_0.001": "\\|w\\| ≤ 1e-3"}


def verdict(result, p_holm, sign):
    """One comparison's verdict (docs/experiments.md): the interval in percentage points."""
    if p_holm < ALPHA:
        observed = 1 if result.mean > 0 else -1
        if sign == 0:
            return "A higher" if observed > 0 else "B higher"
        return "supported" if observed == sign else "contradicted"
    if -NO_DIFFERENCE_PP <= result.low * 100 and result.high * 100 <= NO_DIFFERENCE_PP:
        return "no difference"
    return "inconclusive"


def claim_verdict(verdicts):
    if all(v == "supported" for v in verdicts):
        return "supported"
    if any(v == "contradicted" for v in verdicts):
        return "contradicted" + (" in part" if any(v == "supported" for v in verdicts) else "")
    if all(v == "no difference" for v in verdicts):
        return "no difference"
    return "not shown" + (" (in part supported)" if "supported" in verdicts else "")


def numbers_by_seed(runs):
    """{seed: run_numbers} of runs of one method."""
    return {r["config"]["seed"]: run_numbers(r["history"]) for r in runs}


def paired_tests(numbers, comparisons):
    """[(comparison, stats.Paired, Holm p, verdict)] for the comparisons (quantity, A, B, claimed
    sign, ...) whose two methods of numbers = {method: numbers_by_seed} share at least 2 seeds;
    Holm across all of them."""
    tests = []
    for comparison in comparisons:
        quantity, a, b = comparison[:3]
        seeds = sorted(set(numbers.get(a, {})) & set(numbers.get(b, {})))
        if len(seeds) >= 2:
            tests.append((comparison, stats.paired([numbers[a][s][quantity] for s in seeds],
                                                   [numbers[b][s][quantity] for s in seeds])))
    adjusted = stats.holm([result.p for _, result in tests])
    return [(c, result, p, verdict(result, p, c[3])) for (c, result), p in zip(tests, adjusted)]


def claims_rows(groups):
    """[(claim id, text, quantity, A, B, sign, stats.Paired, Holm p, verdict)] for the comparisons
    whose two methods both have runs for at least 2 common seeds; Holm across all of them."""
    numbers = {m: numbers_by_seed(runs) for m, runs in groups.items()}
    comparisons = [(*comparison, cid, text) for cid, text, listed in CLAIMS for comparison in listed]
    return [(c[4], c[5], *c[:4], result, p, v) for c, result, p, v in paired_tests(numbers, comparisons)]


def claims_table(rows):
    head = ["claim", "the paper", "comparison (A − B)", "mean (pp)", "95% CI (pp)", "p", "Holm p", "verdict",
            "claim verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cid, text, comparisons in CLAIMS:
        mine = [r for r in rows if r[0] == cid]
        directional = [r[-1] for r in mine if r[5] != 0]
        overall = claim_verdict(directional) if directional else ""
        for i, (_, _, quantity, a, b, sign, res, p_holm, v) in enumerate(mine):
            arrow = {1: " (claimed > 0)", -1: " (claimed < 0)", 0: " (two-sided)"}[sign]
            lines.append("| " + " | ".join([
                cid if i == 0 else "", text if i == 0 else "",
                f"{QUANTITY_NAMES[quantity]}: {tables.METHOD_NAMES[a]} − {tables.METHOD_NAMES[b]}{arrow}, "
                f"n = {res.n}",
                f"{100 * res.mean:+.2f}", f"[{100 * res.low:+.2f}, {100 * res.high:+.2f}]", f"{res.p:.3g}",
                f"{p_holm:.3g}", v, overall if i == 0 else ""]) + " |")
    lines.append("| C7 | L1L2 costs \"slightly more\" compute | judged from `bench/penalty_cost.py` on a quiet "
                 "machine, methods interleaved (docs/results.md), not from these runs' epoch times | | | | | | |")
    return lines


# ---------------------------------------------------------------- what sparsity is worth (pyregnet.prune)

PRUNE_SHOWN = (0.9, 0.99)  # the pruning levels whose accuracy the table shows beside the unpruned one


def pruned_curves(groups):
    """{method: [prune.json's global curve per seed]} for the runs pruned with `python -m
    pyregnet.prune`; methods whose runs were pruned at different levels are left out (their means
    would mix levels)."""
    out = {}
    for method, runs in groups.items():
        curves = [c for c in map(tables.prune_curve, runs) if c is not None]
        if curves and len({tuple(p["level"] for p in c) for c in curves}) == 1:
            out[method] = curves
    return out


def pruning_table(groups, curves):
    """Per method: the pruned seeds, the unpruned test accuracy, the accuracy at PRUNE_SHOWN, and
    the largest sparsity whose accuracy stays within prune.WITHIN_PP of the unpruned one."""
    from .tables import WITHIN_PP, largest_within
    head = ["method", "λ", "seeds pruned", "unpruned test acc (%)",
            *(f"test acc at {100 * lv:g}% zeros (%)" for lv in PRUNE_SHOWN),
            f"largest sparsity within {WITHIN_PP:g} pp (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, per_seed in curves.items():
        c = groups[method][0]["config"]
        levels = [p["level"] for p in per_seed[0]]
        cells = [tables.METHOD_NAMES[method], tables.lambda_text(method, c["l1"], c["l2"]), str(len(per_seed)),
                 mean_std_text([curve[0]["test_acc"] for curve in per_seed])]
        for level in PRUNE_SHOWN:
            cells.append(mean_std_text([curve[levels.index(level)]["test_acc"] for curve in per_seed])
                         if level in levels else "not pruned at this level")
        cells.append(mean_std_text([largest_within(curve) for curve in per_seed], digits=1))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pruning_figure(groups, curves, path, regime):
    from .plots import plot_prune_methods
    series = []
    def mean_over_seeds(per_seed, key):
        return [statistics.fmean(points) for points in zip(*([p[key] for p in curve] for curve in per_seed))]

    for method, per_seed in curves.items():
        c = groups[method][0]["config"]
        series.append({"label": tables.method_label(method, c["l1"], c["l2"]), "color": tables.METHOD_COLORS[method],
                       "sparsity": mean_over_seeds(per_seed, "sparsity"),
                       "test_acc": mean_over_seeds(per_seed, "test_acc")})
    plot_prune_methods(series, path, f"{regime}: test accuracy after global magnitude pruning (mean over seeds)")
    return path


# ---------------------------------------------------------------- figures and the report

def _mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def figures(groups, directory, regime):
    """The paper's Figures 10-11 (clean train vs test, mean ± std over seeds) and the log10|w|
    histograms at the last epoch, per method. Returns the paths written."""
    from .plots import plot_methods, plot_weight_hists
    directory.mkdir(parents=True, exist_ok=True)
    series, hists = [], []
    for method, runs in groups.items():
        c = runs[0]["config"]
        label = tables.method_label(method, c["l1"], c["l2"])
        n = min(len(r["history"]) for r in runs)
        entry = {"label": label, "color": tables.METHOD_COLORS[method],
                 "epochs": [runs[0]["history"][i]["epoch"] for i in range(n)]}
        for mine, key in (("train_acc", "train_clean_acc"), ("val_acc", "test_acc"), ("train_loss", "train_clean_loss"),
                          ("val_loss", "test_loss")):
            pairs = [_mean_std([r["history"][i][key] for r in runs]) for i in range(n)]
            entry[mine], entry[mine + "_std"] = [m for m, _ in pairs], [s for _, s in pairs]
        series.append(entry)
        fractions, zeros = [], []
        for r in runs:
            layers = r["history"][-1]["weight_hist"].values()
            total = sum(h["zeros"] + sum(h["counts"]) for h in layers)
            fractions.append([sum(col) / total for col in zip(*(h["counts"] for h in layers))])
            zeros.append(sum(h["zeros"] for h in layers) / total)
        hists.append({"label": label, "color": tables.METHOD_COLORS[method], "zeros": statistics.fmean(zeros),
                      "fractions": [statistics.fmean(col) for col in zip(*fractions)]})
    paths = [directory / f"{regime}_fig10_accuracy.png", directory / f"{regime}_fig11_loss.png",
             directory / f"{regime}_weight_hist.png"]
    plot_methods(series, paths[0], "acc", "accuracy", f"Figure 10, {regime}: clean training vs test accuracy",
                 names=("clean train", "test"))
    plot_methods(series, paths[1], "loss", "data loss (no penalty)",
                 f"Figure 11, {regime}: clean training vs test loss",
                 names=("clean train", "test"))
    edges = runs[0]["config"]["weight_hist_log10_edges"]
    plot_weight_hists(hists, edges, paths[2], f"{regime}: log10|w| of the kernel weights after the last epoch "
                                              "(mean over seeds)")
    return paths


def provenance(root):
    """One line: the processors, commits, dates and data of every run under root."""
    configs = [r["config"] for d in sorted(Path(root).glob("E[1-4]")) for r in load_runs(d)]

    def values(key, fmt=str):
        return ", ".join(sorted({fmt(c.get(key)) for c in configs if c.get(key) is not None})) or "not recorded"
    dates = sorted(c["started_utc"] for c in configs if c.get("started_utc"))
    data = values("data_file", lambda f: f"{f['name']} (sha256 {f['sha256']})")
    # the instruction set shapes a run's bits (docs/design.md, Reproducibility); builds before
    # c9f3fec did not record it
    isas = Counter((c.get("build") or {}).get("cpu_isa") or "not recorded" for c in configs)
    isa = ", ".join(f"{name} ({n} run{'s' * (n != 1)})" for name, n in sorted(isas.items()))
    return (f"{len(configs)} runs. Processor: {values('processor')}; CPU instruction set: {isa}; "
            f"device: {values('device')}; commits: "
            f"{values('commit')}; started {dates[0] if dates else '?'} – {dates[-1] if dates else '?'} UTC; "
            f"data: {data}.")


def write_report(root, log=print):
    """Writes root/report.md and root/figures/*.png; returns the report's path."""
    root = Path(root)
    lines = ["# Experiments E1–E8: results", "",
             "Generated by `python -m pyregnet.sweep report --root " + str(root) + "` from the runs' config.json and "
             "metrics.jsonl; criteria and definitions: docs/experiments.md (fixed before the runs).", "",
             provenance(root), "", "## E1: does the baseline overfit without augmentation?", "", *e1_section(root), "",
             "## E2: λ chosen on held-out training images", "", *e2_section(root)]
    for regime, title in REGIMES.items():
        groups = load_regime(root, regime)
        lines += ["", f"## {regime}: {title}", ""]
        if not groups:
            lines.append(f"{regime} has no finished runs yet.")
            continue
        lines += ["Mean ± sample std over seeds; endpoint = mean over the last "
                  f"{ex.ENDPOINT_EPOCHS} epochs; gap = clean train − test accuracy.", "", *regime_table(groups), ""]
        rows = claims_rows(groups)
        if rows:
            lines += [f"Claims, paired by seed: 95% paired-t intervals, Holm across the {len(rows)} comparisons of "
                      f"this table; 'no difference' needs the interval inside ±{NO_DIFFERENCE_PP} pp.", "",
                      *claims_table(rows), ""]
        paths = figures(groups, root / "figures", regime)
        curves = pruned_curves(groups)
        if curves:
            lines += ["What the weights are worth once the smallest are removed (`python -m pyregnet.prune`: global "
                      "magnitude pruning of the final weights, test set; mean ± std over the pruned seeds):", "",
                      *pruning_table(groups, curves), ""]
            paths.append(pruning_figure(groups, curves, root / "figures" / f"{regime}_pruning.png", regime))
        lines += ["Figures: " + ", ".join(f"[{p.name}](figures/{p.name})" for p in paths) + "."]
    from . import beyond
    for title, section in (("E5: a penalty that really makes zeros (the proximal step)", beyond.e5_section),
                           ("E6: does SGD rank L1 and L2 sparsity the other way round from Adam?", beyond.e6_section),
                           ("E7: what sparsity is worth once weights are removed", beyond.e7_section),
                           ("E8: the paper's question on ResNet-20", beyond.e8_section)):
        lines += ["", f"## {title}", "", *section(root)]
    out = root / "report.md"
    out.write_text("\n".join(lines) + "\n")
    log(f"wrote {out} and the figures in {root / 'figures'}")
    return out
