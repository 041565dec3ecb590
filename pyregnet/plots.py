"""Figures: training curves of one run (the paper's Figures 2-9) and the comparison of methods
(Figures 10-11). matplotlib with the Agg backend: files only, no display needed."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
