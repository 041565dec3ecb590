"""The Dataset every CIFAR-10 loader returns, the DataError each raises, and the cache directory
they share (pyregnet.data, pyregnet.imagefolder)."""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")
CHUNK = 1 << 20  # bytes read at a time from data files


class DataError(Exception):
    """A data source is missing, truncated or corrupt. The message is one user-facing line: what
    was expected and how to get it."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Train and test split of an image classification set.

    x_*: uint8 (N, 32, 32, 3), C-contiguous; y_*: int64 (N,) in [0, len(classes)).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    source: str

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(self.classes))
        for split in SPLITS:
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4
                    and x.shape[1:] == (32, 32, 3) and x.flags.c_contiguous):
                raise ValueError(f"Dataset: expected x_{split} a C-contiguous uint8 (N, 32, 32, 3) "
                                 f"array but got {describe(x)}")
            if not (isinstance(y, np.ndarray) and y.dtype == np.int64 and y.shape == (len(x),)):
                raise ValueError(f"Dataset: expected y_{split} an int64 ({len(x)},) array but got "
                                 f"{describe(y)}")
            if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(f"Dataset: expected y_{split} in [0, {len(self.classes)}) but got labels from "
                                 f"{y.min()} to {y.max()}")

    def __repr__(self):
        return (f"Dataset(source={self.source!r}, train={len(self.x_train)}, "
                f"test={len(self.x_test)}, classes={len(self.classes)})")


def describe(a):
    if isinstance(a, np.ndarray):
        layout = "" if a.flags.c_contiguous else ", not C-contiguous"
        return f"{a.dtype} {a.shape}{layout}"
    return type(a).__name__


def cache_dir() -> pathlib.Path:
    """Where downloads and decoded caches go: ``$PYREGNET_DATA``, else ``~/.cache/pyregnet``."""
    env = os.environ.get("PYREGNET_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyregnet"


def check_classes(classes, n_classes, where):
    if n_classes is not None and len(classes) != n_classes:
        raise DataError(f"{where} has {len(classes)} classes ({', '.join(classes)}) but the network has "
                        f"{n_classes} outputs: expected CIFAR-10's {n_classes} class folders; remove the others")
