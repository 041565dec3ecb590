"""Training and evaluation epochs with no host in the loop (docs/design.md §2).

Everything a step touches lives on the run's device and is allocated once: the uint8 data set,
the epoch's sample order, the activations (model.Activations), a clock and the metric sums. A
step is a fixed sequence of kernel launches over those buffers:

    augment_batch (gathers batch `clock` of the order, draws from (seed, step))  -> take (labels)
    -> model.forward -> softmax_cross_entropy (sums into `metrics`) -> model.backward
    -> clock += (1, batch) -> the penalty + Adam update (step t read from the clock, the penalty
    value summed into `metrics`)

so on the GPU it is captured once as a CUDA graph (CuPy stream capture) and replayed: each
replay reads the clock that the previous one advanced, so it gathers the next batch with fresh
random draws and applies the next Adam step. An epoch launches the full-batch graph
n // batch times and a second graph for the smaller last batch, then reads the metric sums
once. The first call of each program runs eagerly (it loads the kernels), later calls replay
the capture: the results are the same bits either way (tests/test_engine.py). On the CPU the
same programs simply run, so one code path trains on both devices. Evaluation programs run the
forward pass and the loss over one image set each (the validation set, the test set, the fixed
clean-train subset: train.Run.eval_sets), built on first use and sharing their activations.
"""

import contextlib

import numpy as np

from . import model, ops

# metrics: [data-loss sum, correct, bad labels, bad sample indices, penalty sum of the full-batch
# steps, penalty sum of the last-batch steps]. Two penalty sums because a step's penalty counts
# once per image of its batch in the epoch's mean loss, as Keras reports it.
LOSS, CORRECT, BAD_LABELS, BAD_INDICES, PENALTY_FULL, PENALTY_LAST = range(6)
PENALTY_MODES = ("fused", "unfused", "loss")  # how the penalty gradient is applied: the same numbers
PENALTY_STEPS = ("gradient", "proximal")  # the penalty before the optimizer step, or after it (fused only)
MAX_SHIFT = 3  # augmentation shifts of ±3 px, 10% of 32 (docs/design.md §1)


class Program:
    """A fixed sequence of launches: run eagerly, or on the GPU captured as a CUDA graph on its
    second call and replayed from then on."""

    def __init__(self, body, stream=None):
        self.body, self.stream = body, stream  # stream: a CuPy stream to capture on; None: eager
        self.calls, self.graph = 0, None

    def __call__(self):
        self.calls += 1
        if self.stream is None:
            self.body()
            return
        with self.stream:
            if self.calls == 1:  # the first call runs eagerly: it loads every kernel
                self.body()
                return
            if self.graph is None:
                self.stream.begin_capture()
                try:
                    self.body()
                finally:
                    graph = self.stream.end_capture()
                self.graph = graph
            self.graph.launch(stream=self.stream)


class Engine:
    """The device-resident epochs of a train.Run (its parameters, Adam state, penalty, data)."""

    def __init__(self, run, eval_batch, capture=True):
        cfg, xp = run.config, run.xp
        self.run, self.xp = run, xp
        self.stream = None  # the CuPy stream the programs capture on; None: they run eagerly
        if capture and xp is not np:
            import cupy
            # Capture needs a stream other than the legacy default one; a blocking stream keeps
            # the implicit ordering with work on the default stream (the run's other arrays,
            # benchmarks' events), so callers need not know about it.
            self.stream = cupy.cuda.Stream(non_blocking=False)
        self.order = xp.zeros(len(run.y_train), dtype=np.int32)
        self.clock = xp.zeros(2, dtype=np.int64)      # [Adam updates done, position in the order]
        self.metrics = xp.zeros(6, dtype=np.float64)
        self.train_steps = self._programs(len(run.y_train), cfg.batch_size, self._train_step)
        self.eval_batch = eval_batch
        self.evals = {}       # image set name -> EvalSet, built on first use
        self._eval_acts = {}  # batch size -> Activations: the image sets' programs share them

    def eval_set(self, name):
        """The evaluation programs over the run's image set `name` (run.eval_sets[name]: images,
        labels and the indices to evaluate), built on first use."""
        if name not in self.evals:
            images, labels, index = self.run.eval_sets[name]
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

    def _train_step(self, batch, last):
        run, xp = self.run, self.xp
        cfg, optimizer, penalty = run.config, run.optimizer, run.penalty
        act = model.Activations(xp, batch, run.params.dtype)
        tick = xp.asarray([1, cfg.batch_size], dtype=np.int64)  # kept: the captured add reads it
        step, offset = self.clock[0:1], self.clock[1:2]
        m = self.metrics
        sums = m[LOSS:BAD_LABELS + 1]
        bad_indices = m[BAD_INDICES:BAD_INDICES + 1]
        penalty_sum = m[PENALTY_LAST:PENALTY_LAST + 1] if last else m[PENALTY_FULL:PENALTY_FULL + 1]
        n_kernel, kernels = model.N_KERNEL, run.params[:model.N_KERNEL]
        with_penalty = penalty.kind != "none"
        mode = cfg.penalty_mode
        proximal = cfg.penalty_step == "proximal"  # lives in the fused update (train refuses other modes)
        shift = MAX_SHIFT if cfg.augment else 0

        def body():
            ops.augment_batch(run.x_train, self.order, seed=cfg.seed, step=step, offset=offset, max_shift=shift,
                              flip=cfg.augment, out=act.x, into=bad_indices)
            ops.take(run.y_train, self.order, offset=offset, out=act.labels)
            logits, _ = model.forward(run.params, act.x, act)
            ops.softmax_cross_entropy(logits, act.labels, dlogits=act.dlogits, into=sums)
            model.backward(run.params, act, act.dlogits, run.grad)
            self.clock += tick  # the update below is step t = updates done + 1
            l1, l2 = penalty.l1, penalty.l2
            if with_penalty and mode == "unfused":
                ops.penalty_gradient(run.params, run.grad, l1, l2, penalized=n_kernel, with_penalty=True,
                                     into=penalty_sum)
            elif with_penalty and mode == "loss":
                ops.penalty(kernels, l1, l2, into=penalty_sum)
                ops.penalty_gradient(run.params, run.grad, l1, l2, penalized=n_kernel)
            fused = with_penalty and mode == "fused"
            optimizer.update(run.params, run.grad, step=step, l1=l1 if fused else 0.0, l2=l2 if fused else 0.0,
                             penalized=n_kernel, proximal=proximal and fused, with_penalty=fused,
                             into=penalty_sum if fused else None)
        return body

    def _eval_step(self, batch, s):
        run, xp = self.run, self.xp
        if batch not in self._eval_acts:
            self._eval_acts[batch] = model.Activations(xp, batch, run.params.dtype, backward=False)
        act = self._eval_acts[batch]
        tick = xp.asarray([batch], dtype=np.int64)
        m = s.metrics

        def body():
            ops.augment_batch(s.images, s.index, seed=0, step=0, offset=s.clock, max_shift=0,
                              flip=False, out=act.x, into=m[BAD_INDICES:BAD_INDICES + 1])
            ops.take(s.labels, s.index, offset=s.clock, out=act.labels)
            logits, _ = model.forward(run.params, act.x, act)
            ops.softmax_cross_entropy(logits, act.labels, dlogits=act.dlogits, into=m[LOSS:BAD_LABELS + 1])
            s.clock += tick
        return body

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

    def train_epoch(self, epoch_order, progress=None):
        """One pass over the training set in `epoch_order` (a NumPy permutation). Returns the
        metric sums as NumPy float64 (one read, the only synchronization of the epoch) and the
        number of steps taken."""
        run, xp = self.run, self.xp
        with self._stream():
            self.order[...] = xp.asarray(epoch_order.astype(np.int32))
            self.clock[...] = xp.asarray([run.optimizer.step, 0], dtype=np.int64)
            self.metrics[...] = 0
            self._run(self.train_steps, progress)
            sums = _to_host(self.metrics)
        steps = sum(count for _, count in self.train_steps)
        run.optimizer.step += steps
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
