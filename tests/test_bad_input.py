"""Bad input to every op of pyregnet.ops: it never crashes the interpreter and never passes
silently. Each bad call raises TypeError (wrong kind of thing: not an array, wrong dtype, wrong
scalar type) or ValueError (wrong value: shape, rank, range, contiguity, writability, aliasing),
and the message names the op and the argument: "<op>: <arg>: expected ... but got ...".

A failed call must also leave every array argument untouched (no partial writes; this matters
for adam_update, which updates param, m and v in place), and the module must keep working.

The "regression" cases at the end once crashed or passed silently: partial overlap of arrays
written in place, NumPy masked arrays, huge or array-valued scalars, output sizes that overflow
int64, an __index__ that raises, malformed __cuda_array_interface__ dicts.
"""

import contextlib
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pyregnet
from pyregnet import ops
from pyregnet import reference as ref

INFO = pyregnet.build_info()
# The float ops. augment_batch (uint8 images, integer indices) has its bad-input cases in
# tests/test_augment.py.
OPS = [op for op in ops.__all__ if op not in ("augment_batch", "take")]


# --------------------------------------------------------------------------
# Valid arguments for every op (keyword form; small fixed shapes)
# --------------------------------------------------------------------------

def good(op, dtype=np.float32):
    """A fresh, valid set of keyword arguments for `op`."""
    rng = np.random.default_rng(sum(op.encode()))  # stable across processes (no str hash)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    if op == "conv2d_forward":
        return dict(x=r(2, 3, 5, 6), w=r(4, 3, 3, 3), b=r(4), padding=1)
    if op == "conv2d_backward":
        return dict(x=r(2, 3, 5, 6), w=r(4, 3, 3, 3), dy=r(2, 4, 5, 6), padding=1)
    if op == "maxpool2d_forward":
        return dict(x=r(2, 3, 4, 6))
    if op == "maxpool2d_backward":
        return dict(x=r(2, 3, 5, 6), dy=r(2, 3, 2, 3))
    if op == "relu_forward":
        return dict(x=r(2, 3, 4))
    if op == "relu_backward":
        return dict(y=r(2, 3, 4), dy=r(2, 3, 4))
    if op == "dense_forward":
        return dict(x=r(2, 5), w=r(3, 5), b=r(3))
    if op == "dense_backward":
        return dict(x=r(2, 5), w=r(3, 5), dy=r(2, 3))
    if op == "softmax_cross_entropy":
        return dict(logits=r(4, 3), labels=np.array([0, 2, 1, 2], dtype=np.int64))
    if op == "penalty":
        return dict(w=r(3, 4), l1=0.1, l2=0.2)
    if op == "penalty_gradient":
        return dict(w=r(3, 4), grad=r(3, 4), l1=0.1, l2=0.2)
    if op == "adam_update":
        return dict(param=r(10), grad=r(10), m=r(10) * 0.1, v=np.abs(r(10)) * 0.1, step=1, lr=1e-3)
    if op == "sgd_update":
        return dict(param=r(10), grad=r(10), velocity=r(10) * 0.1, lr=1e-2)
    if op == "sparsity_count":
        return dict(w=r(3, 4), threshold=0.1)
    if op == "batchnorm_forward":
        return dict(x=r(2, 3, 4, 5), gamma=r(3), beta=r(3), running_mean=r(3), running_var=np.abs(r(3)) + 0.5)
    if op == "batchnorm_backward":
        return dict(x=r(2, 3, 4, 5), gamma=r(3), dy=r(2, 3, 4, 5), mean=r(3), invstd=np.abs(r(3)) + 0.5)
    if op == "global_avgpool_forward":
        return dict(x=r(2, 3, 4, 5))
    if op == "global_avgpool_backward":
        return dict(x=r(2, 3, 4, 5), dy=r(2, 3))
    if op == "residual_add_forward":
        return dict(main=r(2, 6, 2, 3), x=r(2, 3, 4, 5), stride=2)
    if op == "residual_add_backward":
        return dict(dy=r(2, 6, 2, 3), grad=r(2, 3, 4, 5), stride=2)
    raise AssertionError(op)


# Float array arguments of each op, in the order the bindings check them.
FLOAT_ARGS = {
    "conv2d_forward": ["x", "w", "b"],
    "conv2d_backward": ["x", "w", "dy"],
    "maxpool2d_forward": ["x"],
    "maxpool2d_backward": ["x", "dy"],
    "relu_forward": ["x"],
    "relu_backward": ["y", "dy"],
    "dense_forward": ["x", "w", "b"],
    "dense_backward": ["x", "w", "dy"],
    "softmax_cross_entropy": ["logits"],
    "penalty": ["w"],
    "penalty_gradient": ["w", "grad"],
    "adam_update": ["param", "grad", "m", "v"],
    "sgd_update": ["param", "grad", "velocity"],
    "sparsity_count": ["w"],
    "batchnorm_forward": ["x", "gamma", "beta", "running_mean", "running_var"],
    "batchnorm_backward": ["x", "gamma", "dy", "mean", "invstd"],
    "global_avgpool_forward": ["x"],
    "global_avgpool_backward": ["x", "dy"],
    "residual_add_forward": ["main", "x"],
    "residual_add_backward": ["dy", "grad"],
}
ARRAY_ARGS = {op: FLOAT_ARGS[op] + (["labels"] if op == "softmax_cross_entropy" else []) for op in OPS}
# arrays a kernel writes into (batch norm's running statistics in training mode, the default)
WRITTEN = {"adam_update": ["param", "m", "v"], "sgd_update": ["param", "velocity"], "penalty_gradient": ["grad"],
           "batchnorm_forward": ["running_mean", "running_var"]}
UPDATES = ("adam_update", "sgd_update")
assert set(FLOAT_ARGS) == set(OPS)


def build(op, overrides, dtype=np.float32):
    """good(op) with overrides; an override that is callable gets the good arguments."""
    kw = good(op, dtype)
    base = dict(kw)
    for k, val in overrides.items():
        kw[k] = val(base) if callable(val) else val
    return kw


def snapshot(kw):
    return {k: (v.copy(), v.dtype, v.shape) for k, v in kw.items() if isinstance(v, np.ndarray)}


def assert_unchanged(kw, snap):
    for k, (copy, dtype, shape) in snap.items():
        now = kw[k]
        assert now.dtype == dtype and now.shape == shape, k
        assert np.array_equal(now, copy, equal_nan=now.dtype.kind in "fc"), f"{k} was written"


def expect_error(op, overrides, exc, pattern, dtype=np.float32):
    """The call with `overrides` raises `exc` matching `pattern` and writes nothing. (That the
    valid arguments work is test_good_input_runs; that the module still works after all the
    errors is test_good_input_still_runs_at_the_end.)"""
    kw = build(op, overrides, dtype)
    snap = snapshot(kw)
    with pytest.raises(exc, match=pattern) as info:
        getattr(ops, op)(**kw)
    assert type(info.value) is exc, f"{type(info.value).__name__}: {info.value}"
    assert_unchanged(kw, snap)
    return info.value


@contextlib.contextmanager
def variant(name):
    """Prefixes a failure inside a loop of variants with the variant's name."""
    try:
        yield
    except (Exception, pytest.fail.Exception) as e:
        raise AssertionError(f"[{name}] {type(e).__name__}: {e}") from e


def p(op, overrides, exc, pattern, id):
    return pytest.param(op, overrides, exc, pattern, id=f"{op}-{id}")


# --------------------------------------------------------------------------
# Sanity: the valid calls succeed (so no error test passes vacuously)
# --------------------------------------------------------------------------

def check_good_result(op, kw, out):
    if op == "conv2d_forward":
        np.testing.assert_allclose(out, ref.conv2d_forward(kw["x"], kw["w"], kw["b"], kw["padding"]),
                                   rtol=1e-4, atol=1e-4)
    elif op == "conv2d_backward":
        assert [a.shape for a in out] == [kw["x"].shape, kw["w"].shape, (kw["w"].shape[0],)]
    elif op == "maxpool2d_forward":
        np.testing.assert_array_equal(out, ref.maxpool2d_forward(kw["x"]))
    elif op == "maxpool2d_backward":
        assert out.shape == kw["x"].shape
    elif op == "relu_forward":
        np.testing.assert_array_equal(out, np.maximum(kw["x"], 0))
    elif op == "relu_backward":
        assert out.shape == kw["y"].shape
    elif op == "dense_forward":
        np.testing.assert_allclose(out, ref.dense_forward(kw["x"], kw["w"], kw["b"]), rtol=1e-5, atol=1e-5)
    elif op == "dense_backward":
        assert [a.shape for a in out] == [kw["x"].shape, kw["w"].shape, (kw["w"].shape[0],)]
    elif op == "softmax_cross_entropy":
        loss, d, correct = out
        rloss, rd, rcorrect = ref.softmax_cross_entropy(kw["logits"], kw["labels"])
        assert abs(loss - rloss) < 1e-5 and correct == rcorrect and d.shape == rd.shape
    elif op == "penalty":
        assert out == pytest.approx(ref.penalty(kw["w"], kw["l1"], kw["l2"]), rel=1e-5)
    elif op in UPDATES:
        assert out is None
    elif op == "penalty_gradient":
        assert out is None  # with_penalty=False; the gradient itself is checked in test_ops
    elif op == "sparsity_count":
        assert out == ref.sparsity_count(kw["w"], kw["threshold"])
    elif op == "batchnorm_forward":  # training: the running statistics do not enter the results
        want = ref.batchnorm_forward(kw["x"], kw["gamma"], kw["beta"], kw["running_mean"], kw["running_var"])
        for got, exp in zip(out, want[:3]):
            np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-5)
    elif op == "batchnorm_backward":
        want = ref.batchnorm_backward(kw["x"], kw["gamma"], kw["dy"], kw["mean"], kw["invstd"])
        for got, exp in zip(out, want):
            np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4)
    elif op == "global_avgpool_forward":
        np.testing.assert_allclose(out, ref.global_avgpool_forward(kw["x"]), rtol=1e-5, atol=1e-6)
    elif op == "global_avgpool_backward":
        np.testing.assert_allclose(out, ref.global_avgpool_backward(kw["x"], kw["dy"]), rtol=1e-6)
    elif op == "residual_add_forward":
        np.testing.assert_allclose(out, ref.residual_add_forward(kw["main"], kw["x"], kw["stride"]), rtol=1e-6)
    elif op == "residual_add_backward":
        np.testing.assert_allclose(out, ref.residual_add_backward(kw["dy"], kw["grad"], kw["stride"]), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", OPS)
def test_good_input_runs(op, dtype):
    kw = good(op, dtype)
    before = snapshot(kw)
    out = getattr(ops, op)(**kw)
    check_good_result(op, kw, out)
    if op in UPDATES:
        assert not np.array_equal(kw["param"], before["param"][0])  # it did update in place
    elif op == "penalty_gradient":
        assert not np.array_equal(kw["grad"], before["grad"][0])
    elif op == "batchnorm_forward":
        assert not np.array_equal(kw["running_mean"], before["running_mean"][0])
        assert not np.array_equal(kw["running_var"], before["running_var"][0])
    else:
        assert_unchanged(kw, before)  # inputs are only read


@pytest.mark.parametrize("op", OPS)
def test_read_only_inputs_are_accepted(op):
    # Every array the kernel only reads may be read-only: adam's grad included.
    kw = good(op)
    for name in ARRAY_ARGS[op]:
        if name not in WRITTEN.get(op, []):
            kw[name].flags.writeable = False
    param0 = kw.get("param", np.zeros(0)).copy()
    getattr(ops, op)(**kw)
    if op in UPDATES:
        assert not np.array_equal(kw["param"], param0)


def test_good_scalar_spellings_are_accepted():
    kw = good("conv2d_forward")
    assert ops.conv2d_forward(kw["x"], kw["w"], kw["b"], np.int64(1)).shape == (2, 4, 5, 6)
    assert ops.conv2d_forward(kw["x"], kw["w"], kw["b"], 0).shape == (2, 4, 3, 4)
    assert ops.conv2d_forward(kw["x"], kw["w"], kw["b"], 1, stride=np.int64(2)).shape == (2, 4, 3, 3)
    assert ops.conv2d_forward(kw["x"], kw["w"], kw["b"], 1, stride=3).shape == (2, 4, 2, 2)
    assert ops.conv2d_forward(kw["x"], kw["w"], kw["b"], 1, stride=2**31 - 1).shape == (2, 4, 1, 1)
    kw = good("adam_update")
    ops.adam_update(kw["param"], kw["grad"], kw["m"], kw["v"], step=np.int32(3), lr=np.float32(1e-3),
                    beta1=0, beta2=0.5, eps=1, l1=np.float64(0.1), l2=1, penalized=np.int64(10))
    ops.adam_update(kw["param"], kw["grad"], kw["m"], kw["v"], step=2**62, lr=1, penalized=0)
    assert np.isfinite(kw["param"]).all()
    w = good("penalty")["w"]
    assert ops.penalty(w, 0, 0) == 0.0
    assert ops.sparsity_count(w, 0) == 0 and ops.sparsity_count(w, 1e9) == w.size


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64,
                                   np.uint8, np.uint16, np.uint32, np.uint64])
def test_any_integer_label_dtype_is_accepted(dtype):
    kw = good("softmax_cross_entropy")
    loss, _, _ = ops.softmax_cross_entropy(kw["logits"], kw["labels"].astype(dtype))
    assert loss == pytest.approx(ref.softmax_cross_entropy(kw["logits"], kw["labels"])[0], rel=1e-5)


def test_batchnorm_evaluation_only_reads_the_running_statistics():
    kw = good("batchnorm_forward", np.float64)
    want = ref.batchnorm_forward(**kw, training=False)
    kw["running_mean"], kw["running_var"] = ro(kw["running_mean"]), ro(kw["running_var"])
    for got, exp in zip(ops.batchnorm_forward(**kw, training=False), want):
        np.testing.assert_allclose(got, exp, rtol=1e-12)


def test_empty_arrays_where_any_shape_is_allowed():
    e = np.zeros((0, 3), np.float32)
    assert ops.relu_forward(e).shape == (0, 3)
    assert ops.relu_backward(e, e).shape == (0, 3)
    assert ops.penalty(e, 1.0, 1.0) == 0.0
    assert ops.sparsity_count(e, 0.5) == 0
    assert ops.adam_update(e, e.copy(), e.copy(), e.copy(), step=1, lr=0.1) is None


def test_odd_pool_input_is_floored_not_an_error():
    assert ops.maxpool2d_forward(np.ones((1, 1, 3, 5), np.float32)).shape == (1, 1, 1, 2)


def test_infinite_threshold_counts_everything_or_is_rejected():
    w = good("sparsity_count")["w"]
    try:
        assert ops.sparsity_count(w, float("inf")) == w.size
    except ValueError as e:
        assert re.match(r"sparsity_count: threshold: expected", str(e))


def test_unaligned_arrays_work_or_are_rejected():
    # A float32 view at an odd byte offset: C-contiguous but not aligned. Kernels that assume
    # alignment could fault; the call must give the aligned answer or raise naming the argument.
    def unaligned(a):
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = buf[1:].view(a.dtype).reshape(a.shape)
        u[...] = a
        assert not u.flags.aligned and u.flags.c_contiguous
        return u

    for op in OPS:
        kw = good(op)
        expected = getattr(ops, op)(**good(op))
        kw = {k: unaligned(v) if k in FLOAT_ARGS[op] else v for k, v in kw.items()}
        try:
            out = getattr(ops, op)(**kw)
        except (TypeError, ValueError) as e:
            assert re.match(rf"{op}: \w+: expected", str(e)), str(e)
            continue
        if op in WRITTEN:  # in place: compare what was written
            ref_kw = good(op)
            getattr(ops, op)(**ref_kw)
            for k in WRITTEN[op]:
                np.testing.assert_allclose(kw[k], ref_kw[k], rtol=1e-6)
        else:
            outs = out if isinstance(out, tuple) else (out,)
            exps = expected if isinstance(expected, tuple) else (expected,)
            for o, e in zip(outs, exps):
                np.testing.assert_allclose(o, e, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Arrays: kind, dtype, contiguity (every array argument of every op)
# --------------------------------------------------------------------------

FLOAT_CASES = [(op, a) for op in OPS for a in FLOAT_ARGS[op]]
ARRAY_CASES = [(op, a) for op in OPS for a in ARRAY_ARGS[op]]


BAD_FLOAT_DTYPES = ["int32", "int64", "uint8", "float16", "bool", "complex64", ">f4", ">f8", "object"]


@pytest.mark.parametrize("op,arg", FLOAT_CASES)
def test_wrong_float_dtype_is_type_error(op, arg):
    for bad in BAD_FLOAT_DTYPES:
        with variant(bad):
            got = re.escape(str(np.dtype(bad)))
            expect_error(op, {arg: lambda a: a[arg].astype(bad)}, TypeError,
                         rf"^{op}: {arg}: expected float32 or float64 but got {got}")


@pytest.mark.parametrize("op,arg", ARRAY_CASES)
def test_not_an_array_is_type_error(op, arg):
    kinds = {"list": lambda a: a[arg].tolist(), "None": None, "float": 1.0,
             "numpy-scalar": np.float32(1.0), "string": "x", "memoryview": lambda a: memoryview(a[arg])}
    for kind, make in kinds.items():
        with variant(kind):
            expect_error(op, {arg: make}, TypeError, rf"^{op}: {arg}: expected a NumPy array or a CUDA array")


MIXED_CASES = [(op, i) for op in OPS for i in range(len(FLOAT_ARGS[op])) if len(FLOAT_ARGS[op]) > 1]


@pytest.mark.parametrize("op,i", MIXED_CASES)
def test_mixed_float32_float64_is_type_error(op, i):
    names = FLOAT_ARGS[op]
    arg = names[i]
    if i == 0:  # the first array sets the dtype: the second one is blamed
        blamed, want, got = names[1], "float64", "float32"
    else:
        blamed, want, got = arg, "float32", "float64"
    expect_error(op, {arg: lambda a: a[arg].astype(np.float64)}, TypeError,
                 rf"^{op}: {blamed}: expected {want} like {names[0]} .*but got {got}")


def every_other(a):  # same shape and values, last axis with stride 2
    return np.repeat(a, 2, axis=-1)[..., ::2]


def reversed_view(a):  # same shape and values, negative stride on the first axis
    return a[::-1].copy()[::-1]


NONCONTIG = {"every-other": every_other, "reversed": reversed_view, "fortran": np.asfortranarray}


@pytest.mark.parametrize("op,arg", ARRAY_CASES)
def test_non_contiguous_is_value_error(op, arg):
    a = good(op)[arg]
    for view, make in NONCONTIG.items():
        if view == "fortran" and a.ndim < 2:
            continue  # a 1-d array is both C- and Fortran-contiguous
        with variant(view):
            v = make(a)
            assert v.shape == a.shape and not v.flags.c_contiguous
            np.testing.assert_array_equal(v, a)
            expect_error(op, {arg: v}, ValueError, rf"^{op}: {arg}: expected a C-contiguous array")


@pytest.mark.parametrize("name", ["param", "m", "v"])
def test_adam_read_only_written_array_is_value_error(name):
    def ro(a):
        c = a[name].copy()
        c.flags.writeable = False
        return c
    expect_error("adam_update", {name: ro}, ValueError,
                 rf"^adam_update: {name}: expected a writable array")


def test_adam_read_only_grad_is_accepted():
    kw, want = good("adam_update", np.float64), good("adam_update", np.float64)
    kw["grad"].flags.writeable = False
    ops.adam_update(**kw)
    ref.adam_update(**want)
    for k in ("param", "m", "v"):
        np.testing.assert_allclose(kw[k], want[k], rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------
# Ranks and shapes
# --------------------------------------------------------------------------

RANKED = [("conv2d_forward", "x"), ("conv2d_forward", "w"), ("conv2d_forward", "b"),
          ("conv2d_backward", "x"), ("conv2d_backward", "w"), ("conv2d_backward", "dy"),
          ("maxpool2d_forward", "x"), ("maxpool2d_backward", "x"), ("maxpool2d_backward", "dy"),
          ("dense_forward", "x"), ("dense_forward", "w"), ("dense_forward", "b"),
          ("dense_backward", "x"), ("dense_backward", "w"), ("dense_backward", "dy"),
          ("softmax_cross_entropy", "logits"), ("softmax_cross_entropy", "labels")]
RANKED += [(op, a) for op in ("batchnorm_forward", "batchnorm_backward", "global_avgpool_forward",
                              "global_avgpool_backward", "residual_add_forward", "residual_add_backward")
           for a in FLOAT_ARGS[op]]


@pytest.mark.parametrize("op,arg", RANKED)
def test_wrong_rank_is_value_error(op, arg):
    changes = {"one-more": lambda a: a[arg][None],
               "one-less": lambda a: a[arg][0] if a[arg].ndim > 1 else a[arg].reshape(1, -1),
               "flat": lambda a: a[arg].reshape(-1) if a[arg].ndim > 1 else a[arg].reshape(-1, 1),
               "0-d": lambda a: np.array(a[arg].flat[0])}
    for change, make in changes.items():
        with variant(change):
            expect_error(op, {arg: make}, ValueError, rf"^{op}: {arg}: expected")


def arr(*shape, dtype=np.float32):
    return np.ones(shape, dtype)


def ro(a):
    c = a.copy()
    c.flags.writeable = False
    return c


VE, TE = ValueError, TypeError
SHAPE_CASES = [
    # conv2d: channels, bias, dy, output size, empty dimensions
    p("conv2d_forward", {"w": arr(4, 2, 3, 3)}, VE, r"w: expected dimension 1 to be 3", "w-channels"),
    p("conv2d_forward", {"b": arr(5)}, VE, r"b: expected dimension 0 to be 4", "b-length"),
    p("conv2d_forward", {"b": arr(0)}, VE, r"b: expected dimension 0 to be 4", "b-empty"),
    p("conv2d_forward", {"w": arr(4, 3, 8, 3)}, VE, r"w: expected a filter no larger than the padded input",
      "filter-taller-than-padded-input"),
    p("conv2d_forward", {"w": arr(4, 3, 3, 9)}, VE, r"w: expected a filter no larger", "filter-wider"),
    p("conv2d_forward", {"w": arr(4, 3, 6, 3), "padding": 0}, VE, r"w: expected a filter no larger",
      "filter-larger-unpadded"),
    p("conv2d_forward", {"x": arr(0, 3, 5, 6)}, VE, r"x: expected every dimension", "batch-0"),
    p("conv2d_forward", {"x": arr(2, 3, 0, 6)}, VE, r"x: expected every dimension", "H-0"),
    p("conv2d_forward", {"x": arr(2, 0, 5, 6), "w": arr(4, 0, 3, 3)}, VE, r"x: expected every dimension", "C-0"),
    p("conv2d_forward", {"w": arr(0, 3, 3, 3), "b": arr(0)}, VE, r"w: expected every dimension", "K-0"),
    p("conv2d_backward", {"w": arr(4, 5, 3, 3)}, VE, r"w: expected dimension 1 to be 3", "w-channels"),
    p("conv2d_backward", {"dy": arr(2, 4, 5, 5)}, VE, r"dy: expected the output shape", "dy-width"),
    p("conv2d_backward", {"dy": arr(2, 5, 5, 6)}, VE, r"dy: expected the output shape", "dy-channels"),
    p("conv2d_backward", {"dy": arr(3, 4, 5, 6)}, VE, r"dy: expected the output shape", "dy-batch"),
    p("conv2d_backward", {"padding": 0}, VE, r"dy: expected the output shape", "dy-for-other-padding"),
    p("conv2d_backward", {"stride": 2}, VE, r"dy: expected the output shape \(N, K, P, Q\) = \(2, 4, 3, 3\)",
      "dy-for-other-stride"),
    p("conv2d_forward", {"w": arr(4, 3, 8, 3), "stride": 2}, VE,
      r"w: expected a filter no larger than the padded input \(7, 8\) but got R, S = 8, 3: the output size would be 0 x",
      "filter-too-large-at-stride-2"),
    p("conv2d_backward", {"w": arr(4, 3, 8, 3)}, VE, r"w: expected a filter no larger", "filter-too-large"),
    p("conv2d_backward", {"x": arr(0, 3, 5, 6), "dy": arr(0, 4, 5, 6)}, VE, r"x: expected every dimension",
      "batch-0"),
    # maxpool: H or W = 1 gives an empty output; dy shape
    p("maxpool2d_forward", {"x": arr(2, 3, 1, 6)}, VE, r"x: expected H and W >= 2", "H-1"),
    p("maxpool2d_forward", {"x": arr(2, 3, 6, 1)}, VE, r"x: expected H and W >= 2", "W-1"),
    p("maxpool2d_forward", {"x": arr(0, 3, 4, 4)}, VE, r"x: expected every dimension", "batch-0"),
    p("maxpool2d_forward", {"x": arr(2, 0, 4, 4)}, VE, r"x: expected every dimension", "C-0"),
    p("maxpool2d_backward", {"x": arr(2, 3, 1, 6), "dy": arr(2, 3, 0, 3)}, VE, r"x: expected H and W >= 2", "H-1"),
    p("maxpool2d_backward", {"dy": arr(2, 3, 3, 3)}, VE, r"dy: expected the output shape", "dy-not-floored"),
    p("maxpool2d_backward", {"dy": arr(2, 4, 2, 3)}, VE, r"dy: expected the output shape", "dy-channels"),
    p("maxpool2d_backward", {"x": arr(0, 3, 4, 4), "dy": arr(0, 3, 2, 2)}, VE, r"x: expected every dimension",
      "batch-0"),
    p("maxpool2d_backward", {"relu_y": arr(2, 3, 2, 2)}, VE, r"relu_y: expected dy's shape \(2, 3, 2, 3\)",
      "relu_y-shape"),
    p("maxpool2d_backward", {"relu_y": arr(2, 3, 2, 3, dtype=np.float64)}, TE, r"relu_y: expected float32",
      "relu_y-dtype"),
    # relu_backward: y and dy disagree
    p("relu_backward", {"dy": arr(2, 3, 5)}, VE, r"dy: expected the shape of y", "dy-shape"),
    p("relu_backward", {"dy": arr(4, 3, 2)}, VE, r"dy: expected the shape of y", "dy-permuted"),
    p("relu_backward", {"dy": arr(24)}, VE, r"dy: expected the shape of y", "dy-flat"),
    p("relu_backward", {"y": arr(2, 3, 4, 1)}, VE, r"dy: expected the shape of y", "y-rank"),
    # dense: in, bias, dy, empty
    p("dense_forward", {"w": arr(3, 4)}, VE, r"w: expected dimension 1 to be 5", "w-in"),
    p("dense_forward", {"b": arr(4)}, VE, r"b: expected dimension 0 to be 3", "b-length"),
    p("dense_forward", {"x": arr(0, 5)}, VE, r"x: expected every dimension", "batch-0"),
    p("dense_forward", {"x": arr(2, 0), "w": arr(3, 0)}, VE, r"x: expected every dimension", "in-0"),
    p("dense_forward", {"w": arr(0, 5), "b": arr(0)}, VE, r"w: expected every dimension", "out-0"),
    p("dense_backward", {"w": arr(3, 6)}, VE, r"w: expected dimension 1 to be 5", "w-in"),
    p("dense_backward", {"dy": arr(2, 4)}, VE, r"dy: expected the output shape", "dy-out"),
    p("dense_backward", {"dy": arr(3, 3)}, VE, r"dy: expected the output shape", "dy-batch"),
    p("dense_backward", {"dy": arr(3, 2)}, VE, r"dy: expected the output shape", "dy-transposed"),
    p("dense_backward", {"x": arr(0, 5), "dy": arr(0, 3)}, VE, r"x: expected every dimension", "batch-0"),
    # softmax_cross_entropy: labels length, empty logits
    p("softmax_cross_entropy", {"labels": np.array([0, 1, 2])}, VE, r"labels: expected dimension 0 to be 4",
      "labels-short"),
    p("softmax_cross_entropy", {"labels": np.zeros(5, np.int64)}, VE, r"labels: expected dimension 0 to be 4",
      "labels-long"),
    p("softmax_cross_entropy", {"labels": np.zeros((4, 1), np.int64)}, VE, r"labels: expected a 1-d array",
      "labels-2d"),
    p("softmax_cross_entropy", {"logits": arr(0, 3), "labels": np.zeros(0, np.int64)}, VE,
      r"logits: expected every dimension", "batch-0"),
    p("softmax_cross_entropy", {"logits": arr(4, 0)}, VE, r"logits: expected every dimension", "classes-0"),
    # adam_update: arrays of different shapes, aliasing
    p("adam_update", {"grad": arr(11)}, VE, r"grad: expected the shape of param", "grad-length"),
    p("adam_update", {"grad": arr(2, 5)}, VE, r"grad: expected the shape of param", "grad-reshaped"),
    p("adam_update", {"m": arr(2, 5)}, VE, r"m: expected the shape of param", "m-reshaped"),
    p("adam_update", {"v": arr(9)}, VE, r"v: expected the shape of param", "v-length"),
    p("adam_update", {"param": arr(2, 5)}, VE, r"grad: expected the shape of param", "param-reshaped"),
    p("adam_update", {"m": lambda a: a["param"]}, VE, r"m: expected memory separate from param", "m-is-param"),
    p("adam_update", {"v": lambda a: a["param"]}, VE, r"v: expected memory separate from param", "v-is-param"),
    p("adam_update", {"v": lambda a: a["m"]}, VE, r"v: expected memory separate from m", "v-is-m"),
    p("adam_update", {"m": lambda a: a["param"].reshape(2, 5).reshape(10)}, VE,
      r"m: expected memory separate from param", "m-is-a-view-of-param"),
    p("adam_update", {"m": lambda a: a["v"][:]}, VE,
      r"v: expected memory separate from m", "m-is-a-slice-of-v"),
    # batchnorm: per-channel vectors, one value per channel, outputs
    p("batchnorm_forward", {"gamma": arr(4)}, VE, r"gamma: expected dimension 0 to be 3", "gamma-length"),
    p("batchnorm_forward", {"beta": arr(2)}, VE, r"beta: expected dimension 0 to be 3", "beta-length"),
    p("batchnorm_forward", {"running_mean": arr(4)}, VE, r"running_mean: expected dimension 0 to be 3",
      "running_mean-length"),
    p("batchnorm_forward", {"running_var": arr(3, 1)}, VE, r"running_var: expected a 1-d array", "running_var-2d"),
    p("batchnorm_forward", {"x": arr(0, 3, 4, 5)}, VE, r"x: expected every dimension", "batch-0"),
    p("batchnorm_forward", {"x": arr(2, 3, 4, 0)}, VE, r"x: expected every dimension", "W-0"),
    p("batchnorm_forward", {"x": arr(1, 3, 1, 1)}, VE,
      r"x: expected more than one value per channel in training mode \(N \* H \* W > 1\) but got shape \(1, 3, 1, 1\)",
      "one-value-per-channel"),
    p("batchnorm_forward", {"running_var": lambda a: a["running_mean"]}, VE,
      r"running_var: expected memory separate from running_mean", "running_var-is-running_mean"),
    p("batchnorm_forward", {"running_mean": lambda a: ro(a["running_mean"])}, VE,
      r"running_mean: expected a writable array", "running_mean-read-only-in-training"),
    p("batchnorm_forward", {"mean": arr(4)}, VE, r"mean: expected shape \(3,\) but got \(4,\)", "mean-out-shape"),
    p("batchnorm_forward", {"invstd": lambda a: a["gamma"]}, VE, r"invstd: expected memory separate from gamma",
      "invstd-is-gamma"),
    p("batchnorm_forward", {"out": lambda a: a["x"]}, VE, r"out: expected memory separate from x", "out-is-x"),
    p("batchnorm_backward", {"dy": arr(2, 3, 4, 4)}, VE, r"dy: expected the shape of x", "dy-shape"),
    p("batchnorm_backward", {"mean": arr(2)}, VE, r"mean: expected dimension 0 to be 3", "mean-length"),
    p("batchnorm_backward", {"invstd": arr(4)}, VE, r"invstd: expected dimension 0 to be 3", "invstd-length"),
    p("batchnorm_backward", {"gamma": arr(1)}, VE, r"gamma: expected dimension 0 to be 3", "gamma-length"),
    p("batchnorm_backward", {"dx": lambda a: a["dy"]}, VE, r"dx: expected memory separate from dy", "dx-is-dy"),
    p("batchnorm_backward", {"x": arr(0, 3, 4, 5), "dy": arr(0, 3, 4, 5)}, VE, r"x: expected every dimension",
      "batch-0"),
    # global average pooling
    p("global_avgpool_forward", {"x": arr(2, 0, 4, 5)}, VE, r"x: expected every dimension", "C-0"),
    p("global_avgpool_backward", {"dy": arr(2, 4)}, VE, r"dy: expected the output shape \(N, C\) = \(2, 3\)",
      "dy-channels"),
    p("global_avgpool_backward", {"dy": arr(3, 3)}, VE, r"dy: expected the output shape", "dy-batch"),
    # residual add: the block output's shape follows from x and stride
    p("residual_add_forward", {"main": arr(2, 6, 2, 2)}, VE,
      r"main: expected shape \(N, K, P, Q\) with N = 2, K >= C = 3, \(P, Q\) = \(2, 3\)", "main-width"),
    p("residual_add_forward", {"main": arr(2, 2, 2, 3)}, VE, r"main: expected shape \(N, K, P, Q\) with N = 2, K >= C",
      "main-fewer-channels-than-x"),
    p("residual_add_forward", {"main": arr(3, 6, 2, 3)}, VE, r"main: expected shape", "main-batch"),
    p("residual_add_forward", {"stride": 1}, VE, r"main: expected shape .* \(P, Q\) = \(4, 5\)",
      "main-for-other-stride"),
    p("residual_add_forward", {"x": arr(2, 3, 0, 5)}, VE, r"x: expected every dimension", "x-H-0"),
    p("residual_add_forward", {"out": lambda a: a["x"]}, VE, r"out: expected shape", "out-shape-of-x"),
    p("residual_add_backward", {"dy": arr(2, 6, 3, 3)}, VE, r"dy: expected shape \(N, K, P, Q\)", "dy-height"),
    p("residual_add_backward", {"grad": arr(2, 7, 4, 5)}, VE, r"dy: expected shape .*K >= C = 7", "grad-more-channels"),
    p("residual_add_backward", {"out": lambda a: a["dy"]}, VE, r"out: expected shape", "out-shape-of-dy"),
]


@pytest.mark.parametrize("op,overrides,exc,pattern", SHAPE_CASES)
def test_shape_disagreements(op, overrides, exc, pattern):
    expect_error(op, overrides, exc, rf"^{op}: {pattern}")


# --------------------------------------------------------------------------
# Scalars: padding, labels values, lambdas, Adam hyper-parameters, thresholds
# --------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
SCALAR_CASES = []
for _op in ("conv2d_forward", "conv2d_backward"):
    SCALAR_CASES += [
        p(_op, {"padding": -1}, VE, r"padding: expected an integer >= 0", "padding--1"),
        p(_op, {"padding": -(2**70)}, VE, r"padding: expected an integer >= 0", "padding-huge-negative"),
        p(_op, {"padding": 2**64}, VE, r"padding: expected an integer >= 0", "padding-2**64"),
        p(_op, {"padding": 1.5}, TE, r"padding: expected an integer >= 0 but got float", "padding-1.5"),
        p(_op, {"padding": 1.0}, TE, r"padding: expected an integer", "padding-1.0"),
        p(_op, {"padding": np.float64(1)}, TE, r"padding: expected an integer", "padding-np.float64"),
        p(_op, {"padding": "1"}, TE, r"padding: expected an integer >= 0 but got str", "padding-str"),
        p(_op, {"padding": True}, TE, r"padding: expected an integer >= 0 but got bool", "padding-True"),
        p(_op, {"padding": np.bool_(True)}, TE, r"padding: expected an integer", "padding-np.bool_"),
        p(_op, {"padding": None}, TE, r"padding: expected an integer", "padding-None"),
        p(_op, {"padding": [1]}, TE, r"padding: expected an integer", "padding-list"),
    ]

SCALAR_CASES += [
    # labels: values out of range, wrong kind
    p("softmax_cross_entropy", {"labels": np.array([0, -1, 1, 2])}, VE,
      r"labels: expected class indices in \[0, 3\) but got .*-1.* at index 1", "label-negative"),
    p("softmax_cross_entropy", {"labels": np.array([0, 1, 2, 3])}, VE,
      r"labels: expected class indices in \[0, 3\) .*at index 3", "label-equals-classes"),
    p("softmax_cross_entropy", {"labels": np.array([0, 1, 2, 2**40])}, VE,
      r"labels: expected class indices in \[0, 3\)", "label-huge-int64"),
    p("softmax_cross_entropy", {"labels": np.array([0, 1, 2**64 - 1, 0], np.uint64)}, VE,
      r"labels: expected class indices in \[0, 3\)", "label-uint64-max"),
    p("softmax_cross_entropy", {"labels": np.array([0, 1, 2**63, 0], np.uint64)}, VE,
      r"labels: expected class indices in \[0, 3\)", "label-uint64-2**63"),
    p("softmax_cross_entropy", {"labels": np.array([0, 1, 2, -1], np.int8)}, VE,
      r"labels: expected class indices in \[0, 3\)", "label-int8-negative"),
    p("softmax_cross_entropy", {"labels": np.array([0, 1, 2, 200], np.uint8)}, VE,
      r"labels: expected class indices in \[0, 3\)", "label-uint8-out-of-range"),
    p("softmax_cross_entropy", {"labels": np.array([0.0, 1.0, 2.0, 1.0])}, TE,
      r"labels: expected an integer dtype but got float64", "labels-float64"),
    p("softmax_cross_entropy", {"labels": np.array([0, 1, 2, 1], np.float32)}, TE,
      r"labels: expected an integer dtype but got float32", "labels-float32"),
    p("softmax_cross_entropy", {"labels": np.array([0, 1, 1, 0], bool)}, TE,
      r"labels: expected an integer dtype but got bool", "labels-bool"),
    p("softmax_cross_entropy", {"labels": np.array([0, 1, 2, 1], ">i8")}, TE,
      r"labels: expected an integer dtype but got >i8", "labels-byteswapped"),
    p("softmax_cross_entropy", {"labels": np.array([0, 1, 2, 1], object)}, TE,
      r"labels: expected an integer dtype", "labels-object"),
    p("softmax_cross_entropy", {"logits": lambda a: a["logits"].astype(np.int32)}, TE,
      r"logits: expected float32 or float64 but got int32", "logits-int32"),
    # sparsity_count: threshold
    p("sparsity_count", {"threshold": -0.1}, VE, r"threshold: expected .*>= 0", "threshold-negative"),
    p("sparsity_count", {"threshold": -1}, VE, r"threshold: expected .*>= 0", "threshold-negative-int"),
    p("sparsity_count", {"threshold": NAN}, VE, r"threshold: expected .*>= 0 but got nan", "threshold-nan"),
    p("sparsity_count", {"threshold": -INF}, VE, r"threshold: expected .*>= 0", "threshold--inf"),
    p("sparsity_count", {"threshold": "0.1"}, TE, r"threshold: expected a real number but got str", "threshold-str"),
    p("sparsity_count", {"threshold": None}, TE, r"threshold: expected a real number", "threshold-None"),
    p("sparsity_count", {"threshold": True}, TE, r"threshold: expected a real number but got bool", "threshold-True"),
    p("sparsity_count", {"threshold": 1j}, TE, r"threshold: expected a real number", "threshold-complex"),
]

for _op, _names in (("penalty", ("l1", "l2")), ("adam_update", ("l1", "l2")), ("sgd_update", ("l1", "l2")),
                    ("penalty_gradient", ("l1", "l2"))):
    for _n in _names:
        SCALAR_CASES += [
            p(_op, {_n: -0.1}, VE, rf"{_n}: expected a finite number >= 0", f"{_n}-negative"),
            p(_op, {_n: -1}, VE, rf"{_n}: expected a finite number >= 0", f"{_n}-negative-int"),
            p(_op, {_n: -1e-300}, VE, rf"{_n}: expected a finite number >= 0", f"{_n}-tiny-negative"),
            p(_op, {_n: NAN}, VE, rf"{_n}: expected a finite number >= 0 but got nan", f"{_n}-nan"),
            p(_op, {_n: np.float32("nan")}, VE, rf"{_n}: expected a finite number >= 0", f"{_n}-np.nan"),
            p(_op, {_n: INF}, VE, rf"{_n}: expected a finite number >= 0 but got inf", f"{_n}-inf"),
            p(_op, {_n: -INF}, VE, rf"{_n}: expected a finite number >= 0", f"{_n}--inf"),
            p(_op, {_n: "0.1"}, TE, rf"{_n}: expected a real number but got str", f"{_n}-str"),
            p(_op, {_n: None}, TE, rf"{_n}: expected a real number but got NoneType", f"{_n}-None"),
            p(_op, {_n: True}, TE, rf"{_n}: expected a real number but got bool", f"{_n}-True"),
        ]

SCALAR_CASES += [
    p("batchnorm_forward", {"momentum": -0.1}, VE, r"momentum: expected a number in \[0, 1\] but got -0.1",
      "momentum-negative"),
    p("batchnorm_forward", {"momentum": 1.5}, VE, r"momentum: expected a number in \[0, 1\]", "momentum-1.5"),
    p("batchnorm_forward", {"momentum": NAN}, VE, r"momentum: expected a number in \[0, 1\] but got nan",
      "momentum-nan"),
    p("batchnorm_forward", {"momentum": "0.1"}, TE, r"momentum: expected a real number but got str", "momentum-str"),
    p("batchnorm_forward", {"momentum": None}, TE, r"momentum: expected a real number", "momentum-None"),
    p("batchnorm_forward", {"eps": 0}, VE, r"eps: expected a finite number > 0", "eps-0"),
    p("batchnorm_forward", {"eps": -1e-5}, VE, r"eps: expected a finite number > 0", "eps-negative"),
    p("batchnorm_forward", {"eps": INF}, VE, r"eps: expected a finite number > 0 but got inf", "eps-inf"),
    p("batchnorm_forward", {"eps": NAN}, VE, r"eps: expected a finite number > 0", "eps-nan"),
    p("batchnorm_forward", {"eps": True}, TE, r"eps: expected a real number but got bool", "eps-True"),
    p("batchnorm_forward", {"training": 1}, TE, r"training: expected True or False but got 1", "training-1"),
    p("batchnorm_backward", {"training": None}, TE, r"training: expected True or False", "training-None"),
    p("residual_add_forward", {"relu": "yes"}, TE, r"relu: expected True or False", "relu-str"),
]
for _op in ("residual_add_forward", "residual_add_backward", "conv2d_forward", "conv2d_backward"):
    SCALAR_CASES += [
        p(_op, {"stride": 0}, VE, r"stride: expected an integer >= 1 but got 0", "stride-0"),
        p(_op, {"stride": -2}, VE, r"stride: expected an integer >= 1", "stride-negative"),
        p(_op, {"stride": 2**70}, VE, r"stride: expected an integer >= 1", "stride-2**70"),
        p(_op, {"stride": 2.0}, TE, r"stride: expected an integer >= 1 but got float", "stride-2.0"),
        p(_op, {"stride": True}, TE, r"stride: expected an integer >= 1 but got bool", "stride-True"),
        p(_op, {"stride": None}, TE, r"stride: expected an integer", "stride-None"),
    ]
for _op in ("conv2d_forward", "conv2d_backward"):
    SCALAR_CASES += [
        p(_op, {"stride": 2**31}, VE, r"stride: expected an integer in \[1, 2\^31\) but got 2147483648", "stride-2**31"),
        p(_op, {"stride": "2"}, TE, r"stride: expected an integer >= 1 but got str", "stride-str"),
        p(_op, {"stride": np.float32(2)}, TE, r"stride: expected an integer", "stride-np.float32"),
        p(_op, {"stride": [2]}, TE, r"stride: expected an integer", "stride-list"),
    ]

SCALAR_CASES += [
    p("adam_update", {"step": 0}, VE, r"step: expected an integer >= 1 but got 0", "step-0"),
    p("adam_update", {"step": -1}, VE, r"step: expected an integer >= 1 but got -1", "step--1"),
    p("adam_update", {"step": 2**70}, VE, r"step: expected an integer >= 1", "step-2**70"),
    p("adam_update", {"step": 1.5}, TE, r"step: expected an integer >= 1 but got float", "step-1.5"),
    p("adam_update", {"step": 1.0}, TE, r"step: expected an integer >= 1 but got float", "step-1.0"),
    p("adam_update", {"step": True}, TE, r"step: expected an integer >= 1 but got bool", "step-True"),
    p("adam_update", {"step": np.bool_(True)}, TE, r"step: expected an integer", "step-np.bool_"),
    p("adam_update", {"step": "1"}, TE, r"step: expected an integer >= 1 but got str", "step-str"),
    p("adam_update", {"step": None}, TE, r"step: expected an integer", "step-None"),
    p("adam_update", {"lr": 0}, VE, r"lr: expected a finite number > 0", "lr-0"),
    p("adam_update", {"lr": 0.0}, VE, r"lr: expected a finite number > 0", "lr-0.0"),
    p("adam_update", {"lr": -1e-3}, VE, r"lr: expected a finite number > 0", "lr-negative"),
    p("adam_update", {"lr": NAN}, VE, r"lr: expected a finite number > 0 but got nan", "lr-nan"),
    p("adam_update", {"lr": INF}, VE, r"lr: expected a finite number > 0", "lr-inf"),
    p("adam_update", {"lr": "0.1"}, TE, r"lr: expected a real number but got str", "lr-str"),
    p("adam_update", {"lr": None}, TE, r"lr: expected a real number", "lr-None"),
    p("adam_update", {"lr": True}, TE, r"lr: expected a real number but got bool", "lr-True"),
    p("adam_update", {"eps": 0}, VE, r"eps: expected a finite number > 0", "eps-0"),
    p("adam_update", {"eps": -1e-8}, VE, r"eps: expected a finite number > 0", "eps-negative"),
    p("adam_update", {"eps": NAN}, VE, r"eps: expected a finite number > 0", "eps-nan"),
    p("adam_update", {"eps": INF}, VE, r"eps: expected a finite number > 0", "eps-inf"),
    p("adam_update", {"eps": "1e-7"}, TE, r"eps: expected a real number", "eps-str"),
    p("adam_update", {"penalized": -1}, VE, r"penalized: expected an integer in \[0, param.size", "penalized--1"),
    p("adam_update", {"penalized": 11}, VE, r"penalized: expected an integer in \[0, param.size = 10\] but got 11",
      "penalized-above-size"),
    p("adam_update", {"penalized": 2**70}, VE, r"penalized: expected an integer in \[0, param.size",
      "penalized-2**70"),
    p("adam_update", {"penalized": 1.5}, TE, r"penalized: expected an integer", "penalized-1.5"),
    p("adam_update", {"penalized": True}, TE, r"penalized: expected an integer", "penalized-True"),
    p("adam_update", {"penalized": "3"}, TE, r"penalized: expected an integer", "penalized-str"),
]
for _n in ("beta1", "beta2"):
    SCALAR_CASES += [
        p("adam_update", {_n: 1.0}, VE, rf"{_n}: expected a number in \[0, 1\)", f"{_n}-1.0"),
        p("adam_update", {_n: 1}, VE, rf"{_n}: expected a number in \[0, 1\)", f"{_n}-1"),
        p("adam_update", {_n: 1.5}, VE, rf"{_n}: expected a number in \[0, 1\)", f"{_n}-1.5"),
        p("adam_update", {_n: -0.1}, VE, rf"{_n}: expected a number in \[0, 1\)", f"{_n}--0.1"),
        p("adam_update", {_n: NAN}, VE, rf"{_n}: expected a number in \[0, 1\) but got nan", f"{_n}-nan"),
        p("adam_update", {_n: INF}, VE, rf"{_n}: expected a number in \[0, 1\)", f"{_n}-inf"),
        p("adam_update", {_n: "0.9"}, TE, rf"{_n}: expected a real number but got str", f"{_n}-str"),
        p("adam_update", {_n: None}, TE, rf"{_n}: expected a real number", f"{_n}-None"),
    ]


# sgd_update: its own arguments; the shared ones (lr, penalized, l1, l2) go through adam_update's checks
SCALAR_CASES += [
    p("sgd_update", {"velocity": arr(9)}, VE, r"velocity: expected the shape of param", "velocity-length"),
    p("sgd_update", {"velocity": lambda a: a["param"]}, VE, r"velocity: expected memory separate from param",
      "velocity-is-param"),
    p("sgd_update", {"velocity": lambda a: a["grad"]}, VE, r"velocity: expected memory separate from grad",
      "velocity-is-grad"),
    p("sgd_update", {"lr": 0}, VE, r"lr: expected a finite number > 0", "lr-0"),
    p("sgd_update", {"momentum": 1.0}, VE, r"momentum: expected a number in \[0, 1\) but got 1", "momentum-1"),
    p("sgd_update", {"momentum": -0.1}, VE, r"momentum: expected a number in \[0, 1\)", "momentum-negative"),
    p("sgd_update", {"momentum": NAN}, VE, r"momentum: expected a number in \[0, 1\) but got nan", "momentum-nan"),
    p("sgd_update", {"momentum": "0.9"}, TE, r"momentum: expected a real number but got str", "momentum-str"),
    p("sgd_update", {"penalized": 11}, VE, r"penalized: expected an integer in \[0, param.size = 10\]",
      "penalized-11"),
    p("sgd_update", {"proximal": 1}, TE, r"proximal: expected True or False but got 1", "proximal-int"),
    p("adam_update", {"proximal": "yes"}, TE, r"proximal: expected True or False but got 'yes'", "proximal-str"),
    p("sgd_update", {"with_penalty": None}, TE, r"with_penalty: expected True or False", "with_penalty-None"),
]


@pytest.mark.parametrize("op,overrides,exc,pattern", SCALAR_CASES)
def test_bad_scalars_and_labels(op, overrides, exc, pattern):
    expect_error(op, overrides, exc, rf"^{op}: {pattern}")


# --------------------------------------------------------------------------
# Regressions: inputs that once crashed the interpreter or passed silently
# --------------------------------------------------------------------------

def _overlap_m_v():
    buf = np.zeros(11, np.float32)
    return {"m": buf[0:10], "v": buf[1:11]}


def _overlap_param_m():
    buf = np.abs(np.random.default_rng(0).standard_normal(15)).astype(np.float32)
    return {"param": buf[0:10], "m": buf[5:15]}


def _overlap_main_out():  # in place is allowed, a shifted view is not
    buf = np.ones(2 * 6 * 2 * 3 + 1, np.float32)
    return {"main": buf[:-1].reshape(2, 6, 2, 3), "out": buf[1:].reshape(2, 6, 2, 3)}


BIG = 10**400  # a Python int too large for a double
REGRESSION_CASES = [
    p("adam_update", _overlap_m_v(), VE, r"(m|v): expected .*(different|overlap)", "m-v-partially-overlap"),
    p("adam_update", _overlap_param_m(), VE, r"(param|m): expected .*(different|overlap)",
      "param-m-partially-overlap"),
    p("residual_add_forward", _overlap_main_out(), VE, r"out: expected memory separate from main",
      "out-partially-overlaps-main"),
    p("relu_forward", {"x": np.ma.masked_array(np.array([-1.0, 2.0], np.float32), mask=[0, 1])}, TE,
      r"x: expected", "numpy-masked-array"),
    p("penalty", {"w": np.ma.masked_array(np.array([1.0, 5.0], np.float32), mask=[0, 1])}, TE,
      r"w: expected", "numpy-masked-array"),
    p("adam_update", {"lr": BIG}, VE, r"lr: expected", "lr-10**400"),
    p("adam_update", {"beta1": BIG}, VE, r"beta1: expected", "beta1-10**400"),
    p("penalty", {"l1": BIG}, VE, r"l1: expected", "l1-10**400"),
    p("penalty", {"l2": -BIG}, VE, r"l2: expected", "l2--10**400"),
    p("sparsity_count", {"threshold": -BIG}, VE, r"threshold: expected", "threshold--10**400"),
    p("adam_update", {"lr": np.array([1e-3, 2e-3])}, TE, r"lr: expected a real number", "lr-array"),
    p("penalty", {"l1": np.array([0.1])}, TE, r"l1: expected a real number", "l1-1-element-array"),
    p("sparsity_count", {"threshold": np.array([0.1, 0.2])}, TE, r"threshold: expected a real number",
      "threshold-array"),
    p("conv2d_forward", {"x": arr(1, 1, 1, 1), "w": arr(1, 1, 2, 2), "b": arr(1), "padding": 2**31}, VE,
      r"(padding|x|w): expected", "padding-2**31-output-2**64"),
    p("conv2d_forward", {"x": arr(1, 1, 1, 1), "w": arr(1, 1, 1, 1), "b": arr(1), "padding": 10**6}, VE,
      r"(padding|x|w): expected", "padding-10**6-output-too-large"),
    # a 3x3 output, but input coordinates beyond 32 bits
    p("conv2d_forward", {"x": arr(1, 1, 1, 1), "w": arr(1, 1, 1, 1), "b": arr(1), "padding": 2**31 - 1,
                         "stride": 2**31 - 1}, VE,
      r"padding: expected a padded input \(H \+ 2\*padding, W \+ 2\*padding\) under 2\^31 but got \(4294967295, 4294967295\)",
      "padded-input-2**32-stride-2**31-1"),
]


@pytest.mark.parametrize("op,overrides,exc,pattern", REGRESSION_CASES)
def test_regressions(op, overrides, exc, pattern):
    expect_error(op, overrides, exc, rf"^{op}: {pattern}")


RAISING_INDEX = [("conv2d_forward", "padding"), ("conv2d_backward", "padding"),
                 ("conv2d_forward", "stride"), ("conv2d_backward", "stride"),
                 ("adam_update", "step"), ("adam_update", "penalized"),
                 ("residual_add_forward", "stride"), ("residual_add_backward", "stride")]


def test_integer_argument_whose_index_raises_does_not_crash():
    # Run in a child interpreter: this once segfaulted. Each case in turn must raise the
    # argument's own exception or a TypeError/ValueError naming the argument.
    script = textwrap.dedent(f"""
        import re, numpy as np
        from pyregnet import ops
        import test_bad_input as t

        class BadIndex:
            def __index__(self):
                raise ArithmeticError("__index__ failed")

        for op, arg in {RAISING_INDEX!r}:
            kw = t.good(op)
            kw[arg] = BadIndex()
            try:
                getattr(ops, op)(**kw)
            except ArithmeticError:
                pass
            except (TypeError, ValueError) as e:
                assert re.match(op + ": " + arg + ": expected", str(e)), str(e)
            else:
                raise AssertionError(op + " accepted a failing " + arg)
        print("survived")
    """)
    # From tests/, whose helpers the script imports; pyregnet itself is the installed one.
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    assert proc.returncode == 0 and "survived" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


# --------------------------------------------------------------------------
# Arrays on different devices
# --------------------------------------------------------------------------

class FakeCudaArray:
    """Exposes __cuda_array_interface__ with a bogus device pointer. Only safe where no CUDA GPU
    is usable: with one, the bindings would ask the driver about (or run kernels on) 0x4d2."""

    def __init__(self, shape, typestr="<f4", **extra):
        self.__cuda_array_interface__ = {"version": 3, "shape": tuple(shape), "typestr": typestr,
                                         "data": (1234, False), "strides": None, **extra}


no_gpu_only = pytest.mark.skipif(
    INFO["cuda_available"],
    reason="a usable CUDA GPU is present: a fake device pointer could fault the CUDA context "
           "(the CuPy test below covers mixed devices there)")


def fake_like(a):
    return FakeCudaArray(a.shape, "<i8" if a.dtype.kind in "iu" else "<f4")


def fake_first_error(op, arg):
    if not INFO["cuda_compiled"]:
        return rf"^{op}: {arg} is a CUDA array but this pyregnet was built without the CUDA backend"
    return rf"^{op}: {arg} is a CUDA array but no usable CUDA GPU"


@no_gpu_only
@pytest.mark.parametrize("op", OPS)
def test_cuda_array_first_without_usable_gpu_is_runtime_error(op):
    # The first array decides the device: a CUDA array there, on a build without the CUDA backend
    # or a machine without a GPU, is a RuntimeError naming it.
    first = ARRAY_ARGS[op][0]
    expect_error(op, {first: lambda a: fake_like(a[first])}, RuntimeError, fake_first_error(op, first))


@no_gpu_only
@pytest.mark.parametrize("op", OPS)
def test_all_cuda_arrays_without_usable_gpu_is_runtime_error(op):
    first = ARRAY_ARGS[op][0]
    overrides = {n: (lambda n: lambda a: fake_like(a[n]))(n) for n in ARRAY_ARGS[op]}
    expect_error(op, overrides, RuntimeError, fake_first_error(op, first))


MIXED_DEVICE_CASES = [(op, a) for op in OPS for a in ARRAY_ARGS[op][1:]]


@no_gpu_only
@pytest.mark.parametrize("op,arg", MIXED_DEVICE_CASES)
def test_numpy_then_cuda_array_is_value_error(op, arg):
    # NumPy first sets the CPU; a later CUDA array is on another device, whatever the build.
    expect_error(op, {arg: lambda a: fake_like(a[arg])}, ValueError,
                 rf"^{op}: expected all arrays on one device but {arg} is a CUDA array "
                 rf"and the first array is a NumPy")


@no_gpu_only
@pytest.mark.parametrize("fake,exc,pattern", [
    (FakeCudaArray((2, 3, 4), "<i4"), TE, r"x: expected float32 or float64 but got int32"),
    (FakeCudaArray((2, 3, 4), "<f2"), TE, r"x: expected float32 or float64"),
    (FakeCudaArray((2, 3, 4), ">f4"), TE, r"x: expected float32 or float64"),
    (FakeCudaArray((2, 3, 4), "|b1"), TE, r"x: expected float32 or float64"),
    (FakeCudaArray((2, 3, 4), mask=(5678, False)), TE, r"x: expected an array without a mask"),
    (FakeCudaArray((2, 3, 4), strides=(96, 32, 8)), VE, r"x: expected a C-contiguous array"),
], ids=["int32", "float16", "byteswapped", "bool", "masked", "strided"])
def test_bad_cuda_array_is_rejected_before_the_device(fake, exc, pattern):
    expect_error("relu_forward", {"x": fake}, exc, rf"^relu_forward: {pattern}")


class CountingInterface:
    """A CUDA array whose interface is a property, as CuPy's is (it builds the dict on every read);
    counts the reads, or raises `error` from the property."""

    def __init__(self, shape, error=None):
        self.shape, self.error, self.reads = shape, error, 0

    @property
    def __cuda_array_interface__(self):
        self.reads += 1
        if self.error is not None:
            raise self.error
        return {"version": 3, "shape": self.shape, "typestr": "<f4", "data": (1234, False), "strides": None}


@no_gpu_only
def test_cuda_array_interface_is_read_once_per_argument():
    x = CountingInterface((2, 3))
    with pytest.raises(RuntimeError, match=r"^relu_forward: x is a CUDA array"):
        ops.relu_forward(x)
    assert x.reads == 1
    out = CountingInterface((2, 3))
    with pytest.raises(ValueError, match=r"^relu_forward: expected all arrays on one device"):
        ops.relu_forward(np.ones((2, 3), np.float32), out=out)
    assert out.reads == 1


def test_cuda_array_interface_that_fails_to_read_is_named():
    # Not an AttributeError: the object claims to be a CUDA array and its interface is broken.
    with pytest.raises(TypeError, match=r"^relu_forward: x: expected a valid __cuda_array_interface__ .* but "
                                        r"reading it failed: RuntimeError: boom"):
        ops.relu_forward(CountingInterface((2, 3), RuntimeError("boom")))


class _Interface:
    def __init__(self, cai):
        self.__cuda_array_interface__ = cai


def _cai(**changes):
    d = {"version": 3, "shape": (2, 3), "typestr": "<f4", "data": (1234, False), "strides": None}
    d.update(changes)
    return _Interface({k: v for k, v in d.items() if v is not _DROP})


_DROP = object()


@no_gpu_only
@pytest.mark.parametrize("obj", [
    pytest.param(_cai(typestr="<fx"), id="typestr-bad-size"),
    pytest.param(_cai(typestr=""), id="typestr-empty"),
    pytest.param(_cai(typestr=_DROP), id="typestr-missing"),
    pytest.param(_cai(data=None), id="data-None"),
    pytest.param(_cai(data=(1234,)), id="data-1-tuple"),
    pytest.param(_cai(shape=None), id="shape-None"),
    pytest.param(_Interface(5), id="not-a-dict"),
])
def test_malformed_cuda_array_interface(obj):
    # Either exception type is acceptable for a malformed interface, as long as it names the argument.
    with pytest.raises((TypeError, ValueError), match=r"^relu_forward: x: expected"):
        ops.relu_forward(obj)


@pytest.mark.cuda
@pytest.mark.skipif(not INFO["cuda_available"], reason="needs a usable CUDA GPU")
@pytest.mark.parametrize("op,arg", MIXED_DEVICE_CASES)
def test_cupy_and_numpy_in_one_call_is_value_error(op, arg):
    cp = pytest.importorskip("cupy")
    # NumPy first, a real CuPy array later: one device mismatch, whichever comes first.
    expect_error(op, {arg: lambda a: cp.asarray(a[arg])}, ValueError, rf"^{op}: expected all arrays on one device")
    kw = good(op)
    first = ARRAY_ARGS[op][0]
    kw[first] = cp.asarray(kw[first])
    with pytest.raises(ValueError, match=rf"^{op}: expected all arrays on one device but \w+ is a NumPy"):
        getattr(ops, op)(**kw)


# --------------------------------------------------------------------------
# The module is still healthy after all of the above
# --------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
def test_good_input_still_runs_at_the_end(op):
    kw = good(op)
    check_good_result(op, kw, getattr(ops, op)(**kw))


@pytest.mark.parametrize("op, overrides, exc, pattern", [
    ("adam_update", {"with_penalty": 1}, TypeError, r"with_penalty: expected True or False"),
    ("conv2d_backward", {"input_grad": None}, TypeError, r"input_grad: expected True or False"),
    ("penalty_gradient", {"with_penalty": "yes"}, TypeError, r"with_penalty: expected True or False"),
    ("penalty_gradient", {"penalized": 13}, ValueError, r"penalized: expected an integer in \[0, w.size = 12\]"),
    ("penalty_gradient", {"penalized": -1}, ValueError, r"penalized: expected an integer in \[0, w.size\]"),
    ("penalty_gradient", {"grad": lambda a: a["w"]}, ValueError, r"grad: expected memory separate from w"),
    ("penalty_gradient", {"grad": np.zeros((4, 3), np.float32)}, ValueError, r"grad: expected the shape of w"),
])
def test_penalty_flags_and_ranges(op, overrides, exc, pattern):
    expect_error(op, overrides, exc, rf"^{op}: {pattern}")
