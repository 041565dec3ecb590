"""CIFAR-10 and a synthetic stand-in, as uint8 arrays.

Every loader returns a :class:`Dataset`: images uint8 (N, 32, 32, 3) C-contiguous (HWC per
image, as CIFAR ships them) and labels int64 (N,). Sources:

* the official python tarball ``cifar-10-python.tar.gz``, downloaded on first use into
  :func:`cache_dir` (``$PYREGNET_DATA``, default ``~/.cache/pyregnet``), md5-verified and written
  atomically (a temporary file in the same directory, renamed into place only once the md5
  matches; removed on any failure, Ctrl-C included). Its members are read straight from the
  tarfile, nothing is extracted;
* an extracted ``cifar-10-batches-py`` directory;
* an image-folder tree ``train/<class>/*``, ``test/<class>/*`` (sorted class folder names are
  the labels) or a ``.tar.gz`` of one, optionally wrapped in one top-level folder. Decoded once
  with Pillow, then cached as an ``.npz`` in :func:`cache_dir`;
* :func:`synthetic`, a generated, learnable 10-class set for offline runs and tests.

A missing, truncated or corrupt source raises :class:`DataError`, whose message is one line
saying what was expected and how to get it. :func:`load` is the trainer's entry point.

This module needs only NumPy (and Pillow for image folders); it never imports ``pyregnet._core``.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pathlib
import pickle
import tarfile
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .files import atomic_write

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
_SPLITS = ("train", "test")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")
_CACHE_VERSION = 2           # bump when the image-folder cache format changes
_DOWNLOAD_TIMEOUT = 60.0     # seconds without progress before a download gives up
_CHUNK = 1 << 20

_OFFLINE_HINT = ("on machines without internet, use the image-folder copy: "
                 "--data PATH/cifar10-jpeg.tar.gz")
_EXPECTED = ("expected cifar-10-python.tar.gz, a cifar-10-batches-py directory, or an image-folder "
             "tree with train/ and test/ (or a .tar.gz of one)")
_TREE = "train/<class>/<image> and test/<class>/<image> with the same class folders in both"


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
        for split in _SPLITS:
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4
                    and x.shape[1:] == (32, 32, 3) and x.flags.c_contiguous):
                raise ValueError(f"Dataset: expected x_{split} a C-contiguous uint8 (N, 32, 32, 3) "
                                 f"array but got {_describe(x)}")
            if not (isinstance(y, np.ndarray) and y.dtype == np.int64 and y.shape == (len(x),)):
                raise ValueError(f"Dataset: expected y_{split} an int64 ({len(x)},) array but got "
                                 f"{_describe(y)}")
            if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(f"Dataset: expected y_{split} in [0, {len(self.classes)}) but got labels from "
                                 f"{y.min()} to {y.max()}")

    def __repr__(self):
        return (f"Dataset(source={self.source!r}, train={len(self.x_train)}, "
                f"test={len(self.x_test)}, classes={len(self.classes)})")


def _describe(a):
    if isinstance(a, np.ndarray):
        layout = "" if a.flags.c_contiguous else ", not C-contiguous"
        return f"{a.dtype} {a.shape}{layout}"
    return type(a).__name__


def cache_dir() -> pathlib.Path:
    """Where downloads and decoded caches go: ``$PYREGNET_DATA``, else ``~/.cache/pyregnet``."""
    env = os.environ.get("PYREGNET_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyregnet"


# ---------------------------------------------------------------------------------------------
# files


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
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
            while chunk := fh.read(_CHUNK):
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
                while chunk := resp.read(_CHUNK):
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
                raise DataError(f"{bad} but got data {_describe(data)}; get {TARBALL_NAME} again")
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
                if any(x in _SPLITS for x in parts[:2]):
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
        if _find_tree_root(p) is not None:
            return load_image_folder(p, n_classes=n_classes)
        raise DataError(f"no CIFAR-10 data at {p}: {_EXPECTED}; {_OFFLINE_HINT}")
    if _tar_kind(p) == "official":
        return _load_official_tarball(p, md5, in_cache=False)
    return load_image_folder(p, n_classes=n_classes)


# ---------------------------------------------------------------------------------------------
# image folders


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(_IMAGE_EXTENSIONS)


def _find_tree_root(p: Path) -> Path | None:
    """p if it has train/ or test/, else its only (non-hidden) subfolder if that one does."""
    if any((p / s).is_dir() for s in _SPLITS):
        return p
    subdirs = [d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(subdirs) == 1 and any((subdirs[0] / s).is_dir() for s in _SPLITS):
        return subdirs[0]
    return None


def _pil_image():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("decoding an image-folder copy of CIFAR-10 needs Pillow: pip install pillow") from None
    return Image


def _decode_image(data: bytes, name: str) -> np.ndarray:
    """One image file's bytes -> uint8 (32, 32, 3) RGB. ``name`` is for error messages."""
    Image = _pil_image()
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (32, 32):
                raise DataError(f"{name}: image is {im.size[0]}x{im.size[1]}, expected 32x32 like "
                                f"every CIFAR-10 image; resize or remove it")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad data
        raise DataError(f"{name}: not a readable image, truncated or corrupt ({type(exc).__name__}: "
                        f"{exc}); replace it or get the image-folder copy again") from exc


def _scan_dir_tree(root: Path) -> dict:
    """{split: {class: [(relative name, absolute path)]}} of a directory tree."""
    tree = {}
    for split in _SPLITS:
        d = root / split
        if not d.is_dir():
            raise DataError(f"image-folder tree at {root} has no {split}/ folder: expected {_TREE}")
        tree[split] = {}
        where = d
        try:
            for c in sorted(os.scandir(d), key=lambda e: e.name):
                if c.is_dir() and not c.name.startswith("."):
                    where = c.path
                    files = sorted((f.name for f in os.scandir(c.path) if f.is_file() and _is_image_name(f.name)))
                    tree[split][c.name] = [(f"{split}/{c.name}/{f}", os.path.join(c.path, f)) for f in files]
        except OSError as exc:
            raise DataError(f"cannot read the folder {where} ({exc.strerror or exc}); make it readable "
                            f"(chmod) or remove it") from exc
    return tree


def _scan_tarball(p: Path) -> dict:
    """{split: {class: [(relative name, bytes)]}} of a tar archive of an image-folder tree,
    optionally wrapped in one top-level folder."""
    tree, roots = {}, set()
    try:
        with tarfile.open(p, "r:*") as tf:
            for m in tf:
                parts = [x for x in PurePosixPath(m.name).parts if x not in ("", ".")]
                for root_len in (0, 1):
                    rel = parts[root_len:]
                    if len(rel) >= 2 and rel[0] in _SPLITS and (len(rel) == 3 or (len(rel) == 2 and m.isdir())):
                        break
                else:
                    continue
                split, cls = rel[0], rel[1]
                if cls.startswith("."):
                    continue
                roots.add("/".join(parts[:root_len]))
                files = tree.setdefault(split, {}).setdefault(cls, [])
                if len(rel) == 3 and m.isfile() and _is_image_name(rel[2]):
                    files.append(("/".join(rel), tf.extractfile(m).read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{p}: truncated or corrupt tar archive ({exc}); expected a .tar.gz of "
                        f"{_TREE}: get it again") from exc
    if len(roots) > 1:
        raise DataError(f"{p} holds several image-folder trees (top-level folders "
                        f"{sorted(r or '.' for r in roots)}); expected one: {_TREE}")
    for split in _SPLITS:
        if split not in tree:
            raise DataError(f"image-folder archive {p} has no {split}/ folder: expected {_TREE}, "
                            f"optionally inside one top-level folder")
    for split in _SPLITS:
        for files in tree[split].values():
            files.sort()
    return tree


def _check_classes(classes, n_classes, where):
    if n_classes is not None and len(classes) != n_classes:
        raise DataError(f"{where} has {len(classes)} classes ({', '.join(classes)}) but the network has "
                        f"{n_classes} outputs: expected CIFAR-10's {n_classes} class folders; remove the others")


def _decode_tree(tree: dict, where: str, read, sep: str, n_classes=None) -> tuple:
    """Decode a scanned tree; read(item, rel) gives an entry's bytes; where + sep + rel names it."""
    names = {s: sorted(tree[s]) for s in _SPLITS}
    if names["train"] != names["test"]:
        only_train = sorted(set(names["train"]) - set(names["test"]))
        only_test = sorted(set(names["test"]) - set(names["train"]))
        raise DataError(f"image-folder tree at {where}: train/ and test/ have different class folders "
                        f"(only in train/: {only_train}; only in test/: {only_test}); expected {_TREE}")
    classes = tuple(names["train"])
    if not classes:
        raise DataError(f"image-folder tree at {where} has no class folders in train/: expected {_TREE}")
    _check_classes(classes, n_classes, f"image-folder tree at {where}")
    out = []
    for split in _SPLITS:
        for c in classes:
            if not tree[split][c]:
                raise DataError(f"image-folder tree at {where}: class folder {split}/{c}/ has no "
                                f"images (expected .png or .jpg files): expected {_TREE}")
        n = sum(len(tree[split][c]) for c in classes)
        x = np.empty((n, 32, 32, 3), np.uint8)
        y = np.empty(n, np.int64)
        i = 0
        for label, c in enumerate(classes):
            for rel, item in tree[split][c]:
                x[i] = _decode_image(read(item, rel), f"{where}{sep}{rel}")
                y[i] = label
                i += 1
        out += [x, y]
    return (*out, classes)


def _read_file(path, rel):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc})") from exc


def _cache_key(parts, contents) -> str:
    """The cache's name: the source's names, sizes and mtimes, and a hash of every byte of it
    (contents: an iterable of byte strings), so that an image replaced by another of the same
    size, its mtime restored, is seen."""
    h = hashlib.sha256(f"pyregnet image-folder cache v{_CACHE_VERSION}".encode())
    for part in parts:
        h.update(b"\0" + str(part).encode("utf-8", "surrogateescape"))
    for blob in contents:
        h.update(blob)
    return h.hexdigest()[:24]


def _file_chunks(path):
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc})") from exc


_CACHE_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _arrays_digest(arrays: dict) -> str:
    """A hash of the decoded arrays and class names, stored in the cache and checked on load."""
    h = hashlib.sha256()
    for name in _CACHE_ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name} {a.dtype.str} {a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    h.update("\0".join(str(c) for c in arrays["classes"]).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _cache_problem(z: dict, key: str) -> str | None:
    """Why a loaded cache cannot be used, or None."""
    missing = [k for k in (*_CACHE_ARRAYS, "classes", "key", "digest") if k not in z]
    if missing:
        return f"it lacks {', '.join(missing)}"
    if str(z["key"]) != key:
        return "it was made from other source files"
    classes = z["classes"]
    if classes.ndim != 1 or classes.dtype.kind != "U" or len(classes) == 0:
        return "its class names are not a list of strings"
    for split in _SPLITS:
        x, y = z[f"x_{split}"], z[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(x) == 0:
            return f"x_{split} is {_describe(x)}, expected uint8 (N, 32, 32, 3)"
        if y.dtype != np.int64 or y.shape != (len(x),):
            return f"y_{split} is {_describe(y)}, expected int64 ({len(x)},)"
        if y.min() < 0 or y.max() >= len(classes):
            return f"y_{split} holds labels outside [0, {len(classes)})"
    if str(z["digest"]) != _arrays_digest(z):
        return "its arrays do not match the hash stored with them"
    return None


def _load_cache(f: Path, source: str, key: str) -> Dataset | None:
    """The cached dataset, or None when there is none or it fails its checks (then it is decoded
    again and overwritten)."""
    try:
        with np.load(f, allow_pickle=False) as npz:
            z = {k: npz[k] for k in npz.files}
        problem = _cache_problem(z, key)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged zip, a member that is not an array, ...
        problem = f"unreadable ({type(exc).__name__}: {exc})"
    if problem:
        warnings.warn(f"pyregnet.data: the decoded-image cache {f} is not usable ({problem}); decoding the "
                      f"images again", RuntimeWarning, stacklevel=3)
        return None
    return Dataset(np.ascontiguousarray(z["x_train"]), z["y_train"], np.ascontiguousarray(z["x_test"]),
                   z["y_test"], tuple(str(c) for c in z["classes"]), source)


def _save_cache(f: Path, ds: Dataset, key: str) -> None:
    arrays = {"x_train": ds.x_train, "y_train": ds.y_train, "x_test": ds.x_test, "y_test": ds.y_test,
              "classes": np.array(ds.classes, dtype=str)}
    arrays.update(key=np.array(key), digest=np.array(_arrays_digest(arrays)))
    try:
        atomic_write(f, lambda fo: np.savez(fo, **arrays))
    except OSError as exc:
        warnings.warn(f"pyregnet.data: could not write the decoded-image cache {f} ({exc}); the "
                      f"images will be decoded again next time", RuntimeWarning, stacklevel=3)


def load_image_folder(path, *, cache=True, n_classes=None) -> Dataset:
    """An image-folder tree ``train/<class>/*``, ``test/<class>/*`` (or a .tar.gz/.tgz/.tar of
    one, optionally inside one top-level folder). Labels are the indices of the sorted class
    folder names, which must be the same in train/ and test/. Every image must be 32x32; it is
    decoded with Pillow to RGB. Files whose names are hidden or lack an image extension are
    skipped. With ``cache``, the decoded arrays are kept as an .npz in :func:`cache_dir`, keyed
    by the source's absolute path, its names, sizes and mtimes and a hash of all its bytes; the
    cache is checked when loaded (key, shapes, dtypes, labels, a hash of the arrays) and decoded
    again when a check fails. ``n_classes``: the number of class folders expected (DataError
    otherwise, before decoding)."""
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise DataError(f"no image-folder data at {p}: the path does not exist; expected {_TREE}, or a "
                        f".tar.gz of it")
    source = f"image folder ({p})"
    if p.is_dir():
        root = _find_tree_root(p)
        if root is None:
            raise DataError(f"no image-folder tree at {p}: expected {_TREE}")
        tree = _scan_dir_tree(root)
        stats, files = [], []
        for split in _SPLITS:
            for c in sorted(tree[split]):
                for rel, f in tree[split][c]:
                    st = os.stat(f)
                    stats.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
                    files.append(f)
        if cache:
            key = _cache_key([root, *stats], (chunk for f in files for chunk in _file_chunks(f)))
    else:
        st = p.stat()
        if cache:
            key = _cache_key([p, st.st_size, st.st_mtime_ns], _file_chunks(p))
        tree = root = None
    cache_file = cache_dir() / f"imagefolder-{key}.npz" if cache else None
    if cache:
        ds = _load_cache(cache_file, source, key)
        if ds is not None:
            _check_classes(ds.classes, n_classes, f"image-folder data at {p}")
            return ds
    if tree is not None:
        arrays = _decode_tree(tree, str(root), _read_file, "/", n_classes)
    else:
        arrays = _decode_tree(_scan_tarball(p), str(p), lambda data, rel: data, ":", n_classes)
    ds = Dataset(*arrays, source)
    if cache:
        _save_cache(cache_file, ds, key)
    return ds


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
    idx = np.random.default_rng([seed, 0xDA7A, _SPLITS.index(split)]).permutation(n)[:size]
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
    _check_classes(ds.classes, n_classes, ds.source)
    if train_size is None and val_size is None:
        return ds
    x_train, y_train, t = _subset(ds.x_train, ds.y_train, train_size, "train_size", "train", seed)
    x_test, y_test, v = _subset(ds.x_test, ds.y_test, val_size, "val_size", "test", seed)
    return Dataset(x_train, y_train, x_test, y_test, ds.classes, ds.source + t + v)
