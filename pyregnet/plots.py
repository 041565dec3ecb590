"""Figures: training curves of one run (the paper's Figures 2-9) and the comparison of methods
(Figures 10-11). matplotlib with the Agg backend: files only, no display needed."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def finish(fig, ax, path, title="", legend_size=8):
    """The common ending of a one-axes figure: title, grid, legend, saved to `path` and closed."""
    if title:
        ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history, path, title=""):
    """Accuracy and loss per epoch, train vs validation, side by side, saved to `path`."""
    epochs = [h["epoch"] for h in history]
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 4))
    acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    acc.plot(epochs, [h["val_acc"] for h in history], "s-", label="validation")
    acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    loss.set(xlabel="epoch", ylabel="loss (with penalty)", title="loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_methods(series, path, quantity, ylabel, title="", names=("train", "validation")):
    """Train (solid) vs validation (dashed) `quantity` ("acc" or "loss") per epoch, one colour per
    method: the paper's Figures 10 (accuracy) and 11 (loss). `series` holds, per method, "label",
    "epochs", "train_<quantity>", "val_<quantity>" (means over seeds), optionally the matching
    "..._std" lists (drawn as a band when non-zero) and "color". `names`: what the legend calls
    the train and val series."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5))
    banded = False
    for i, s in enumerate(series):
        color = s.get("color") or f"C{i}"
        for split, style in (("train", "-"), ("val", "--")):
            mean = s[f"{split}_{quantity}"]
            ax.plot(s["epochs"], mean, style, color=color, marker="o" if split == "train" else "s", markersize=3,
                    label=f"{s['label']} {names[0] if split == 'train' else names[1]}")
            std = s.get(f"{split}_{quantity}_std")
            if std and any(std):
                banded = True
                ax.fill_between(s["epochs"], [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                                color=color, alpha=0.12, linewidth=0)
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title + ("\n(mean over seeds; bands: ± 1 std)" if banded else ""), fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_weight_hists(series, edges, path, title=""):
    """The distribution of log10|w| of the kernel weights, one line per method: `series` holds,
    per method, "label", "fractions" (the fraction of weights per bin between consecutive `edges`,
    the last bin open above) and "zeros" (the fraction of exact zeros, named in the legend)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, s in enumerate(series):
        ax.step(edges[:-1], s["fractions"], where="post", color=s.get("color") or f"C{i}",
                label=f"{s['label']} (exact zeros {100 * s['zeros']:.3g}%)")
    ax.axvline(math.log10(2.0 ** -126), color="k", linestyle=":", linewidth=1)  # the smallest normal float32
    ax.set(xlabel="log10 |w| (dotted: smallest normal float32; left of it: subnormal)",
           ylabel="fraction of kernel weights per half decade", yscale="log")
    finish(fig, ax, path, title)


def plot_prune(result, path, title=""):
    """Test accuracy against the fraction of kernel weights that are zero, after magnitude pruning
    (pyregnet.prune's result: "global" and optionally "per_layer" curves)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, style in (("global", "o-"), ("per_layer", "s--"), ("finetuned", "^-.")):
        points = result.get(kind)
        if points:
            label = kind.replace("_", " ") if kind != "finetuned" else \
                f"global, fine-tuned {points[0]['epochs']} epochs, mask kept"
            ax.plot([100 * p["sparsity"] for p in points], [100 * p["test_acc"] for p in points], style, label=label)
    ax.set(xlabel="kernel weights set to zero (%)", ylabel="test accuracy (%)")
    finish(fig, ax, path, title, legend_size=None)


def plot_prune_methods(series, path, title=""):
    """Test accuracy against the fraction of kernel weights that are zero after global magnitude
    pruning, one line per method: `series` holds, per method, "label", "color", "sparsity" and
    "test_acc" (means over seeds at each pruning level)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, s in enumerate(series):
        ax.plot([100 * x for x in s["sparsity"]], [100 * a for a in s["test_acc"]], "o-",
                color=s.get("color") or f"C{i}", label=s["label"], markersize=4)
    ax.set(xlabel="kernel weights set to zero (%)", ylabel="test accuracy (%)")
    finish(fig, ax, path, title)
