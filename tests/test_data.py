"""pyregnet.data: every CIFAR-10 source, the download path, the image-folder cache, the
synthetic set and the trainer's entry point. All offline: tiny generated files under tmp_path,
downloads from a local HTTP server on 127.0.0.1, PYREGNET_DATA pointed at a temporary cache.

Set PYREGNET_TEST_REAL_DATA=1 to also decode the full image-folder copy in ../shared/data.
"""

import functools
import hashlib
import os
import pickle
import shutil
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from pyregnet import data, imagefolder
from pyregnet.data import DataError

PIL_Image = pytest.importorskip("PIL.Image", reason="image-folder tests need Pillow (pip install pillow)")

N_PER_BATCH = 4
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets an empty cache directory of its own (never ~/.cache)."""
    d = tmp_path / "cache"
    monkeypatch.setenv("PYREGNET_DATA", str(d))
    return d


def leftovers(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# ---------------------------------------------------------------------------------------------
# a tiny fake of the official release


def _batch(rng, n, tag):
    return {
        b"batch_label": tag.encode(),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"{tag}_{i}.png".encode() for i in range(n)],
    }


def py2_pickle(batch):
    """The bytes Python 2's cPickle.dump(batch, f, 2) wrote for {'data': uint8 array, 'labels':
    list} (str keys as SHORT_BINSTRING; the array via numpy.core.multiarray._reconstruct), as in
    the official release."""
    arr, labels = batch[b"data"], batch[b"labels"]
    assert arr.dtype == np.uint8 and arr.shape[1] == 3072 and len(arr) < 256
    raw = arr.tobytes()
    return (b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\n"
            b"q\x04K\x00\x85U\x01b\x87Rq\x05(K\x01K" + bytes([len(arr)]) + b"M\x00\x0c\x86cnumpy\ndtype\nq\x06"
            b"U\x02u1K\x00K\x01\x87Rq\x07(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
            b"T" + struct.pack("<I", len(raw)) + raw + b"tbU\x06labelsq\x08]q\x09("
            + b"".join(b"K" + bytes([v]) for v in labels) + b"eu.")


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    """cifar-10-batches-py (5 data batches + test_batch + batches.meta, 4 images each), as a
    directory and as cifar-10-python.tar.gz: protocol-2 pickles with bytes keys, test_batch
    byte-for-byte in Python 2's format."""
    root = tmp_path_factory.mktemp("fake_cifar")
    rng = np.random.default_rng(1234)
    batches = {f"data_batch_{i}": _batch(rng, N_PER_BATCH, f"training batch {i} of 5") for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, N_PER_BATCH, "testing batch 1 of 1")
    batches["batches.meta"] = {b"label_names": [c.encode() for c in data.CLASSES],
                               b"num_cases_per_batch": N_PER_BATCH, b"num_vis": 3072}
    d = root / "cifar-10-batches-py"
    d.mkdir()
    for name, obj in batches.items():
        (d / name).write_bytes(py2_pickle(obj) if name == "test_batch" else pickle.dumps(obj, protocol=2))
    tarball = root / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(d, arcname="cifar-10-batches-py")
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    return {
        "dir": d, "tarball": tarball, "md5": hashlib.md5(tarball.read_bytes()).hexdigest(),
        "raw_train": np.concatenate([b[b"data"] for b in train]),
        "y_train": np.concatenate([b[b"labels"] for b in train]),
        "raw_test": batches["test_batch"][b"data"], "y_test": np.array(batches["test_batch"][b"labels"]),
    }


def expected_hwc(raw):
    """Official rows are R plane, G plane, B plane (1024 each, row-major): pixel (h, w, c) is
    raw[c * 1024 + h * 32 + w]."""
    n = len(raw)
    out = np.empty((n, 32, 32, 3), np.uint8)
    for c in range(3):
        out[..., c] = raw[:, c * 1024:(c + 1) * 1024].reshape(n, 32, 32)
    return out


def check_fake(ds, fake):
    assert ds.x_train.shape == (5 * N_PER_BATCH, 32, 32, 3) and ds.x_test.shape == (N_PER_BATCH, 32, 32, 3)
    for x in (ds.x_train, ds.x_test):
        assert x.dtype == np.uint8 and x.flags.c_contiguous
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train, expected_hwc(fake["raw_train"]))
    np.testing.assert_array_equal(ds.x_test, expected_hwc(fake["raw_test"]))
    raw = fake["raw_train"]
    assert ds.x_train[0, 1, 2, 0] == raw[0, 0 * 1024 + 1 * 32 + 2]
    assert ds.x_train[3, 31, 5, 2] == raw[3, 2 * 1024 + 31 * 32 + 5]
    np.testing.assert_array_equal(ds.y_train, fake["y_train"])
    np.testing.assert_array_equal(ds.y_test, fake["y_test"])
    assert ds.classes == data.CLASSES


def test_official_tarball(fake_cifar):
    ds = data.load_cifar10(fake_cifar["tarball"], md5=fake_cifar["md5"])
    check_fake(ds, fake_cifar)
    assert "cifar10" in ds.source and str(fake_cifar["tarball"]) in ds.source
    check_fake(data.load_cifar10(fake_cifar["tarball"], md5=None), fake_cifar)


def test_extracted_dir_and_parent(fake_cifar):
    check_fake(data.load_cifar10(fake_cifar["dir"]), fake_cifar)
    check_fake(data.load_cifar10(fake_cifar["dir"].parent, md5=fake_cifar["md5"]), fake_cifar)
    check_fake(data.load(str(fake_cifar["dir"])), fake_cifar)


def test_extracted_dir_in_cache_needs_no_download(fake_cifar, cache):
    shutil.copytree(fake_cifar["dir"], cache / "cifar-10-batches-py")
    check_fake(data.load_cifar10(download=False, url="http://127.0.0.1:9/unused"), fake_cifar)


def test_official_tarball_bad_md5_and_truncated(fake_cifar, tmp_path):
    with pytest.raises(DataError, match=r"md5 [0-9a-f]{32} does not match the official c58f"):
        data.load_cifar10(fake_cifar["tarball"])
    cut = tmp_path / "cifar-10-python.tar.gz"
    blob = fake_cifar["tarball"].read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.load_cifar10(cut, md5=None)
    with pytest.raises(DataError, match="does not match"):
        data.load_cifar10(cut)
    cut.write_bytes(b"not a tarball at all")
    with pytest.raises(DataError, match="not a readable tar archive"):
        data.load_cifar10(cut)


class _Hostile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "hostile", "wrong_shape"])
def test_damaged_batches_dir(fake_cifar, tmp_path, damage):
    d = tmp_path / "cifar-10-batches-py"
    shutil.copytree(fake_cifar["dir"], d)
    victim = d / "data_batch_3"
    if damage == "missing":
        victim.unlink()
    elif damage == "garbage":
        victim.write_bytes(b"\x80\x02garbage" * 10)
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:1000])
    elif damage == "hostile":  # a pickle that would call os.mkdir when loaded
        victim.write_bytes(pickle.dumps(_Hostile(tmp_path / "pwned"), protocol=2))
    else:
        victim.write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, protocol=2))
    with pytest.raises(DataError, match="data_batch_3") as info:
        data.load_cifar10(d)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "pwned").exists()  # batches are unpickled without importing anything else


def test_nothing_there(tmp_path, cache):
    with pytest.raises(DataError, match="does not exist.*cifar10-jpeg.tar.gz"):
        data.load_cifar10(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CIFAR-10 data at .*expected cifar-10-python.tar.gz"):
        data.load_cifar10(tmp_path / "empty")
    with pytest.raises(DataError, match="not in the cache directory .*cifar10-jpeg.tar.gz"):
        data.load_cifar10(download=False)
    with pytest.raises(DataError, match="unknown dataset"):
        data.load(dataset="mnist")


def test_cache_dir(monkeypatch, tmp_path):
    assert data.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("PYREGNET_DATA")
    assert data.cache_dir() == Path.home() / ".cache" / "pyregnet"


# ---------------------------------------------------------------------------------------------
# download, from a local server


@pytest.fixture
def http_server(monkeypatch):
    """start(body, mode) serves body at /cifar-10-python.tar.gz on 127.0.0.1 (mode 'ok',
    'truncated': Content-Length 1000 bytes more than half the body it sends, '404'); returns
    (url, state) where state['requests'] counts GETs. Each server answers at most 4 requests
    (503 after), lives at most 30 s, and is shut down when the test ends."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setattr(data, "_DOWNLOAD_TIMEOUT", 5.0)
    servers = []

    def start(body, mode="ok"):
        state = {"requests": 0}

        class Handler(BaseHTTPRequestHandler):
            timeout = 5

            def log_message(self, *args):
                pass

            def do_GET(self):
                state["requests"] += 1
                if state["requests"] > 4:
                    self.send_error(503)
                elif mode == "404" or self.path != "/cifar-10-python.tar.gz":
                    self.send_error(404)
                else:
                    sent = body if mode == "ok" else body[: len(body) // 2]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body) + (1000 if mode == "truncated" else 0)))
                    self.end_headers()
                    self.wfile.write(sent)

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        watchdog = threading.Timer(30.0, srv.shutdown)
        watchdog.daemon = True
        watchdog.start()
        servers.append((srv, thread, watchdog))
        return f"http://127.0.0.1:{srv.server_address[1]}/cifar-10-python.tar.gz", state

    yield start
    for srv, thread, watchdog in servers:
        watchdog.cancel()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_download_good_then_cached(fake_cifar, http_server, cache):
    body = fake_cifar["tarball"].read_bytes()
    url, state = http_server(body)
    calls = []
    ds = data.load_cifar10(url=url, md5=fake_cifar["md5"], progress=lambda done, total: calls.append((done, total)))
    check_fake(ds, fake_cifar)
    assert state["requests"] == 1
    assert leftovers(cache) == ["cifar-10-python.tar.gz"]
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == body
    assert calls[0] == (0, len(body)) and calls[-1] == (len(body), len(body))
    check_fake(data.load_cifar10(url=url, md5=fake_cifar["md5"]), fake_cifar)
    assert state["requests"] == 1  # second call: from the cache, no request
    # the cached copy gets damaged later: a clear error, not a crash
    (cache / "cifar-10-python.tar.gz").write_bytes(body[:100])
    with pytest.raises(DataError, match="does not match.*delete it and run again"):
        data.load_cifar10(url=url, md5=fake_cifar["md5"])


def test_download_bad_checksum(fake_cifar, http_server, cache):
    url, state = http_server(fake_cifar["tarball"].read_bytes())
    with pytest.raises(DataError, match="md5 .* does not match the expected 0{32}.*nothing was kept"):
        data.load_cifar10(url=url, md5="0" * 32)
    assert state["requests"] == 1 and leftovers(cache) == []


def test_download_truncated(fake_cifar, http_server, cache):
    url, state = http_server(fake_cifar["tarball"].read_bytes(), mode="truncated")
    with pytest.raises(DataError, match="cut short"):
        data.load_cifar10(url=url, md5=fake_cifar["md5"])
    assert state["requests"] == 1 and leftovers(cache) == []


def test_download_404(http_server, cache):
    url, state = http_server(b"", mode="404")
    with pytest.raises(DataError, match="HTTP 404.*cifar10-jpeg.tar.gz"):
        data.load_cifar10(url=url)
    assert state["requests"] == 1 and leftovers(cache) == []


def test_download_interrupted(fake_cifar, http_server, cache):
    url, _ = http_server(fake_cifar["tarball"].read_bytes())

    def interrupt(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        data.load_cifar10(url=url, md5=fake_cifar["md5"], progress=interrupt)
    assert leftovers(cache) == []


def test_download_unreachable(cache):
    with pytest.raises(DataError, match="could not download CIFAR-10"):
        data.load_cifar10(url="http://127.0.0.1:1/cifar-10-python.tar.gz")
    assert leftovers(cache) == []


# ---------------------------------------------------------------------------------------------
# image folders


CLASS_DIRS = ("zebra", "ant", "moose")  # created unsorted: labels are ant 0, moose 1, zebra 2
FILES = {"train": ("b.png", "a.png", "c.png"), "test": ("x.png",)}


@pytest.fixture
def tree(tmp_path):
    """train/<class>/{a,b,c}.png and test/<class>/x.png with random pixels; returns (root,
    expected dataset arrays in load order)."""
    root = tmp_path / "tree"
    rng = np.random.default_rng(7)
    expect = {}
    for split, names in FILES.items():
        xs, ys = [], []
        pix = {}
        for cls in CLASS_DIRS:
            (root / split / cls).mkdir(parents=True)
            for name in names:
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                PIL_Image.fromarray(img).save(root / split / cls / name)
                pix[cls, name] = img
        for label, cls in enumerate(sorted(CLASS_DIRS)):
            for name in sorted(names):
                xs.append(pix[cls, name])
                ys.append(label)
        expect[split] = (np.stack(xs), np.array(ys))
    (root / "train" / "ant" / "notes.txt").write_text("not an image, skipped")
    (root / "train" / "ant" / ".hidden.png").write_bytes(b"skipped too")
    return root, expect


def check_tree(ds, expect):
    assert ds.classes == ("ant", "moose", "zebra")
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        assert x.dtype == np.uint8 and x.flags.c_contiguous and y.dtype == np.int64
        np.testing.assert_array_equal(x, expect[split][0])
        np.testing.assert_array_equal(y, expect[split][1])


def make_tar(root, dest, wrap=None):
    with tarfile.open(dest, "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(root / split, arcname=f"{wrap}/{split}" if wrap else split)
    return dest


def fail_decode(data_, name):
    raise AssertionError(f"decoder called for {name}: the cache was not used")


def test_image_folder_dir_and_cache(tree, cache, monkeypatch):
    root, expect = tree
    ds = data.load_image_folder(root)
    check_tree(ds, expect)
    assert str(root) in ds.source
    cached = leftovers(cache)
    assert len(cached) == 1 and cached[0].endswith(".npz")
    monkeypatch.setattr(imagefolder, "_decode_image", fail_decode)
    check_tree(data.load_image_folder(root), expect)      # from the cache
    check_tree(data.load_cifar10(root), expect)           # the same source via the CIFAR entry point
    check_tree(data.load(str(root)), expect)
    # a changed file changes the key: decoded again
    f = root / "test" / "ant" / "x.png"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="cache was not used"):
        data.load_image_folder(root)


def _cache_file(cache):
    files = [cache / n for n in leftovers(cache) if n.endswith(".npz")]
    assert len(files) == 1
    return files[0]


def _rewrite_cache(f, **changes):
    with np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(f, **arrays)


@pytest.mark.parametrize("damage", ["label_99", "all_zero", "wrong_dtype", "no_digest", "not_npz"])
def test_damaged_cache_is_decoded_again(tree, cache, damage):
    root, expect = tree
    data.load_image_folder(root)
    f = _cache_file(cache)
    with np.load(f) as z:
        y, x = z["y_train"].copy(), z["x_train"]
        y[0] = 99
        changes = {"label_99": {"y_train": y}, "all_zero": {"x_train": np.zeros_like(x)},
                   "wrong_dtype": {"y_train": z["y_train"].astype(np.int32)}, "no_digest": {"digest": np.array("")},
                   "not_npz": None}[damage]
    if changes is None:
        f.write_bytes(b"PK\x03\x04 not a zip")
    else:
        _rewrite_cache(f, **changes)
    with pytest.warns(RuntimeWarning, match="not usable"):
        check_tree(data.load_image_folder(root), expect)
    check_tree(data.load_image_folder(root), expect)       # the cache was rewritten: no warning now


def _swap_same_size(path, pixels, stamp=None):
    """Writes `pixels` as a BMP (its size depends only on the image size) and restores the mtime."""
    PIL_Image.fromarray(pixels).save(path, format="BMP")
    if stamp is not None:
        os.utime(path, ns=stamp)


def test_same_size_replacement_with_mtime_restored_is_seen(tree, tmp_path, cache):
    root, _ = tree
    rng = np.random.default_rng(3)
    old, new = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))
    f = root / "train" / "zebra" / "z.bmp"          # the last training image
    _swap_same_size(f, old)
    stamp = (f.stat().st_atime_ns, f.stat().st_mtime_ns)
    tarball = tmp_path / "images.tar"               # uncompressed: its size follows the members' sizes
    for source in (root, tarball):
        if source == tarball:
            _swap_same_size(f, old, stamp)
            make_plain_tar(root, tarball)
        np.testing.assert_array_equal(data.load_image_folder(source).x_train[-1], old)
        size, tar_stamp = source.stat().st_size, (source.stat().st_atime_ns, source.stat().st_mtime_ns)
        _swap_same_size(f, new, stamp)
        if source == tarball:
            make_plain_tar(root, tarball)
            os.utime(tarball, ns=tar_stamp)
        assert source.stat().st_size == size and f.stat().st_mtime_ns == stamp[1]
        np.testing.assert_array_equal(data.load_image_folder(source).x_train[-1], new)


def make_plain_tar(root, dest):
    with tarfile.open(dest, "w") as tf:
        for split in ("train", "test"):
            tf.add(root / split, arcname=split)


def test_eleven_classes_are_refused_before_decoding(tree, cache, monkeypatch):
    root, _ = tree
    for split in ("train", "test"):
        shutil.copytree(root / split / "ant", root / split / "aardvark")
    monkeypatch.setattr(imagefolder, "_decode_image", fail_decode)
    with pytest.raises(DataError, match=r"has 4 classes \(aardvark, ant, moose, zebra\) but the network has 3"):
        data.load(str(root), n_classes=3)
    tarball = make_tar(root, tree[0].parent / "four.tar.gz")
    with pytest.raises(DataError, match="has 4 classes"):
        data.load(str(tarball), n_classes=3)


def test_unreadable_class_folder_is_one_line(tree, monkeypatch):
    root, _ = tree
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith(os.path.join("train", "moose")):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(imagefolder.os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot read the folder .*train/moose \(Permission denied\)") as info:
        data.load_image_folder(root)
    assert "\n" not in str(info.value)


def test_image_folder_no_cache(tree, cache):
    check_tree(data.load_image_folder(tree[0], cache=False), tree[1])
    assert leftovers(cache) == []


@pytest.mark.parametrize("wrap", [None, "cifar10"], ids=["flat", "wrapped"])
def test_image_folder_tarball(tree, tmp_path, cache, monkeypatch, wrap):
    root, expect = tree
    tarball = make_tar(root, tmp_path / "images.tar.gz", wrap)
    ds = data.load_cifar10(tarball)
    check_tree(ds, expect)
    assert str(tarball) in ds.source
    monkeypatch.setattr(imagefolder, "_decode_image", fail_decode)
    check_tree(data.load_image_folder(tarball), expect)
    assert len([n for n in leftovers(cache) if n.endswith(".npz")]) == 1
    assert not [n for n in leftovers(cache) if n.endswith(".part")]


def test_wrapped_dir(tree, tmp_path):
    outer = tmp_path / "outer"
    outer.mkdir()
    shutil.move(str(tree[0]), outer / "cifar10")
    check_tree(data.load_cifar10(outer), tree[1])


def _write_bad(root, kind):
    if kind == "wrong_size":
        PIL_Image.fromarray(np.zeros((32, 33, 3), np.uint8)).save(root / "train" / "moose" / "big.png")
        return "big.png.*33x32"
    if kind == "corrupt":
        (root / "train" / "moose" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
        return "bad.jpg.*not a readable image"
    if kind == "truncated":
        f = root / "test" / "zebra" / "x.png"
        f.write_bytes(f.read_bytes()[:200])
        return "x.png.*not a readable image"
    if kind == "no_test":
        shutil.rmtree(root / "test")
        return "no test/ folder"
    if kind == "mismatch":
        (root / "test" / "zebra").rename(root / "test" / "zebras")
        return r"different class folders.*only in train/: \['zebra'\]; only in test/: \['zebras'\]"
    if kind == "empty_class":
        shutil.rmtree(root / "test" / "moose")
        (root / "test" / "moose").mkdir()
        return "test/moose/ has no images"
    raise ValueError(kind)


BAD_KINDS = ["wrong_size", "corrupt", "truncated", "no_test", "mismatch", "empty_class"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_image_folder_errors(tree, cache, kind):
    root, _ = tree
    pattern = _write_bad(root, kind)
    with pytest.raises(DataError, match=pattern) as info:
        data.load_image_folder(root)
    assert "\n" not in str(info.value)
    assert not [n for n in leftovers(cache) if not n.endswith(".npz")]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_image_folder_tarball_errors(tree, tmp_path, kind):
    root, _ = tree
    pattern = _write_bad(root, kind)
    tarball = tmp_path / "bad.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        for split in ("train", "test"):
            if (root / split).exists():
                tf.add(root / split, arcname=split)
    with pytest.raises(DataError, match=pattern):
        data.load_cifar10(tarball)


def test_image_folder_truncated_tarball(tree, tmp_path):
    blob = make_tar(tree[0], tmp_path / "images.tar.gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(blob[: len(blob) * 2 // 3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.load_image_folder(cut)


# ---------------------------------------------------------------------------------------------
# synthetic, load()


def nearest_mean_accuracy(train, test):
    k = len(train.classes)
    means = np.stack([train.x_train[train.y_train == c].reshape(-1, 3072).mean(0) for c in range(k)])
    x = test.x_test.reshape(len(test.x_test), -1).astype(np.float64)
    d = (x ** 2).sum(1)[:, None] - 2 * x @ means.T + (means ** 2).sum(1)[None, :]
    return float((d.argmin(1) == test.y_test).mean())


def test_synthetic():
    a = data.synthetic(1000, 300, seed=0)
    assert a.x_train.shape == (1000, 32, 32, 3) and a.x_test.shape == (300, 32, 32, 3)
    assert a.x_train.dtype == np.uint8 and a.y_train.dtype == np.int64 and a.x_train.flags.c_contiguous
    assert a.classes == data.CLASSES and a.source == "synthetic (seed 0)"
    for y in (a.y_train, a.y_test):
        assert set(np.unique(y)) == set(range(10))
    b = data.synthetic(1000, 300, seed=0)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = data.synthetic(1000, 300, seed=1)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.x_train.std() > 20  # not a constant image
    acc = nearest_mean_accuracy(a, a)
    cross = nearest_mean_accuracy(a, c)  # class patterns do not depend on the seed
    print(f"synthetic nearest-class-mean accuracy {acc:.3f} (same seed), {cross:.3f} (other seed)")
    assert acc > 0.5 and cross > 0.5
    small = data.synthetic(10, 3, seed=2, classes=3)
    assert small.classes == ("class0", "class1", "class2") and set(small.y_train) == {0, 1, 2}
    with pytest.raises(ValueError):
        data.synthetic(0)


def test_load_subsets(monkeypatch):
    memo = functools.lru_cache(data.synthetic)  # generate each seed's set once in this test
    monkeypatch.setattr(data, "synthetic", lambda *args, **kwargs: memo(*args, **kwargs))
    full = data.load(dataset="synthetic", seed=3)
    assert full.x_train.shape == (5000, 32, 32, 3) and full.x_test.shape == (1000, 32, 32, 3)
    a = data.load(dataset="synthetic", seed=3, train_size=200, val_size=50)
    b = data.load(dataset="synthetic", seed=3, train_size=200, val_size=50)
    assert a.x_train.shape == (200, 32, 32, 3) and a.x_test.shape == (50, 32, 32, 3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert np.bincount(a.y_train, minlength=10).min() >= 8  # roughly balanced
    # the subset is a set of rows of the full split, with their own labels
    rows = {r.tobytes(): y for r, y in zip(full.x_train.reshape(5000, -1), full.y_train)}
    assert all(rows[r.tobytes()] == y for r, y in zip(a.x_train.reshape(200, -1), a.y_train))
    only_train = data.load(dataset="synthetic", seed=3, train_size=5000)
    assert only_train.x_test.shape[0] == 1000 and "train 5000/5000" in only_train.source
    for bad in (0, -1, 5001, True, 2.5):
        with pytest.raises(DataError, match="train_size"):
            data.load(dataset="synthetic", train_size=bad)
    with pytest.raises(DataError, match="val_size .*1000 images"):
        data.load(dataset="synthetic", val_size=1001)


def test_dataset_checks_its_arrays():
    x = np.zeros((2, 32, 32, 3), np.uint8)
    y = np.zeros(2, np.int64)
    assert "train=2" in repr(data.Dataset(x, y, x, y, ("a",), "t"))
    with pytest.raises(ValueError, match="x_test"):
        data.Dataset(x, y, x[:, :16], y, ("a",), "t")
    with pytest.raises(ValueError, match="y_train"):
        data.Dataset(x, y.astype(np.int32), x, y, ("a",), "t")
    with pytest.raises(ValueError, match=r"y_test in \[0, 1\) but got labels from 0 to 99"):
        data.Dataset(x, y, x, np.array([0, 99]), ("a",), "t")


@pytest.mark.skipif(os.environ.get("PYREGNET_TEST_REAL_DATA") != "1" or not REAL_DATA.is_file(),
                    reason="set PYREGNET_TEST_REAL_DATA=1 (and have ../shared/data/cifar10-jpeg.tar.gz) "
                           "to decode the real image-folder copy (~10 s+)")
def test_real_image_folder_copy():
    ds = data.load(str(REAL_DATA))
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    assert ds.classes == data.CLASSES
    assert np.bincount(ds.y_train).tolist() == [5000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    mean = ds.x_train.reshape(-1, 3).mean(0)
    print("per-channel mean", mean)
    assert np.all(np.abs(mean - [125.3, 123.0, 113.9]) < 3)  # CIFAR-10's known channel means
