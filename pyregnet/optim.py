"""The optimizers' state and hyper-parameters over the flat parameter buffer. Each owns its
update and the ways the weight penalty enters it (UPDATE_MODES), as the launches that
pyregnet.engine issues inside the captured step: fused (one launch: ops.adam_update or
ops.sgd_update adds the penalty's (sub)gradient to the leading kernel weights' gradient and sums
its value in the same pass), unfused (a penalty-gradient pass, then the update), loss (the
penalty's value, its gradient, then the update: as autodiff frameworks do it) and proximal (the
fused update with the penalty as the proximal operator after the step). fused, unfused and loss
compute the same numbers at different costs (bench/penalty_cost.py)."""

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from . import ops
from .launch import Launch, nbytes

OPTIMIZERS = ("adam", "sgd")
PENALTY_MODES = ("fused", "unfused", "loss")  # how the penalty gradient is applied: the same numbers
PENALTY_STEPS = ("gradient", "proximal")  # the penalty before the optimizer step, or after it (fused only)
UPDATE_MODES = PENALTY_MODES + ("proximal",)


def update_mode(penalty_mode, penalty_step):
    """The UPDATE_MODES entry of a run's --penalty-mode and --penalty-step (proximal is fused)."""
    return "proximal" if penalty_step == "proximal" else penalty_mode
DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}   # the paper's Adam; a common SGD-with-momentum start on CIFAR-10
DEFAULT_MOMENTUM = 0.9


def _zeros_like(params):
    z = params.copy()
    z[...] = 0
    return z


class _Updates:
    """The update launches shared by the optimizers (each defines update() and STATE)."""

    def launches(self, params, grad, penalty, mode, *, penalized, step, into=None):
        """One step's launches in UPDATE_MODES `mode` with `penalty` (a regularizers.Penalty) on
        the first `penalized` elements; its value summed into `into` (float64 (1,)) when given.
        With no penalty every mode is the plain update."""
        if mode not in UPDATE_MODES:
            raise ValueError(f"mode: expected one of {', '.join(UPDATE_MODES)} but got {mode!r}")
        l1, l2, on = penalty.l1, penalty.l2, penalty.kind != "none"
        kernels, out = params[:penalized], []
        if on and mode == "unfused":
            out.append(Launch("penalty_gradient", partial(ops.penalty_gradient, params, grad, l1, l2, penalized=penalized,
                                                          with_penalty=True, into=into), bytes=3 * kernels.nbytes))
        elif on and mode == "loss":
            out += [Launch("penalty", partial(ops.penalty, kernels, l1, l2, into=into), bytes=kernels.nbytes),
                    Launch("penalty_gradient", partial(ops.penalty_gradient, params, grad, l1, l2, penalized=penalized),
                           bytes=3 * kernels.nbytes)]
        fused = on and mode in ("fused", "proximal")
        state = [getattr(self, k) for k in self.STATE]
        out.append(Launch("update", partial(self.update, params, grad, step=step, l1=l1 if fused else 0.0,
                                            l2=l2 if fused else 0.0, penalized=penalized,
                                            proximal=fused and mode == "proximal", with_penalty=fused,
                                            into=into if fused else None),
                          bytes=nbytes(params, grad, *state) + nbytes(params, *state)))  # read all, write w + state
        return out


@dataclass
class Adam(_Updates):
    m: object      # first moment, same shape/device/dtype as the parameters
    v: object      # second moment
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7
    step: int = 0  # updates done (the engine's device clock holds it during an epoch)
    STATE: ClassVar = ("m", "v")  # the arrays a checkpoint keeps

    @classmethod
    def zeros_like(cls, params, **hyper):
        return cls(_zeros_like(params), _zeros_like(params), **hyper)

    def update(self, params, grad, *, step, **penalty):
        """One step; `step` (t >= 1) may be an int64 device array read when the kernel runs;
        `penalty`: ops.adam_update's l1, l2, penalized, proximal, with_penalty, into."""
        return ops.adam_update(params, grad, self.m, self.v, step=step, lr=self.lr, beta1=self.beta1,
                               beta2=self.beta2, eps=self.eps, **penalty)


@dataclass
class SGD(_Updates):
    """PyTorch's SGD with momentum (no dampening, no Nesterov)."""
    velocity: object   # the momentum buffer
    lr: float = 1e-2
    momentum: float = DEFAULT_MOMENTUM
    step: int = 0
    STATE: ClassVar = ("velocity",)

    @classmethod
    def zeros_like(cls, params, **hyper):
        return cls(_zeros_like(params), **hyper)

    def update(self, params, grad, *, step, **penalty):
        """One step (`step` is not needed: SGD has no bias correction); `penalty` as Adam's."""
        return ops.sgd_update(params, grad, self.velocity, lr=self.lr, momentum=self.momentum, **penalty)


def make(name, params, lr, momentum=DEFAULT_MOMENTUM):
    """The optimizer `name` ("adam" or "sgd") with zero state over `params`."""
    if name == "adam":
        return Adam.zeros_like(params, lr=lr)
    if name == "sgd":
        return SGD.zeros_like(params, lr=lr, momentum=momentum)
    raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)} but got {name!r}")
