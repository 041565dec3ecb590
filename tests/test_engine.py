"""The device-resident epochs of pyregnet.engine against the plain step-by-step path:

- on every backend, an epoch (with a smaller last batch) gives the same parameters, bit for bit,
  as the same steps written with allocating ops and host-side bookkeeping, and the same sums;
- on the GPU, replaying the captured CUDA graphs (training and evaluation, the CNN and ResNet-20)
  gives the same bits as launching the kernels one by one, and the same seed gives the same bits
  run to run; a captured program takes its scratch memory from the workspace its first, eager
  call sized, allocating nothing.
"""

import numpy as np
import pytest

import pyregnet
from pyregnet import data, engine, model, ops, optim, resnet, train
from pyregnet.launch import Launch
from pyregnet.regularizers import Penalty

from conftest import BACKENDS, CUDA_MARKS


def make_run(device, reg="l1l2", mode="fused", train_size=150, batch=64, graph=True, seed=3, optimizer="adam",
             penalty_step="gradient", net="cnn"):
    pen = Penalty.with_defaults(reg, 1e-3 if reg in ("l1", "l1l2") else None, 1e-3 if reg in ("l2", "l1l2") else None)
    cfg = train.Config(reg=pen.kind, l1=pen.l1, l2=pen.l2, batch_size=batch, seed=seed, device=device,
                       penalty_mode=mode, graph=graph, optimizer=optimizer, penalty_step=penalty_step,
                       lr=train.DEFAULT_LR[optimizer], model=net)
    ds = data.load(None, dataset="synthetic", train_size=train_size, val_size=70, seed=0)
    return train.Run(cfg, ds)


def plain_epoch(run, order):
    """The epoch as separate, allocating op calls with host-side sums: what the engine replaces."""
    cfg, xp, opt, pen = run.config, run.xp, run.optimizer, run.penalty
    proximal = cfg.penalty_step == "proximal"
    n, batch = len(order), cfg.batch_size
    loss_sum, correct, penalties = 0.0, 0, 0.0
    order = xp.asarray(order)
    for start in range(0, n, batch):
        index = order[start:start + batch]
        x = ops.augment_batch(run.x_train, index, seed=cfg.seed, step=opt.step, max_shift=engine.MAX_SHIFT,
                              flip=True)
        logits, act = model.forward(run.params, x)
        loss, dlogits, hits = ops.softmax_cross_entropy(logits, run.y_train[index])
        model.backward(run.params, act, dlogits, run.grad)
        opt.step += 1
        penalty = dict(l1=pen.l1, l2=pen.l2, penalized=model.N_KERNEL, proximal=proximal, with_penalty=True)
        if cfg.optimizer == "sgd":
            value = ops.sgd_update(run.params, run.grad, opt.velocity, lr=opt.lr, momentum=opt.momentum, **penalty)
        else:
            value = ops.adam_update(run.params, run.grad, opt.m, opt.v, step=opt.step, lr=opt.lr, **penalty)
        loss_sum += loss * len(index)
        correct += hits
        penalties += value * len(index)
    return loss_sum, correct, penalties


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("optimizer, penalty_step", [("adam", "gradient"), ("adam", "proximal"), ("sgd", "gradient"),
                                                     ("sgd", "proximal")])
def test_epoch_equals_plain_steps(device, optimizer, penalty_step):
    a, b = (make_run(device, optimizer=optimizer, penalty_step=penalty_step) for _ in range(2))
    order = np.random.default_rng(0).permutation(150)
    sums, steps = a.engine.train_epoch(order)
    loss_sum, correct, penalties = plain_epoch(b, order)
    assert steps == 3 and a.optimizer.step == b.optimizer.step == 3
    for name in ("params", "grad"):
        got, want = (np.asarray(r.to_host(getattr(r, name))) for r in (a, b))
        assert np.array_equal(got, want), f"{name}: max diff {np.abs(got - want).max()}"
    for name in a.optimizer.STATE:
        assert np.array_equal(a.to_host(getattr(a.optimizer, name)), b.to_host(getattr(b.optimizer, name))), name
    print("engine sums", sums, "plain", loss_sum, correct, penalties)
    assert sums[engine.CORRECT] == correct and sums[engine.BAD_LABELS] == sums[engine.BAD_INDICES] == 0
    assert sums[engine.LOSS] == pytest.approx(loss_sum, rel=1e-12)
    assert 64 * sums[engine.PENALTY_FULL] + 22 * sums[engine.PENALTY_LAST] == pytest.approx(penalties, rel=1e-12)


@pytest.mark.parametrize("device", BACKENDS)
def test_evaluate_equals_plain_batches(device):
    run = make_run(device)
    loss, acc = run.evaluate()
    xp = run.xp
    x = ops.augment_batch(run.x_val, xp.arange(70), seed=0, step=0, max_shift=0, flip=False)
    want_loss, _, want_correct = ops.softmax_cross_entropy(model.forward(run.params, x)[0], run.y_val)
    assert acc == want_correct / 70
    assert loss == pytest.approx(want_loss, rel=1e-6)  # summed per 1000-image batch vs at once


def test_progress_is_reported_every_step_on_the_cpu():
    run = make_run("cpu")
    seen = []
    run.train_epoch(lambda done, total, loss, acc: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("net", list(engine.MODELS))
@pytest.mark.parametrize("mode", [pytest.param(m, marks=CUDA_MARKS) for m in engine.PENALTY_MODES])
def test_graph_replay_equals_eager_launches_and_repeats(mode, net):
    # 2 epochs of 5 steps (4 full + 1 last): the full-batch graph is captured at step 2 of epoch 1
    # and replayed; the last-batch graph and the evaluation programs (validation, clean-train) run
    # eagerly in epoch 1 and are captured in epoch 2. ResNet-20's BN running statistics, updated
    # by every training step and read by every evaluation, must come out the same bits too.
    runs = [make_run("cuda", mode=mode, train_size=300, graph=graph, net=net) for graph in (True, False, True)]
    for run in runs:
        for _ in range(2):
            run.run_epoch()
    eng = runs[0].engine
    programs = [*eng.train_steps, *eng.eval_set("val").plan, *eng.eval_set("train_clean").plan]
    assert [program.graph is not None for program, _ in programs] == [True] * 4
    ref = runs[1]
    assert ref.engine.stream is None and all(program.graph is None for program, _ in ref.engine.train_steps)
    for run in (runs[0], runs[2]):
        for name in ("params", "grad", "net_state"):
            got, want = run.to_host(getattr(run, name)), ref.to_host(getattr(ref, name))
            assert np.array_equal(got, want), f"{name}: max diff {np.abs(got - want).max()}"
        for name in run.optimizer.STATE:
            got, want = run.to_host(getattr(run.optimizer, name)), ref.to_host(getattr(ref.optimizer, name))
            assert np.array_equal(got, want), name
        for key in ("train_loss", "val_loss", "val_acc", "train_clean_loss", "train_clean_acc"):
            assert [m[key] for m in run.history] == [m[key] for m in ref.history], key
    if net == "resnet20":  # the statistics did move: comparing them was not comparing two starts
        assert not np.array_equal(ref.to_host(ref.net_state), resnet.init_state(np.float32))


@pytest.mark.parametrize("net", [pytest.param(n, marks=CUDA_MARKS) for n in engine.MODELS])
def test_captured_programs_take_their_scratch_from_the_workspace(net):
    # The first call of each program sizes its stream's scratch workspace; capturing and replaying
    # them allocates nothing more, and the captures did take scratch from the workspace (the
    # loss's per-row partials, the penalty sum, BN's channel sums and split-K GEMMs need some).
    eng = make_run("cuda", net=net, train_size=300).engine
    val = eng.eval_set("val")
    programs = [eng.step(), eng.step(last=True), *(program for program, _ in val.plan)]

    def call_each():  # from the start of the data, so that every batch is in range
        eng.start_epoch(np.arange(300))
        with eng.stream:
            val.clock[...] = 0
        for program in programs:
            program()

    call_each()  # eagerly
    before = pyregnet.workspace_info(eng.stream)
    for _ in range(3):
        call_each()  # captured the first time, replayed every time
    eng.stream.synchronize()
    after = pyregnet.workspace_info(eng.stream)
    assert [program.graph is not None for program in programs] == [True] * 3
    bad = [engine.BAD_LABELS, engine.BAD_INDICES]
    assert np.array_equal(eng.metrics[bad].get(), [0, 0]) and np.array_equal(val.metrics[bad].get(), [0, 0])
    print("workspace before the captures", before, "after", after)
    assert (after["allocations"], after["bytes"]) == (before["allocations"], before["bytes"])
    assert after["capacity"] == before["capacity"] > 0
    assert after["captured_leases"] > before["captured_leases"]


class FakeStream:
    """Stands in for a CuPy stream: records what Program asks of it."""

    def __init__(self):
        self.log = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self):
        self.log.append("begin")

    def end_capture(self):
        self.log.append("end")
        log = self.log

        class Graph:
            def launch(self, stream=None):
                log.append("launch")
        return Graph()


def test_program_runs_eagerly_then_captures_once_and_replays():
    stream = FakeStream()
    program = engine.Program([Launch("body", lambda: stream.log.append("body"))], stream)
    for _ in range(4):
        program()
    # Call 1 runs eagerly (loading the kernels); call 2 captures the body (which then only
    # records) and launches the graph; calls 3 and 4 replay it.
    assert stream.log == ["body", "begin", "body", "end", "launch", "launch", "launch"]

    def failing():
        stream.log.append("body")
        if len(stream.log) > 1:
            raise RuntimeError("a launch failed during capture")

    stream.log = []
    program = engine.Program([Launch("body", failing)], stream)
    program()
    with pytest.raises(RuntimeError, match="during capture"):
        program()
    assert stream.log == ["body", "begin", "body", "end"]  # the capture is ended, not left open
    assert program.graph is None


def test_program_without_a_stream_always_runs_the_body():
    calls = []
    program = engine.Program([Launch("a", lambda: calls.append(1)), Launch("b", lambda: calls.append(2))], None)
    for _ in range(3):
        program()
    assert calls == [1, 2] * 3 and program.graph is None


# ---------------------------------------------------------------- the step as named launches

def test_layers_and_step_flops_by_hand():
    assert [(layer.name, layer.input, layer.output, layer.pooled) for layer in model.LAYERS] == [
        ("conv1", (3, 32, 32), (32, 30, 30), (32, 15, 15)), ("conv2", (32, 15, 15), (64, 13, 13), (64, 6, 6)),
        ("dense1", (2304,), (128,), ()), ("dense2", (128,), (10,), ())]
    # Multiply-adds of the forward pass, batch 64, written out from the shapes:
    conv1 = 64 * 32 * 30 * 30 * (3 * 3 * 3)       # N K P Q (C R S) =  49,766,400
    conv2 = 64 * 64 * 13 * 13 * (32 * 3 * 3)      #                 = 199,360,512
    dense1, dense2 = 64 * 128 * 2304, 64 * 10 * 128
    macs = conv1 + conv2 + dense1 + dense2
    assert macs == 268_083_200
    f = model.step_flops(64)
    assert [f["per_layer"][k]["macs"] for k in ("conv1", "conv2", "dense1", "dense2")] == [conv1, conv2, dense1, dense2]
    assert f["forward"] == 2 * macs == 536_166_400
    # backward: dW for every layer, dX for every layer but the first (the input needs none)
    assert f["backward"] == 4 * macs - 2 * conv1 == 972_800_000
    assert f["total"] == 1_508_966_400 and f["per_layer"]["conv1"]["backward_dx"] == 0
    assert model.step_flops(1)["total"] * 64 == f["total"]


FORWARD = ["conv1.forward", "pool1.forward", "conv2.forward", "pool2.forward", "dense1.forward", "dense2.forward"]
BACKWARD = ["dense2.backward", "relu3.backward", "dense1.backward", "pool2+relu2.backward", "conv2.backward",
            "pool1+relu1.backward", "conv1.backward"]
UPDATE = {"fused": ["update"], "proximal": ["update"], "unfused": ["penalty_gradient", "update"],
          "loss": ["penalty", "penalty_gradient", "update"]}


@pytest.mark.parametrize("mode", optim.UPDATE_MODES)
def test_the_step_is_its_named_launches(mode):
    run = make_run("cpu", mode="fused" if mode == "proximal" else mode, penalty_step=
                   "proximal" if mode == "proximal" else "gradient")
    assert run.engine.mode == mode
    full, last = run.engine.step(), run.engine.step(last=True)
    assert [launch.name for launch in full.launches] == \
        ["augment", "labels", *FORWARD, "loss", *BACKWARD, "clock", *UPDATE[mode]]
    assert [launch.name for launch in last.launches] == [launch.name for launch in full.launches]
    assert sum(launch.flops for launch in full.launches) == model.step_flops(64)["total"]
    assert sum(launch.flops for launch in last.launches) == model.step_flops(150 % 64)["total"]
    update = full.launches[-1]
    assert update.bytes == 7 * 4 * model.N_PARAMS        # Adam reads w, g, m, v and writes w, m, v
    assert all(launch.bytes > 0 for launch in full.launches if launch.name != "clock")
    # the engine runs exactly these launches: running them by hand is a step
    a, b = make_run("cpu"), make_run("cpu")
    order = np.arange(150)
    a.engine.train_epoch(order)
    b.engine.start_epoch(order)
    for program, count in b.engine.train_steps:
        for _ in range(count):
            for launch in program.launches:
                launch.fn()
    assert np.array_equal(a.params, b.params) and np.array_equal(a.engine.metrics, b.engine.metrics)


def test_sgd_update_moves_five_arrays_and_no_penalty_is_the_plain_update():
    params = np.zeros(100, np.float32)
    opt = optim.make("sgd", params, 0.1)
    for mode in optim.UPDATE_MODES:
        launches = opt.launches(params, params.copy(), Penalty(), mode, penalized=60, step=1)
        assert [x.name for x in launches] == ["update"] and launches[0].bytes == 5 * 4 * 100
    with pytest.raises(ValueError, match="mode: expected one of"):
        opt.launches(params, params, Penalty(), "fast", penalized=60, step=1)
    assert optim.update_mode("loss", "gradient") == "loss" and optim.update_mode("fused", "proximal") == "proximal"


def test_an_engine_needs_no_trainer():
    ds = data.load(None, dataset="synthetic", train_size=128, val_size=10, seed=0)
    params = model.init_params(0)
    eng = engine.Engine(params, np.zeros_like(params), optim.make("adam", params, 1e-3), Penalty(),
                        (ds.x_train, ds.y_train), batch_size=64, seed=0)
    sums, steps = eng.train_epoch(np.arange(128))
    assert steps == 2 and eng.optimizer.step == 2 and eng.step(last=True) is None
    assert 0 < sums[engine.LOSS] / 128 < 10 and sums[engine.BAD_LABELS] == sums[engine.BAD_INDICES] == 0
