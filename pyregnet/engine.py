"""Training and evaluation epochs with no host in the loop (docs/design.md §2).

Everything a step touches lives on the run's device and is allocated once: the uint8 data set,
the epoch's sample order, the activations (the network's Activations), the network's state (BN's
running statistics; none for the CNN), a clock and the metric sums. A step is a fixed list of
named kernel launches (launch.Launch) over those buffers:

    augment (gathers batch `clock` of the order, draws from (seed, step)) -> labels
    -> net.forward_launches (training mode) -> loss (sums into `metrics`) -> net.backward_launches
    -> clock += (1, batch) -> the optimizer's update launches in its mode (optim.UPDATE_MODES;
    step t read from the clock, the penalty value summed into `metrics`)

Engine.step() hands out that list (a benchmark times each launch of the real step), so on the
GPU it is captured once as a CUDA graph (CuPy stream capture) and replayed: each replay reads
the clock that the previous one advanced, so it gathers the next batch with fresh random draws
and applies the next Adam step. An epoch launches the full-batch graph n // batch times and a
second graph for the smaller last batch, then reads the metric sums once. The first call of each
program runs eagerly (it loads the kernels and sizes the scratch workspace), later calls replay
the capture: the results are the same bits either way (tests/test_engine.py). On the CPU the
same programs simply run, so one code path trains on both devices. Evaluation programs run the
forward pass (evaluation mode: BN reads the running statistics) and the loss over one image set
each (the validation set, the test set, the fixed clean-train subset: train.Run.eval_sets),
built on first use and sharing their activations.

The network is a module with pyregnet.model's interface (MODELS: the CNN, pyregnet.resnet's
ResNet-20): N_PARAMS, N_KERNEL (the leading, penalized range), N_STATE and init_state,
Activations, forward_launches(params, state, act, training) and backward_launches.
"""

import contextlib
from functools import partial

import numpy as np

from . import model, ops, resnet
from .launch import Launch, nbytes, run
from .optim import PENALTY_MODES, PENALTY_STEPS  # noqa: F401 -- the trainer's options name them here too

# metrics: [data-loss sum, correct, bad labels, bad sample indices, penalty sum of the full-batch
# steps, penalty sum of the last-batch steps]. Two penalty sums because a step's penalty counts
# once per image of its batch in the epoch's mean loss, as Keras reports it.
LOSS, CORRECT, BAD_LABELS, BAD_INDICES, PENALTY_FULL, PENALTY_LAST = range(6)
MAX_SHIFT = 3  # augmentation shifts of ±3 px, 10% of 32 (docs/design.md §1)
MODELS = {"cnn": model, "resnet20": resnet}  # --model: the networks the engine can run


class Program:
    """A fixed sequence of launches (launch.Launch): run eagerly, or on the GPU captured as a
    CUDA graph on its second call and replayed from then on."""

    def __init__(self, launches, stream=None):
        self.launches = list(launches)
        self.stream = stream  # a CuPy stream to capture on; None: eager
        self.calls, self.graph = 0, None

    def __call__(self):
        self.calls += 1
        if self.stream is None:
            run(self.launches)
            return
        with self.stream:
            # The first call runs eagerly: it loads every kernel and sizes the stream's scratch
            # workspace, which a capture may use but not grow (csrc/cuda/scratch.cuh).
            if self.calls == 1:
                run(self.launches)
                return
            if self.graph is None:
                self.stream.begin_capture()
                try:
                    run(self.launches)
                finally:
                    graph = self.stream.end_capture()
                self.graph = graph
            self.graph.launch(stream=self.stream)


def capture_stream(xp):
    """A CuPy stream to capture programs on, or None (NumPy: the programs run eagerly). Capture
    needs a stream other than the legacy default one; a blocking stream keeps the implicit
    ordering with work on the default stream (other arrays, benchmarks' events), so callers need
    not know about it."""
    if xp is np:
        return None
    import cupy
    return cupy.cuda.Stream(non_blocking=False)


class Engine:
    """The device-resident epochs over `params` (the flat buffer), `grad`, an optim optimizer and a
    regularizers.Penalty: training on train_set = (uint8 images, labels) in batches of batch_size,
    augmented from `seed` when `augment`, the penalty applied in optim.UPDATE_MODES `mode`;
    evaluation of eval_sets = {name: (images, labels, the indices evaluated)} in batches of
    eval_batch. capture: on the GPU, replay each program as a CUDA graph. net: the network (a
    module of MODELS); state: its state buffer on the device (net.init_state's when None), which
    the training step updates and evaluation reads."""

    def __init__(self, params, grad, optimizer, penalty, train_set, eval_sets=None, *, batch_size, seed,
                 augment=True, mode="fused", eval_batch=1000, capture=True, net=model, state=None):
        xp = model.array_module(params)
        self.xp, self.params, self.grad, self.optimizer, self.penalty = xp, params, grad, optimizer, penalty
        self.net = net
        self.state = xp.asarray(net.init_state(params.dtype)) if state is None else state
        self.x_train, self.y_train = train_set
        self.batch_size, self.seed, self.augment, self.mode = batch_size, seed, augment, mode
        self.stream = capture_stream(xp) if capture else None  # None: the programs run eagerly
        self.order = xp.zeros(len(self.y_train), dtype=np.int32)
        self.clock = xp.zeros(2, dtype=np.int64)      # [updates done, position in the order]
        self.metrics = xp.zeros(6, dtype=np.float64)
        self.train_steps = self._programs(len(self.y_train), batch_size, self._train_step)
        self.eval_sets, self.eval_batch = eval_sets or {}, eval_batch
        self.evals = {}       # image set name -> EvalSet, built on first use
        self._eval_acts = {}  # batch size -> Activations: the image sets' programs share them

    def step(self, last=False):
        """The training step program (its .launches: the step as named launches) of a full batch,
        or with `last` of the smaller last batch (None when the batch divides the set)."""
        n, batch = len(self.y_train), self.batch_size
        if (n % batch == 0) if last else (n < batch):
            return None
        return self.train_steps[-1 if last else 0][0]

    def eval_set(self, name):
        """The evaluation programs over the image set `name` (eval_sets[name]: images, labels and
        the indices to evaluate), built on first use."""
        if name not in self.evals:
            images, labels, index = self.eval_sets[name]
            xp = self.xp
            s = EvalSet(images, labels, xp.asarray(np.asarray(index, dtype=np.int32)),
                        xp.zeros(1, dtype=np.int64), xp.zeros(6, dtype=np.float64))
            s.plan = self._programs(len(index), self.eval_batch, lambda batch, last: self._eval_step(batch, s))
            self.evals[name] = s
        return self.evals[name]

    def _programs(self, n, batch, step):
        """[(program, count)]: the full-batch program n // batch times, then the last batch."""
        plan = []
        if n // batch:
            plan.append((Program(step(batch, last=False), self.stream), n // batch))
        if n % batch:
            plan.append((Program(step(n % batch, last=True), self.stream), 1))
        return plan

    # ------------------------------------------------------------ the step programs

    def _gather(self, images, labels, index, offset, act, bad_indices, **augment):
        """Launches that gather (and augment) the batch at `offset` of `index` into act.x and its
        labels into act.labels."""
        batch = act.x.shape[0]
        pixels = batch * int(np.prod(images.shape[1:])) * images.itemsize  # the images read
        return [Launch("augment", partial(ops.augment_batch, images, index, offset=offset, out=act.x,
                                          into=bad_indices, **augment), bytes=pixels + nbytes(act.x) + 4 * batch),
                Launch("labels", partial(ops.take, labels, index, offset=offset, out=act.labels),
                       bytes=batch * (labels.itemsize + 4) + nbytes(act.labels))]

    def _tick(self, clock, tick):
        return Launch("clock", partial(clock.__iadd__, tick))  # advances the step and the position

    def _train_step(self, batch, last):
        xp, params, net = self.xp, self.params, self.net
        act = net.Activations(xp, batch, params.dtype)
        tick = xp.asarray([1, self.batch_size], dtype=np.int64)  # kept: the captured add reads it
        step, offset, m = self.clock[0:1], self.clock[1:2], self.metrics
        penalty_sum = m[PENALTY_LAST:PENALTY_LAST + 1] if last else m[PENALTY_FULL:PENALTY_FULL + 1]
        shift = MAX_SHIFT if self.augment else 0
        return [*self._gather(self.x_train, self.y_train, self.order, offset, act, m[BAD_INDICES:BAD_INDICES + 1],
                              seed=self.seed, step=step, max_shift=shift, flip=self.augment),
                *net.forward_launches(params, self.state, act, training=True),
                Launch("loss", partial(ops.softmax_cross_entropy, act.logits, act.labels, dlogits=act.dlogits,
                                       into=m[LOSS:BAD_LABELS + 1]), bytes=nbytes(act.logits, act.labels, act.dlogits)),
                *net.backward_launches(params, act, act.dlogits, self.grad),
                self._tick(self.clock, tick),  # the update below is step t = updates done + 1
                *self.optimizer.launches(params, self.grad, self.penalty, self.mode, penalized=net.N_KERNEL,
                                         step=step, into=penalty_sum)]

    def _eval_step(self, batch, s):
        xp = self.xp
        if batch not in self._eval_acts:
            self._eval_acts[batch] = self.net.Activations(xp, batch, self.params.dtype, backward=False)
        act = self._eval_acts[batch]
        tick = xp.asarray([batch], dtype=np.int64)
        m = s.metrics
        return [*self._gather(s.images, s.labels, s.index, s.clock, act, m[BAD_INDICES:BAD_INDICES + 1],
                              seed=0, step=0, max_shift=0, flip=False),
                *self.net.forward_launches(self.params, self.state, act, training=False),
                Launch("loss", partial(ops.softmax_cross_entropy, act.logits, act.labels, dlogits=act.dlogits,
                                       into=m[LOSS:BAD_LABELS + 1]), bytes=nbytes(act.logits, act.labels, act.dlogits)),
                self._tick(s.clock, tick)]

    # ------------------------------------------------------------ epochs

    def _run(self, plan, progress=None):
        """Launches the plan's programs; progress(done, total, metrics) after each step on the
        CPU, where reading the sums costs nothing (on the GPU that would synchronize)."""
        total = sum(count for _, count in plan)
        done = 0
        for program, count in plan:
            for _ in range(count):
                program()
                done += 1
                if progress is not None and self.xp is np:
                    progress(done, total, self.metrics)

    def _stream(self):
        return self.stream if self.stream is not None else contextlib.nullcontext()

    def start_epoch(self, epoch_order):
        """Positions the step programs at the start of `epoch_order` (a NumPy permutation), the
        optimizer's step count and zero sums: what train_epoch does first (a benchmark timing the
        step's launches one by one starts from here)."""
        with self._stream():
            self.order[...] = self.xp.asarray(epoch_order.astype(np.int32))
            self.clock[...] = self.xp.asarray([self.optimizer.step, 0], dtype=np.int64)
            self.metrics[...] = 0

    def train_epoch(self, epoch_order, progress=None):
        """One pass over the training set in `epoch_order` (a NumPy permutation). Returns the
        metric sums as NumPy float64 (one read, the only synchronization of the epoch) and the
        number of steps taken."""
        self.start_epoch(epoch_order)
        with self._stream():
            self._run(self.train_steps, progress)
            sums = _to_host(self.metrics)
        steps = sum(count for _, count in self.train_steps)
        self.optimizer.step += steps
        return sums, steps

    def evaluate(self, name="val"):
        """Metric sums over the image set `name` (see eval_set), no augmentation, as NumPy float64."""
        s = self.eval_set(name)
        with self._stream():
            s.clock[...] = 0
            s.metrics[...] = 0
            self._run(s.plan)
            return _to_host(s.metrics)


class EvalSet:
    """One image set's evaluation: what its programs read and the sums they write."""

    def __init__(self, images, labels, index, clock, metrics):
        self.images, self.labels, self.index = images, labels, index
        self.clock, self.metrics = clock, metrics  # position in `index`; the metric sums
        self.plan = []


def _to_host(a):
    return a.get() if hasattr(a, "get") else a.copy()
