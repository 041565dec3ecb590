"""CIFAR-10 and a synthetic stand-in, as uint8 arrays: :func:`load` is the trainer's entry point.

Every loader returns a :class:`Dataset` (pyregnet.dataset): images uint8 (N, 32, 32, 3)
C-contiguous (HWC per image, as CIFAR ships them) and labels int64 (N,). Sources:

* the official python tarball ``cifar-10-python.tar.gz``, downloaded on first use into
  :func:`cache_dir` (``$PYREGNET_DATA``, default ``~/.cache/pyregnet``), md5-verified and written
  atomically (a temporary file in the same directory, renamed into place only once the md5
  matches; removed on any failure, Ctrl-C included). Its members are read straight from the
  tarfile, nothing is extracted;
* an extracted ``cifar-10-batches-py`` directory;
* an image-folder tree or a ``.tar.gz`` of one (pyregnet.imagefolder: decoded once with Pillow,
  then cached);
* :func:`synthetic`, a generated, learnable 10-class set for offline runs and tests.

A missing, truncated or corrupt source raises :class:`DataError`, whose message is one line
saying what was expected and how to get it.

This module needs only NumPy (and Pillow for image folders); it never imports ``pyregnet._core``.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from .dataset import CHUNK, SPLITS, DataError, Dataset, cache_dir, check_classes, describe
from .files import atomic_write
from .imagefolder import find_tree_root, load_image_folder

__all__ = [
    "CIFAR10_URL", "CIFAR10_MD5", "CLASSES", "DataError", "Dataset", "cache_dir", "load_cifar10",
    "load_image_folder", "synthetic", "load",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

TARBALL_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_META = "batches.meta"
_BATCH_FILES = _TRAIN_BATCHES + (_TEST_BATCH, _META)
_DOWNLOAD_TIMEOUT = 60.0     # seconds without progress before a download gives up

_OFFLINE_HINT = ("on machines without internet, use the image-folder copy: "
                 "--data PATH/cifar10-jpeg.tar.gz")
_EXPECTED = ("expected cifar-10-python.tar.gz, a cifar-10-batches-py directory, or an image-folder "
             "tree with train/ and test/ (or a .tar.gz of one)")


# ---------------------------------------------------------------------------------------------
# files


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def source_identity(spec: str | None, dataset: str = "cifar10") -> dict:
    """{"name", "sha256"}: the data a run read, named without a path of this machine. A file: its
    name and the SHA-256 of its bytes; a directory: its name and the SHA-256 of every file's
    relative path and bytes, in sorted order; no --data: the cached CIFAR-10 that
    :func:`load_cifar10` reads; synthetic data: its name and None."""
    if spec is None:
        if dataset != "cifar10":
            return {"name": dataset, "sha256": None}
        root = cache_dir()
        p = root / BATCHES_DIR if (root / BATCHES_DIR).is_dir() else root / TARBALL_NAME
    else:
        p = Path(spec).expanduser()
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode() + b"\0" + f.stat().st_size.to_bytes(8, "little"))
        with open(f, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    return {"name": p.name, "sha256": h.hexdigest()}


def _download(url: str, dest: Path, md5: str | None, progress) -> None:
    """Download url to dest atomically, verifying md5 (when not None) before the rename."""

    def write(f):
        h = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.strip().isdigit() else None
                done = 0
                if progress is not None:
                    progress(0, total)
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except urllib.error.HTTPError as exc:
            raise DataError(f"could not download CIFAR-10 from {url}: HTTP {exc.code} {exc.reason}; "
                            f"put {TARBALL_NAME} (md5 {CIFAR10_MD5}) in {dest.parent}; "
                            f"{_OFFLINE_HINT}") from exc
        except http.client.IncompleteRead as exc:
            raise DataError(f"download of {url} was cut short ({len(exc.partial)} bytes more were "
                            f"expected); nothing was kept: run again to retry; "
                            f"{_OFFLINE_HINT}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DataError(f"could not download CIFAR-10 from {url} ({reason}); check the network or "
                            f"put {TARBALL_NAME} (md5 {CIFAR10_MD5}) in {dest.parent}; "
                            f"{_OFFLINE_HINT}") from exc
        if total is not None and done != total:
            raise DataError(f"download of {url} was cut short: got {done} of {total} bytes; nothing "
                            f"was kept: run again to retry; {_OFFLINE_HINT}")
        if md5 is not None and h.hexdigest() != md5.lower():
            raise DataError(f"download of {url}: md5 {h.hexdigest()} does not match the expected "
                            f"{md5}; the transfer was corrupt or the server sent something else; "
                            f"nothing was kept: run again to retry; {_OFFLINE_HINT}")

    try:
        atomic_write(dest, write)
    except OSError as exc:  # the cache directory itself (not the transfer, handled above)
        raise DataError(f"cannot write the download to {dest.parent} ({exc}); set PYREGNET_DATA to "
                        f"a writable directory") from exc


# ---------------------------------------------------------------------------------------------
# official python batches


_NUMPY_CORE = getattr(np, "_core", None) or np.core


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of bytes, ints, lists and NumPy arrays) and refuses to
    import anything else, so a hostile file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _NUMPY_CORE.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _NUMPY_CORE.multiarray._reconstruct,
        ("numpy.core.numeric", "_frombuffer"): getattr(_NUMPY_CORE.numeric, "_frombuffer", None),
        ("numpy._core.numeric", "_frombuffer"): getattr(_NUMPY_CORE.numeric, "_frombuffer", None),
        ("_codecs", "encode"): __import__("_codecs").encode,
    }

    def find_class(self, module, name):
        obj = self._ALLOWED.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return obj


def _unpickle(blob: bytes, where: str):
    try:
        return _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DataError(f"{where}: corrupt or truncated pickle ({type(exc).__name__}: {exc}); "
                        f"expected an official CIFAR-10 batch: get {TARBALL_NAME} again") from exc


def _get(d, key):
    return d.get(key.encode(), d.get(key)) if isinstance(d, dict) else None


def _batches_to_dataset(blobs: dict, where: str, source: str) -> Dataset:
    missing = [n for n in _TRAIN_BATCHES + (_TEST_BATCH,) if n not in blobs]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}; a CIFAR-10 python release holds "
                        f"{BATCHES_DIR}/data_batch_1..5, test_batch and batches.meta: get "
                        f"{TARBALL_NAME} again (md5 {CIFAR10_MD5}); {_OFFLINE_HINT}")
    classes = CLASSES
    if _META in blobs:
        names = _get(_unpickle(blobs[_META], f"{where}/{_META}"), "label_names")
        try:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
            if not classes:
                raise ValueError
        except (TypeError, ValueError, UnicodeDecodeError):
            raise DataError(f"{where}/{_META}: expected a dict with a non-empty list label_names; "
                            f"get {TARBALL_NAME} again") from None

    def split(names):
        xs, ys = [], []
        for name in names:
            d = _unpickle(blobs[name], f"{where}/{name}")
            data, labels = _get(d, "data"), _get(d, "labels")
            bad = f"{where}/{name}: expected a dict with data uint8 (N, 3072) and N labels in [0, {len(classes)})"
            if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                    and data.shape[1] == 3072) or labels is None:
                raise DataError(f"{bad} but got data {describe(data)}; get {TARBALL_NAME} again")
            try:
                y = np.asarray(labels, dtype=np.int64)
            except (TypeError, ValueError, OverflowError):
                raise DataError(f"{bad} but the labels are not integers; get {TARBALL_NAME} again") from None
            if y.shape != (len(data),) or (y.size and (y.min() < 0 or y.max() >= len(classes))):
                raise DataError(f"{bad} but got {y.size} labels in [{y.min(initial=0)}, "
                                f"{y.max(initial=0)}]; get {TARBALL_NAME} again")
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # CHW planes -> HWC
            ys.append(y)
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    x_train, y_train = split(_TRAIN_BATCHES)
    x_test, y_test = split((_TEST_BATCH,))
    return Dataset(x_train, y_train, x_test, y_test, classes, source)


def _load_batches_dir(d: Path) -> Dataset:
    blobs = {}
    for name in _BATCH_FILES:
        f = d / name
        if f.is_file():
            try:
                blobs[name] = f.read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read {f} ({exc})") from exc
    return _batches_to_dataset(blobs, str(d), f"cifar10 (python batches, {d})")


def _bad_md5_message(p: Path, actual: str, md5: str, in_cache: bool) -> str:
    fix = ("delete it and run again to re-download, or pass --data with a good copy" if in_cache
           else f"get a good copy (md5 {md5}); {_OFFLINE_HINT}")
    official = "the official" if md5.lower() == CIFAR10_MD5 else "the expected"
    return (f"{p.name} at {p}: md5 {actual} does not match {official} {md5}; the file is corrupt "
            f"or truncated: {fix}")


def _load_official_tarball(p: Path, md5: str | None, *, in_cache: bool) -> Dataset:
    if md5 is not None:
        actual = _md5_file(p)
        if actual != md5.lower():
            raise DataError(_bad_md5_message(p, actual, md5, in_cache))
    blobs = {}
    try:
        with tarfile.open(p, "r:*") as tf:
            for m in tf:  # one forward pass through the gzip stream
                parts = PurePosixPath(m.name).parts
                if m.isfile() and len(parts) >= 2 and parts[-2] == BATCHES_DIR and parts[-1] in _BATCH_FILES:
                    blobs[parts[-1]] = tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{p}: truncated or corrupt tar.gz ({exc}); expected the official "
                        f"{TARBALL_NAME} (md5 {CIFAR10_MD5}): get it again; {_OFFLINE_HINT}") from exc
    return _batches_to_dataset(blobs, str(p), f"cifar10 (python tarball, {p})")


def _tar_kind(p: Path) -> str:
    """'official' or 'imagefolder', from the first members of the archive."""
    try:
        with tarfile.open(p, "r:*") as tf:
            for _ in range(64):
                m = tf.next()
                if m is None:
                    break
                parts = [x for x in PurePosixPath(m.name).parts if x not in ("", ".")]
                if BATCHES_DIR in parts or (parts and parts[-1] in _BATCH_FILES):
                    return "official"
                if any(x in SPLITS for x in parts[:2]):
                    return "imagefolder"
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        reason = exc  # tarfile's "could not be opened" lists every compression it tried, over lines
        if "could not be opened successfully" in str(exc):
            reason = "not a .tar, .tar.gz, .tar.bz2 or .tar.xz file"
        raise DataError(f"{p} is not a readable tar archive ({reason}); {_EXPECTED}; a truncated "
                        f"download or copy must be fetched again; {_OFFLINE_HINT}") from exc
    raise DataError(f"{p} holds neither {BATCHES_DIR}/ nor train/ and test/ folders; {_EXPECTED}; "
                    f"{_OFFLINE_HINT}")


def load_cifar10(path=None, *, download=True, url=CIFAR10_URL, md5=CIFAR10_MD5, progress=None,
                 n_classes=None) -> Dataset:
    """CIFAR-10 from ``path``, or from the cache directory (downloading it there on first use).

    path None: ``cache_dir()/cifar-10-batches-py`` if present, else
    ``cache_dir()/cifar-10-python.tar.gz``, downloaded from ``url`` first if absent and
    ``download`` (else DataError). path given: a cifar-10-python.tar.gz, a cifar-10-batches-py
    directory or a directory containing one (or the tarball), an image-folder tree, or a
    .tar.gz/.tgz/.tar of one (see :func:`load_image_folder`). ``md5`` (None: no check) is
    verified for the downloaded file and for any official tarball loaded. ``progress`` is called
    as progress(bytes_done, bytes_total_or_None) during a download.
    """
    if path is None:
        root = cache_dir()
        if (root / BATCHES_DIR).is_dir():
            return _load_batches_dir(root / BATCHES_DIR)
        tarball = root / TARBALL_NAME
        if not tarball.is_file():
            if not download:
                raise DataError(f"CIFAR-10 is not in the cache directory {root}: expected "
                                f"{TARBALL_NAME} (md5 {CIFAR10_MD5}, from {url}) or {BATCHES_DIR}/ "
                                f"there: allow the download or copy the file there; {_OFFLINE_HINT}")
            _download(url, tarball, md5, progress)
        return _load_official_tarball(tarball, md5, in_cache=True)

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"no CIFAR-10 data at {p}: the path does not exist; {_EXPECTED}; {_OFFLINE_HINT}")
    if p.is_dir():
        if p.name == BATCHES_DIR or any((p / n).is_file() for n in _BATCH_FILES):
            return _load_batches_dir(p)
        if (p / BATCHES_DIR).is_dir():
            return _load_batches_dir(p / BATCHES_DIR)
        if (p / TARBALL_NAME).is_file():
            return _load_official_tarball(p / TARBALL_NAME, md5, in_cache=False)
        if find_tree_root(p) is not None:
            return load_image_folder(p, n_classes=n_classes)
        raise DataError(f"no CIFAR-10 data at {p}: {_EXPECTED}; {_OFFLINE_HINT}")
    if _tar_kind(p) == "official":
        return _load_official_tarball(p, md5, in_cache=False)
    return load_image_folder(p, n_classes=n_classes)


# ---------------------------------------------------------------------------------------------
# synthetic


def _prototype(c: int, size: int) -> np.ndarray:
    """Class c's fixed smooth pattern, float32 (size, size, 3) in about [-1, 1]: random values
    on a 5x5 grid per channel, bilinearly interpolated. Fixed by class (not by seed)."""
    grid = np.random.default_rng([0x5EED, c]).uniform(-1.0, 1.0, (5, 5, 3))
    t = np.linspace(0.0, 4.0, size)
    i0 = np.minimum(t.astype(int), 3)
    w = (t - i0)[:, None]
    rows = grid[i0] * (1 - w[..., None]) + grid[i0 + 1] * w[..., None]          # (size, 5, 3)
    out = rows[:, i0] * (1 - w[None, :, :]) + rows[:, i0 + 1] * w[None, :, :]   # (size, size, 3)
    return out.astype(np.float32)


def _synthetic_split(n: int, classes: int, rng: np.random.Generator, protos: np.ndarray):
    y = rng.permutation(np.arange(n) % classes).astype(np.int64)
    x = np.empty((n, 32, 32, 3), np.uint8)
    margin = protos.shape[1] - 32
    ar = np.arange(32)
    for s in range(0, n, 4096):
        yb = y[s:s + 4096]
        m = len(yb)
        dy = rng.integers(0, margin + 1, m)[:, None, None]   # random translation, up to +-4 px
        dx = rng.integers(0, margin + 1, m)[:, None, None]
        img = protos[yb[:, None, None], dy + ar[None, :, None], dx + ar[None, None, :]]  # (m, 32, 32, 3)
        contrast = rng.uniform(40.0, 80.0, (m, 1, 1, 1)).astype(np.float32)
        brightness = rng.normal(128.0, 20.0, (m, 1, 1, 1)).astype(np.float32)
        img *= contrast
        img += brightness
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(30.0)
        x[s:s + m] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return x, y


def synthetic(n_train=5000, n_test=1000, *, seed=0, classes=10) -> Dataset:
    """A generated, learnable stand-in for CIFAR-10 (offline runs and tests).

    Each class has a fixed random smooth colour pattern (independent of ``seed``); a sample is
    its class's pattern, shifted by up to 4 pixels, scaled by a random contrast, plus a random
    brightness and Gaussian pixel noise, rounded and clipped to uint8. Labels are balanced
    (every class appears when n >= classes) and shuffled. Deterministic given ``seed``; train
    and test come from independent streams.
    """
    for name, v, lo in (("n_train", n_train, 1), ("n_test", n_test, 1), ("seed", seed, 0), ("classes", classes, 2)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise ValueError(f"synthetic: expected {name} an integer >= {lo} but got {v!r}")
    protos = np.stack([_prototype(c, 40) for c in range(classes)])
    x_train, y_train = _synthetic_split(int(n_train), classes, np.random.default_rng([seed, 0]), protos)
    x_test, y_test = _synthetic_split(int(n_test), classes, np.random.default_rng([seed, 1]), protos)
    names = CLASSES if classes == 10 else tuple(f"class{c}" for c in range(classes))
    return Dataset(x_train, y_train, x_test, y_test, names, f"synthetic (seed {seed})")


# ---------------------------------------------------------------------------------------------
# entry point and helpers


def _subset(x, y, size, what, split, seed):
    n = len(x)
    if size is None:
        return x, y, ""
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 1 <= size <= n:
        raise DataError(f"{what} {size!r} is out of range: the {split} split has {n} images; "
                        f"expected an integer from 1 to {n}")
    idx = np.random.default_rng([seed, 0xDA7A, SPLITS.index(split)]).permutation(n)[:size]
    return np.ascontiguousarray(x[idx]), y[idx], f", {split} {size}/{n}"


def stratified_indices(labels, size, stream):
    """`size` sorted indices into `labels` with every class in proportion to its share (largest
    remainders; ties go to the lower class), drawn by a generator that depends on `stream` only,
    so the pick is the same for every training seed. stream names the use (e.g. "holdout")."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 <= size <= n:
        raise ValueError(f"stratified_indices: size: expected 0 to {n} but got {size}")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / n
    quota = np.floor(exact).astype(np.int64)
    by_remainder = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]), i))
    quota[by_remainder[:size - int(quota.sum())]] += 1
    key = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "little")
    picked = []
    for c, q in zip(classes, quota):
        members = np.flatnonzero(labels == c)
        picked.append(members[np.random.default_rng([key, int(c)]).permutation(len(members))[:q]])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def load(spec: str | None = None, *, dataset="cifar10", download=True, train_size=None, val_size=None,
         seed=0, n_classes=None) -> Dataset:
    """The trainer's entry point.

    spec: the --data PATH (any source :func:`load_cifar10` takes), or None to use ``dataset``:
    "cifar10" (:func:`load_cifar10` from the cache directory, downloading if allowed) or
    "synthetic" (:func:`synthetic` with ``seed``). train_size / val_size (None: all) keep the
    first N images of the train / test split after a shuffle seeded by ``seed``, so subsets are
    roughly class-balanced and reproducible; out of range -> DataError. n_classes: the number of
    classes the caller's network has: a source with another number is a DataError, found
    before an image folder is decoded.
    """
    for what, size in (("train_size", train_size), ("val_size", val_size)):  # fail before loading
        if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1):
            raise DataError(f"{what} {size!r} is out of range: expected a positive integer (or None for "
                            f"the whole split)")
    if spec is not None:
        ds = load_cifar10(spec, download=download, n_classes=n_classes)
    elif dataset == "cifar10":
        ds = load_cifar10(download=download)
    elif dataset == "synthetic":
        ds = synthetic(seed=seed)
    else:
        raise DataError(f"unknown dataset {dataset!r}: expected 'cifar10' or 'synthetic', or --data PATH")
    check_classes(ds.classes, n_classes, ds.source)
    if train_size is None and val_size is None:
        return ds
    x_train, y_train, t = _subset(ds.x_train, ds.y_train, train_size, "train_size", "train", seed)
    x_test, y_test, v = _subset(ds.x_test, ds.y_test, val_size, "val_size", "test", seed)
    return Dataset(x_train, y_train, x_test, y_test, ds.classes, ds.source + t + v)
