"""The tables and figures of a sweep's runs: per penalty and λ, mean ± std over seeds of the final
accuracies, the train−val gap, sparsity and speed (summarize), the λ a grid chooses (choose), as
markdown and CSV, the paper's Figures 10-11, and for pruned runs (python -m pyregnet.prune) the
largest sparsity within 1 pp of the unpruned accuracy and accuracy against sparsity."""

import csv
import io
import json
import math
import statistics
from collections import namedtuple
from pathlib import Path

from .options import num
from .regularizers import KINDS

METHOD_NAMES = {"none": "none", "l1": "L1", "l2": "L2", "l1l2": "L1L2"}
METHOD_COLORS = {"none": "tab:gray", "l1": "tab:blue", "l2": "tab:orange", "l1l2": "tab:green"}

Stat = namedtuple("Stat", "mean std")   # std: sample standard deviation over seeds; nan for one seed


def lambda_text(reg, l1, l2):
    return {"none": "—", "l1": f"λ1={l1:g}", "l2": f"λ2={l2:g}", "l1l2": f"λ1={l1:g}, λ2={l2:g}"}[reg]


def method_label(reg, l1, l2):
    return METHOD_NAMES[reg] + ("" if reg == "none" else f" ({lambda_text(reg, l1, l2)})")



def _stat(values):
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    return Stat(mean, statistics.stdev(values) if len(values) > 1 else math.nan)


PRUNE_FILE = "prune.json"  # python -m pyregnet.prune's result in a run directory
WITHIN_PP = 1.0  # "worth": the largest sparsity whose test accuracy is within this many pp of unpruned


def largest_within(curve, pp=WITHIN_PP):
    """The largest sparsity on a pruning curve whose test accuracy is at most `pp` points below the
    unpruned (first) point's."""
    base = curve[0]["test_acc"]
    return max(p["sparsity"] for p in curve if p["test_acc"] >= base - pp / 100)


def prune_curve(run):
    """The run's global magnitude-pruning curve from its prune.json, or None when not pruned."""
    path = Path(run["dir"]) / PRUNE_FILE
    return json.loads(path.read_text())["global"] if path.is_file() else None


def run_metrics(run):
    """The numbers of one run: its final epoch, its best validation accuracy, and the median over
    its epochs of the training time per epoch and of images/s."""
    history = run["history"]
    last = history[-1]
    total = last["sparsity"]["total"]
    return {
        "final_train_acc": last["train_acc"], "final_val_acc": last["val_acc"],
        "gap": last["train_acc"] - last["val_acc"], "best_val_acc": max(h["val_acc"] for h in history),
        "final_train_loss": last["train_loss"], "final_val_loss": last["val_loss"],
        "sparsity_1e-3": total["0.001"], "sparsity_1e-4": total["0.0001"], "sparsity_0": total["0"],
        "epoch_time_s": statistics.median(h["epoch_time_s"] for h in history),
        "images_per_s": statistics.median(h["images_per_s"] for h in history),
        **({"within_1pp": largest_within(curve)} if (curve := prune_curve(run)) else {}),
    }


METRICS = ("final_train_acc", "final_val_acc", "gap", "best_val_acc", "final_train_loss", "final_val_loss",
           "sparsity_1e-3", "sparsity_1e-4", "sparsity_0", "epoch_time_s", "images_per_s")


OPTIONAL_METRICS = ("within_1pp",)  # only where every run of a row has it (pruned runs)


def group_key(run):
    c = run["config"]
    return c["reg"], float(c["l1"]), float(c["l2"])


def summarize(runs):
    """One row per (penalty, λ1, λ2), ordered none, l1, l2, l1l2 then by λ: the runs' seeds and,
    per metric, Stat(mean, std) over the runs (the seeds)."""
    groups = {}
    for run in runs:
        if run["history"]:
            groups.setdefault(group_key(run), []).append(run)
    rows = []
    for (reg, l1, l2), members in sorted(groups.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1:])):
        members.sort(key=lambda r: r["config"]["seed"])
        per_run = [run_metrics(r) for r in members]
        row = {"method": reg, "l1": l1, "l2": l2, "runs": len(members),
               "seeds": [r["config"]["seed"] for r in members], "names": [r["name"] for r in members],
               "epochs": min(len(r["history"]) for r in members),
               "device": ",".join(sorted({str(r["config"].get("device")) for r in members}))}
        for key in METRICS + OPTIONAL_METRICS:
            if all(key in m for m in per_run):
                row[key] = _stat(m[key] for m in per_run)
        rows.append(row)
    return rows


def choose(rows):
    """The chosen λ per penalty: the row with the highest mean final validation accuracy (the
    first, i.e. the smallest λ, on a tie). {penalty: row}; the baseline "none" is not chosen."""
    best = {}
    for row in rows:
        if row["method"] != "none":
            current = best.get(row["method"])
            if current is None or row["final_val_acc"].mean > current["final_val_acc"].mean:
                best[row["method"]] = row
    return best


def mean_curves(runs):
    """Per (penalty, λ): the label, and per epoch the mean and std over seeds of train/val
    accuracy and loss, over the epochs every seed has. [{"method", "label", "epochs", key: ...}]."""
    groups = {}
    for run in runs:
        if run["history"]:
            groups.setdefault(group_key(run), []).append(run)
    series = []
    for (reg, l1, l2), members in sorted(groups.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1:])):
        n = min(len(r["history"]) for r in members)
        entry = {"method": reg, "label": method_label(reg, l1, l2), "runs": len(members),
                 "epochs": [members[0]["history"][i]["epoch"] for i in range(n)]}
        for key in ("train_acc", "val_acc", "train_loss", "val_loss"):
            stats = [_stat(r["history"][i][key] for r in members) for i in range(n)]
            entry[key] = [s.mean for s in stats]
            entry[key + "_std"] = [0.0 if math.isnan(s.std) else s.std for s in stats]
        series.append(entry)
    return series


def settings(runs):
    """The settings the runs share, as {key: value}; a key on which they differ maps to a list."""
    out = {}
    for key in ("data_source", "epochs", "batch_size", "lr", "augment", "device"):
        values = []
        for run in runs:
            value = len(run["history"]) if key == "epochs" else run["config"].get(key)
            if value not in values:
                values.append(value)
        out[key] = values[0] if len(values) == 1 else values
    return out


def mixed_settings(runs):
    """The settings (other than the device) on which the runs differ: the table would mix experiments."""
    return [k for k, v in settings(runs).items() if isinstance(v, list) and k != "device"]


# ---------------------------------------------------------------- formats

def _pm(stat, scale=1.0, digits=2):
    if math.isnan(stat.std):
        return f"{stat.mean * scale:.{digits}f}"
    return f"{stat.mean * scale:.{digits}f} ± {stat.std * scale:.{digits}f}"


GRID_COLUMNS = [("final val acc (%)", "final_val_acc", 100, 2), ("final train acc (%)", "final_train_acc", 100, 2),
                ("train − val gap (pp)", "gap", 100, 2), ("sparsity ≤1e-3 (%)", "sparsity_1e-3", 100, 2)]
COMPARE_COLUMNS = [("final train acc (%)", "final_train_acc", 100, 2), ("final val acc (%)", "final_val_acc", 100, 2),
                   ("train − val gap (pp)", "gap", 100, 2), ("best val acc (%)", "best_val_acc", 100, 2),
                   ("sparsity ≤1e-3 (%)", "sparsity_1e-3", 100, 2), ("sparsity ≤1e-4 (%)", "sparsity_1e-4", 100, 3),
                   ("exact zeros (%)", "sparsity_0", 100, 3), ("time/epoch (s)", "epoch_time_s", 1, 2),
                   ("images/s", "images_per_s", 1, 0)]


PRUNE_COLUMN = ("largest sparsity within 1 pp after pruning (%)", "within_1pp", 100, 1)


def _settings_line(s):
    def show(v, fmt=str):
        return "mixed: " + ", ".join(fmt(x) for x in v) if isinstance(v, list) else fmt(v)
    aug = show(s["augment"], lambda a: "on" if a else "off")
    return (f"Data: {show(s['data_source'])}; {show(s['epochs'])} epochs; batch {show(s['batch_size'])}; "
            f"Adam lr {show(s['lr'])}; augmentation {aug}; device {show(s['device'])}.")


def format_markdown(rows, kind="compare", runs=None):
    """The table of `rows` (from summarize) as markdown; kind "grid" adds the chosen λ per penalty."""
    columns = GRID_COLUMNS if kind == "grid" else COMPARE_COLUMNS
    if kind != "grid" and any("within_1pp" in row for row in rows):
        columns = columns + [PRUNE_COLUMN]
    lines = ["# λ grid search" if kind == "grid" else "# Comparison of penalties: none, L1, L2, L1L2", ""]
    if runs:
        lines += [_settings_line(settings(runs)), ""]
    seeds = sorted({s for row in rows for s in row["seeds"]})
    lines += [f"Mean ± sample standard deviation over the seeds ({', '.join(map(str, seeds))}); one seed shows "
              "the value alone. Final = the last epoch; gap = final train − final val accuracy, in percentage "
              "points; sparsity = fraction of kernel weights with |w| ≤ the threshold, over all layers"
              + ("; time/epoch and images/s = median over a run's epochs of the training pass (no evaluation)."
                 if kind != "grid" else "."), ""]
    chosen = choose(rows) if kind == "grid" else {}
    head = ["penalty", "λ", "seeds", *(c[0] for c in columns)] + (["chosen"] if kind == "grid" else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        cells = [METHOD_NAMES[row["method"]], lambda_text(row["method"], row["l1"], row["l2"]), str(row["runs"])]
        cells += [_pm(row[key], scale, digits) if key in row else "not pruned" for _, key, scale, digits in columns]
        if kind == "grid":
            cells.append("**chosen**" if chosen.get(row["method"]) is row else "")
        lines.append("| " + " | ".join(cells) + " |")
    if kind == "grid" and chosen:
        lines += ["", "Chosen λ per penalty: the highest mean final validation accuracy.", ""]
        for method, row in chosen.items():
            others = sorted((r for r in rows if r["method"] == method and r is not row),
                            key=lambda r: -r["final_val_acc"].mean)
            text = (f"- {METHOD_NAMES[method]}: {lambda_text(method, row['l1'], row['l2'])} — final val acc "
                    f"{_pm(row['final_val_acc'], 100)}% over {row['runs']} seed(s)")
            if others:
                text += (f"; next best {lambda_text(method, others[0]['l1'], others[0]['l2'])} at "
                         f"{_pm(others[0]['final_val_acc'], 100)}%")
            else:
                text += " (the only λ tried)"
            lines.append(text + ".")
    return "\n".join(lines) + "\n"


def csv_text(rows, kind="compare"):
    """The rows as CSV: method, l1, l2, runs, seeds, epochs, device, then <metric>_mean and
    <metric>_std (fractions, seconds; std empty for one seed), and for a grid `chosen` (1 or 0)."""
    chosen = choose(rows) if kind == "grid" else {}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["method", "l1", "l2", "runs", "seeds", "epochs", "device"]
    header += [f"{m}_{part}" for m in METRICS for part in ("mean", "std")]
    writer.writerow(header + (["chosen"] if kind == "grid" else []))
    for row in rows:
        cells = [row["method"], num(row["l1"]), num(row["l2"]), row["runs"], " ".join(map(str, row["seeds"])),
                 row["epochs"], row["device"]]
        for m in METRICS:
            cells += [repr(row[m].mean), "" if math.isnan(row[m].std) else repr(row[m].std)]
        writer.writerow(cells + ([int(chosen.get(row["method"]) is row)] if kind == "grid" else []))
    return buf.getvalue()


def write_csv(rows, path, kind="compare"):
    Path(path).write_text(csv_text(rows, kind))


def pruning_series(runs):
    """Per (penalty, λ) whose runs were all pruned at the same levels: label, colour, and the mean
    over seeds of sparsity and test accuracy at each level (plots.plot_prune_methods' series)."""
    groups = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(prune_curve(run))
    series = []
    for (reg, l1, l2), curves in sorted(groups.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1:])):
        if None in curves or len({tuple(p["level"] for p in c) for c in curves}) != 1:
            continue
        series.append({"label": method_label(reg, l1, l2), "color": METHOD_COLORS[reg],
                       **{key: [statistics.fmean(p[key] for p in points) for points in zip(*curves)]
                          for key in ("sparsity", "test_acc")}})
    return series


def write_report(directory, runs, kind, log=print):
    """Writes <kind>.md and <kind>.csv (and for compare the Figures 10-11) from complete runs."""
    directory = Path(directory)
    rows = summarize(runs)
    (directory / f"{kind}.md").write_text(format_markdown(rows, kind, runs))
    write_csv(rows, directory / f"{kind}.csv", kind)
    written = [directory / f"{kind}.md", directory / f"{kind}.csv"]
    if kind == "compare":
        from .plots import plot_methods
        series = mean_curves(runs)
        for s in series:
            s["color"] = METHOD_COLORS[s["method"]] if sum(t["method"] == s["method"] for t in series) == 1 else None
        plot_methods(series, directory / "fig10_accuracy.png", "acc", "accuracy",
                     "Figure 10: training vs validation accuracy by method")
        plot_methods(series, directory / "fig11_loss.png", "loss", "loss (with penalty)",
                     "Figure 11: training vs validation loss by method")
        written += [directory / "fig10_accuracy.png", directory / "fig11_loss.png"]
        pruned = pruning_series(runs)
        if pruned:
            from .plots import plot_prune_methods
            plot_prune_methods(pruned, directory / "pruning.png",
                               "test accuracy after global magnitude pruning (mean over seeds)")
            written.append(directory / "pruning.png")
    mixed = mixed_settings(runs)
    if mixed:
        log(f"pyregnet.sweep: warning: the runs in the {kind} table differ in {', '.join(mixed)}")
    log(f"wrote {', '.join(str(p) for p in written)}")
    return rows
