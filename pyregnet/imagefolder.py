"""CIFAR-10 as an image-folder tree ``train/<class>/*``, ``test/<class>/*`` or a .tar.gz of one
(sorted class folder names are the labels), decoded once with Pillow and kept as a checked .npz
in the cache directory (docs/design.md §5)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from .dataset import CHUNK, SPLITS, DataError, Dataset, cache_dir, check_classes, describe
from .files import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")
_CACHE_VERSION = 2           # bump when the image-folder cache format changes
TREE = "train/<class>/<image> and test/<class>/<image> with the same class folders in both"


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def find_tree_root(p: Path) -> Path | None:
    """p if it has train/ or test/, else its only (non-hidden) subfolder if that one does."""
    if any((p / s).is_dir() for s in SPLITS):
        return p
    subdirs = [d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(subdirs) == 1 and any((subdirs[0] / s).is_dir() for s in SPLITS):
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
    for split in SPLITS:
        d = root / split
        if not d.is_dir():
            raise DataError(f"image-folder tree at {root} has no {split}/ folder: expected {TREE}")
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
                    if len(rel) >= 2 and rel[0] in SPLITS and (len(rel) == 3 or (len(rel) == 2 and m.isdir())):
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
                        f"{TREE}: get it again") from exc
    if len(roots) > 1:
        raise DataError(f"{p} holds several image-folder trees (top-level folders "
                        f"{sorted(r or '.' for r in roots)}); expected one: {TREE}")
    for split in SPLITS:
        if split not in tree:
            raise DataError(f"image-folder archive {p} has no {split}/ folder: expected {TREE}, "
                            f"optionally inside one top-level folder")
    for split in SPLITS:
        for files in tree[split].values():
            files.sort()
    return tree


def _decode_tree(tree: dict, where: str, read, sep: str, n_classes=None) -> tuple:
    """Decode a scanned tree; read(item, rel) gives an entry's bytes; where + sep + rel names it."""
    names = {s: sorted(tree[s]) for s in SPLITS}
    if names["train"] != names["test"]:
        only_train = sorted(set(names["train"]) - set(names["test"]))
        only_test = sorted(set(names["test"]) - set(names["train"]))
        raise DataError(f"image-folder tree at {where}: train/ and test/ have different class folders "
                        f"(only in train/: {only_train}; only in test/: {only_test}); expected {TREE}")
    classes = tuple(names["train"])
    if not classes:
        raise DataError(f"image-folder tree at {where} has no class folders in train/: expected {TREE}")
    check_classes(classes, n_classes, f"image-folder tree at {where}")
    out = []
    for split in SPLITS:
        for c in classes:
            if not tree[split][c]:
                raise DataError(f"image-folder tree at {where}: class folder {split}/{c}/ has no "
                                f"images (expected .png or .jpg files): expected {TREE}")
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
            while chunk := f.read(CHUNK):
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
    for split in SPLITS:
        x, y = z[f"x_{split}"], z[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(x) == 0:
            return f"x_{split} is {describe(x)}, expected uint8 (N, 32, 32, 3)"
        if y.dtype != np.int64 or y.shape != (len(x),):
            return f"y_{split} is {describe(y)}, expected int64 ({len(x)},)"
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
        raise DataError(f"no image-folder data at {p}: the path does not exist; expected {TREE}, or a "
                        f".tar.gz of it")
    source = f"image folder ({p})"
    if p.is_dir():
        root = find_tree_root(p)
        if root is None:
            raise DataError(f"no image-folder tree at {p}: expected {TREE}")
        tree = _scan_dir_tree(root)
        stats, files = [], []
        for split in SPLITS:
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
            check_classes(ds.classes, n_classes, f"image-folder data at {p}")
            return ds
    if tree is not None:
        arrays = _decode_tree(tree, str(root), _read_file, "/", n_classes)
    else:
        arrays = _decode_tree(_scan_tarball(p), str(p), lambda data, rel: data, ":", n_classes)
    ds = Dataset(*arrays, source)
    if cache:
        _save_cache(cache_file, ds, key)
    return ds
