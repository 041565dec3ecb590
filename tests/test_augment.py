"""The gather + augment kernel: against the reference on every backend, and the properties the
trainer relies on (a flip or a shift moves pixels exactly, draws cover their range, the same
arguments give the same batch, bad input is refused)."""

import numpy as np
import pytest

from conftest import assert_close
from pyregnet import ops
from pyregnet import reference as ref


def images(n=40, h=9, w=11, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (40, 9, 11, 3), (70, 32, 32, 3)], ids=str)
@pytest.mark.parametrize("max_shift, flip", [(0, False), (3, True), (0, True), (2, False)])
def test_against_reference(backend, dtype, shape, max_shift, flip):
    imgs = images(*shape)
    max_shift = min(max_shift, min(shape[1:3]) - 1)
    index = np.random.default_rng(1).integers(0, shape[0], 65)
    got = ops.augment_batch(backend.to_device(imgs), backend.to_device(index), seed=3, step=17,
                            max_shift=max_shift, flip=flip, dtype=dtype)
    assert got.dtype == dtype and got.shape == (65, shape[3], shape[1], shape[2])
    want = ref.augment_batch(imgs, index, seed=3, step=17, max_shift=max_shift, flip=flip)
    assert_close(backend.to_host(got), want, dtype, "batch")


def test_plain_gather_scales_to_unit_interval(backend):
    imgs = images()
    index = np.array([5, 0, 39, 5])
    got = backend.to_host(ops.augment_batch(backend.to_device(imgs), backend.to_device(index), seed=0, step=0,
                                            max_shift=0, flip=False, dtype="float64"))
    np.testing.assert_array_equal(got, imgs[index].transpose(0, 3, 1, 2) / 255.0)


def test_flip_mirrors_exactly(backend):
    imgs = images()
    index = np.arange(40)
    got = backend.to_host(ops.augment_batch(backend.to_device(imgs), backend.to_device(index), seed=1, step=2,
                                            max_shift=0, flip=True, dtype="float64"))
    _, _, flips = ref.augment_draws(1, 2, 40, 0, True)
    assert 0 < flips.sum() < 40  # both outcomes occur in this batch
    plain = imgs.transpose(0, 3, 1, 2) / 255.0
    for b in range(40):
        np.testing.assert_array_equal(got[b], plain[b][:, :, ::-1] if flips[b] else plain[b])


def test_shift_moves_content_exactly(backend):
    imgs = images(h=16, w=16)
    index = np.arange(40)
    got = backend.to_host(ops.augment_batch(backend.to_device(imgs), backend.to_device(index), seed=9, step=4,
                                            max_shift=3, flip=False, dtype="float64"))
    dy, dx, _ = ref.augment_draws(9, 4, 40, 3, False)
    plain = imgs.transpose(0, 3, 1, 2) / 255.0
    for b in range(40):
        # Content moves by (dy, dx): out[h, w] = in[h - dy, w - dx] wherever that is inside.
        h0, w0 = max(dy[b], 0), max(dx[b], 0)
        h1, w1 = 16 + min(dy[b], 0), 16 + min(dx[b], 0)
        np.testing.assert_array_equal(got[b][:, h0:h1, w0:w1], plain[b][:, h0 - dy[b]:h1 - dy[b], w0 - dx[b]:w1 - dx[b]])
        # Rows shifted in from outside repeat the edge row ("nearest" fill).
        if dy[b] > 0:
            np.testing.assert_array_equal(got[b][:, :dy[b], w0:w1], np.repeat(got[b][:, dy[b]:dy[b] + 1, w0:w1], dy[b], axis=1))


def test_draws_cover_their_range_and_depend_on_seed_and_step():
    dy, dx, flips = ref.augment_draws(0, 0, 20000, 3, True)
    assert set(dy) == set(range(-3, 4)) and set(dx) == set(range(-3, 4))
    for values in (dy, dx):
        counts = np.bincount(values + 3)
        assert counts.min() > 0.9 * 20000 / 7 and counts.max() < 1.1 * 20000 / 7
    assert 0.47 < flips.mean() < 0.53
    assert not np.array_equal(ref.augment_draws(0, 1, 64, 3, True)[0], ref.augment_draws(0, 0, 64, 3, True)[0])
    assert not np.array_equal(ref.augment_draws(1, 0, 64, 3, True)[0], ref.augment_draws(0, 0, 64, 3, True)[0])


def test_same_arguments_same_batch(backend):
    imgs, index = images(), np.arange(40)
    args = (backend.to_device(imgs), backend.to_device(index))
    a = backend.to_host(ops.augment_batch(*args, seed=7, step=1))
    b = backend.to_host(ops.augment_batch(*args, seed=7, step=1))
    c = backend.to_host(ops.augment_batch(*args, seed=7, step=2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(images=images().astype(np.float32)), TypeError, r"images: expected uint8"),
    (dict(images=images()[0]), ValueError, r"images: expected a 4-d array"),
    (dict(index=np.array([0, 40])), ValueError, r"index: expected sample indices in \[0, 40\) but 1 of 2"),
    (dict(index=np.array([-1])), ValueError, r"index: expected sample indices"),
    (dict(index=np.array([0.0])), TypeError, r"index: expected an integer dtype"),
    (dict(max_shift=9), ValueError, r"max_shift: expected a shift smaller than the image"),
    (dict(max_shift=-1), ValueError, r"max_shift: expected an integer >= 0"),
    (dict(flip=1), TypeError, r"flip: expected True or False"),
    (dict(dtype="float16"), TypeError, r"dtype: expected float32 or float64"),
    (dict(seed=-1), ValueError, r"seed: expected an integer >= 0"),
    (dict(step=1.5), TypeError, r"step: expected an integer"),
])
def test_bad_input(kwargs, exc, pattern):
    args = dict(images=images(), index=np.array([0, 1]), seed=0, step=0)
    args.update(kwargs)
    with pytest.raises(exc, match=r"^augment_batch: " + pattern):
        ops.augment_batch(**args)
