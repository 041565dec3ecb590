"""ResNet-20 over its flat buffer (pyregnet.resnet): the layout, the initialization, the forward
pass against a NumPy float64 composition of pyregnet.reference's ops (training and evaluation
mode, both dtypes, every backend present), the BN running statistics, and a float64 numerical
gradient check of the whole network's loss at parameters of every kind and at the input."""

import numpy as np
import pytest

from bits import assert_thread_count_independent
from gradcheck import central_difference
from conftest import TOLERANCES
from pyregnet import ops, resnet
from pyregnet import reference as ref


def test_layout_kernels_first():
    assert resnet.N_PARAMS == 269_722 and resnet.N_KERNEL == 268_336 and resnet.N_STATE == 2 * 688
    names = [s.name for s in resnet.SLOTS]
    assert len(resnet.CONVS) == 19 and names[:20] == list(resnet.KERNEL_NAMES)
    assert all(n.endswith(".w") for n in names[:20]) and not any(n.endswith(".w") for n in names[20:])
    assert resnet.SLOTS[20].offset == resnet.N_KERNEL and names[-1] == "dense.b"
    assert sorted(n.rsplit(".", 1)[1] for n in names[20:-1]) == ["beta"] * 19 + ["gamma"] * 19
    ends = [s.offset + s.size for s in resnet.SLOTS]
    assert [s.offset for s in resnet.SLOTS[1:]] == ends[:-1] and ends[-1] == resnet.N_PARAMS
    v = resnet.param_views(np.arange(resnet.N_PARAMS, dtype=np.float64))
    assert v["stage2.block1.conv1.w"].shape == (32, 16, 3, 3) and v["dense.b"][-1] == resnet.N_PARAMS - 1


def test_architecture_shapes_and_flops():
    strides = {b.name: b.stride for b in resnet.BLOCKS}
    assert [b.output for b in resnet.BLOCKS[::3]] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert [n for n, s in strides.items() if s == 2] == ["stage2.block1", "stage3.block1"]
    # The conv multiply-adds of one image, counted by hand: stem 16*32*32*27; stage 1: 6 convs of
    # 16*32*32*144; stages 2 and 3: a stride-2 conv of 1,179,648 and 5 of 2,359,296 each; dense 640.
    macs = 442_368 + 6 * 2_359_296 + 2 * (1_179_648 + 5 * 2_359_296) + 640
    assert sum(layer.macs for layer in resnet.LAYERS) == macs == 40_551_040
    assert resnet.step_flops(4)["forward"] == 8 * macs
    assert resnet.step_flops(4)["total"] == 3 * 8 * macs - 8 * resnet.STEM.macs


def test_init_is_he_normal_and_glorot_with_unit_gamma():
    flat = resnet.init_params(0, np.float64)
    v = resnet.param_views(flat)
    for c in resnet.CONVS:
        w, n = v[f"{c.name}.w"], v[f"{c.name}.w"].size
        std = np.sqrt(2.0 / np.prod(c.weight[1:]))
        # The sample standard deviation's own spread is std / sqrt(2 n): 5 of those is no accident.
        assert abs(w.std() / std - 1) < 5 / np.sqrt(2 * n), c.name
        assert abs(w.mean()) < 5 * std / np.sqrt(n), c.name
        assert (v[f"{c.bn}.gamma"] == 1).all() and not v[f"{c.bn}.beta"].any()
    limit = np.sqrt(6 / (64 + 10))
    assert 0.95 * limit < np.abs(v["dense.w"]).max() <= limit and not v["dense.b"].any()
    assert (resnet.init_params(0, np.float32) == flat.astype(np.float32)).all()
    assert (resnet.init_params(0, np.float64) == flat).all() and not (resnet.init_params(1, np.float64) == flat).all()
    state = resnet.state_views(resnet.init_state(np.float64))
    assert all((state[f"{c.bn}.mean"] == 0).all() and (state[f"{c.bn}.var"] == 1).all() for c in resnet.CONVS)


def reference_forward(params, state, x, training):
    """(logits, the state after the pass) in float64 from pyregnet.reference's ops."""
    p = resnet.param_views(np.asarray(params, dtype=np.float64))
    flat = np.array(state, dtype=np.float64)
    s = resnet.state_views(flat)

    def conv_bn(conv, inp):
        z = ref.conv2d_forward(inp, p[f"{conv.name}.w"], np.zeros(conv.output[0]), 1, conv.stride)
        y, _, _, s[f"{conv.bn}.mean"][...], s[f"{conv.bn}.var"][...] = ref.batchnorm_forward(
            z, p[f"{conv.bn}.gamma"], p[f"{conv.bn}.beta"], s[f"{conv.bn}.mean"], s[f"{conv.bn}.var"],
            training=training, momentum=resnet.BN_MOMENTUM, eps=resnet.BN_EPS)
        return y

    h = ref.relu_forward(conv_bn(resnet.STEM, x))
    for blk in resnet.BLOCKS:
        main = conv_bn(blk.conv2, ref.relu_forward(conv_bn(blk.conv1, h)))
        h = ref.residual_add_forward(main, h, blk.stride, relu=True)
    return ref.dense_forward(ref.global_avgpool_forward(h), p["dense.w"], p["dense.b"]), flat


def trained_looking(seed, dtype):
    """Parameters and state away from their initial values (gamma, beta, biases, running
    statistics all non-trivial), so that no term of the forward pass is an identity."""
    rng = np.random.default_rng(seed)
    params = resnet.init_params(seed, np.float64)
    params[resnet.N_KERNEL:] = rng.normal(0, 0.2, resnet.N_PARAMS - resnet.N_KERNEL)
    state = resnet.init_state(np.float64)
    for c in resnet.CONVS:
        s = resnet.state_views(state)
        s[f"{c.bn}.mean"][...] = rng.normal(0, 0.3, c.output[0])
        s[f"{c.bn}.var"][...] = rng.uniform(0.5, 2.0, c.output[0])
    x = rng.random((4, *resnet.INPUT_SHAPE))
    return params.astype(dtype), state.astype(dtype), x.astype(dtype)


# The logits come through 19 convs and BN layers, so rounding compounds with depth: measured on the
# CPU up to 2.0e-7 (float32) and 3.4e-16 (float64) of max|logit|, in either mode; the margin is for
# other summation orders (the GPU's).
NETWORK_SCALE = {np.float32: 2e-5, np.float64: 1e-13}


def assert_network_close(got, want, dtype, what):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    err, mag = float(np.abs(got - want).max()), float(np.abs(want).max())
    print(f"{what}: max abs error {err:.3e} = {err / mag:.2e} * max|ref| ({np.dtype(dtype).name})")
    np.testing.assert_allclose(got, want, rtol=TOLERANCES[dtype]["rtol"], atol=NETWORK_SCALE[dtype] * mag,
                               err_msg=what)


@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
def test_forward_matches_reference(backend, dtype, training):
    params, state, x = trained_looking(0, dtype)
    want, want_state = reference_forward(params, state, x, training)
    dev_params, dev_state, dev_x = (backend.to_device(a) for a in (params, state, x))
    logits, _ = resnet.forward(dev_params, dev_state, dev_x, training)
    assert_network_close(backend.to_host(logits), want, dtype, "logits")
    assert_network_close(backend.to_host(dev_state), want_state, dtype, "running statistics")
    if not training:
        assert (backend.to_host(dev_state) == state).all(), "evaluation changed the running statistics"


def test_running_statistics_move_in_training_and_normalize_in_evaluation():
    params, state, x = trained_looking(1, np.float64)
    before = state.copy()
    resnet.forward(params, state, x, True)
    s, b = resnet.state_views(state), resnet.state_views(before)
    for c in resnet.CONVS:  # every running statistic moved towards the batch's
        assert (s[f"{c.bn}.mean"] != b[f"{c.bn}.mean"]).all() and (s[f"{c.bn}.var"] != b[f"{c.bn}.var"]).all()
    # Evaluation: each image's logits depend on the running statistics only, not on the batch.
    act = resnet.Activations(np, 1, np.float64, backward=False)
    alone = resnet.forward(params, state, x[:1].copy(), False, act)[0].copy()
    together = resnet.forward(params, state, x, False)[0]
    np.testing.assert_allclose(alone[0], together[0], rtol=1e-12, atol=1e-12)
    assert not np.allclose(resnet.forward(params, before, x, False)[0], together), "state unused"
    # Training: the batch statistics normalize, so an image's logits depend on its batch.
    trained = resnet.forward(params, state.copy(), x, True)[0][0].copy()
    assert not np.allclose(resnet.forward(params, state.copy(), x[:2].copy(), True)[0][0], trained)


def test_launches_are_named_and_count_the_step_flops():
    params, state, x = trained_looking(2, np.float64)
    act = resnet.Activations(np, 4, np.float64)
    act.input = x
    fwd = resnet.forward_launches(params, state, act, True)
    bwd = resnet.backward_launches(params, act, act.dlogits, np.zeros_like(params))
    names = [launch.name for launch in fwd + bwd]
    assert len(set(names)) == len(names)
    assert {"stage2.block1.conv1.forward", "stage3.block3.add.backward", "stem.conv.backward"} <= set(names)
    assert sum(launch.flops for launch in fwd + bwd) == resnet.step_flops(4)["total"]


def whole_network(seed, input_grad=False):
    """(params, state, x, labels, loss(), analytic gradient, act) of a float64 network on 2 images."""
    params, state, x = trained_looking(seed, np.float64)
    x, labels = x[:2].copy(), np.array([3, 7])

    scratch = resnet.Activations(np, 2, np.float64, backward=False)

    def loss():
        logits = resnet.forward(params, state.copy(), x, True, scratch)[0]
        return ops.softmax_cross_entropy(logits, labels)[0]

    act = resnet.Activations(np, 2, np.float64, input_grad=input_grad)
    logits, _ = resnet.forward(params, state.copy(), x, True, act)
    act.dlogits[...] = ops.softmax_cross_entropy(logits, labels)[1]
    grad = np.full_like(params, np.nan)  # every element must be written
    resnet.backward(params, act, act.dlogits, grad)
    assert np.isfinite(grad).all()
    return params, x, loss, grad, act


CHECKED = ["stem.conv.w", "stage1.block1.conv1.w", "stage1.block3.conv2.w", "stage2.block1.conv1.w",
           "stage2.block2.conv2.w", "stage3.block1.conv1.w", "stage3.block3.conv2.w", "dense.w", "dense.b",
           "stem.bn.gamma", "stem.bn.beta", "stage2.block1.bn1.gamma", "stage2.block1.bn2.beta",
           "stage3.block3.bn2.gamma", "stage3.block3.bn2.beta"]


def test_whole_network_gradient_matches_finite_differences():
    params, x, loss, grad, act = whole_network(3, input_grad=True)
    rng = np.random.default_rng(3)
    slots = {s.name: s for s in resnet.SLOTS}
    worst = 0.0
    for name in CHECKED:
        slot = slots[name]
        for i in slot.offset + rng.choice(slot.size, size=2, replace=False):
            numeric = central_difference(loss, params, i)
            worst = max(worst, abs(numeric - grad[i]))
            np.testing.assert_allclose(grad[i], numeric, rtol=1e-5, atol=1e-8, err_msg=f"{name} at {i}")
    for index in [(0, 0, 0, 0), (1, 2, 31, 31), (0, 1, 17, 4), (1, 0, 8, 23)]:
        numeric = central_difference(loss, x, index)
        worst = max(worst, abs(numeric - act.dinput[index]))
        np.testing.assert_allclose(act.dinput[index], numeric, rtol=1e-5, atol=1e-8, err_msg=f"input {index}")
    print(f"{2 * len(CHECKED) + 4} coordinates, max abs error {worst:.2e}")


def test_backward_without_input_gradient_gives_the_same_parameter_gradient():
    params, _, _, grad, act = whole_network(4, input_grad=True)
    assert act.dinput is not None and np.abs(act.dinput).max() > 0
    again = np.full_like(grad, np.nan)
    plain = resnet.Activations(np, 2, np.float64)
    resnet.forward(params, resnet.init_state(np.float64), act.input, True, plain)
    resnet.backward(params, plain, act.dlogits, again)
    assert plain.dinput is None
    np.testing.assert_array_equal(again, grad)


def run_all(to_device, to_host, dtype):
    """One training-mode forward and backward of 4 images, and an evaluation-mode forward: the
    logits, the parameter gradient and the running statistics (for the thread-count check)."""
    params, state, x = (to_device(a) for a in trained_looking(5, dtype))
    logits, act = resnet.forward(params, state, x, True)
    act.dlogits[...] = ops.softmax_cross_entropy(logits, np.array([0, 4, 9, 2]))[1]
    grad = to_device(np.zeros(resnet.N_PARAMS, dtype=dtype))
    resnet.backward(params, act, act.dlogits, grad)
    return [to_host(a) for a in (logits, grad, state, resnet.forward(params, state, x, False)[0])]


def test_cpu_bits_do_not_depend_on_the_thread_count():
    """BN's batch sums run in a fixed order: a training step gives the same bits on 1 or 3 threads
    as here (what resume and same-seed runs rely on)."""
    assert_thread_count_independent("test_resnet_model", np.float32)
