"""The optimizers' state and hyper-parameters over the flat parameter buffer. Each owns its
update: one fused launch per step (ops.adam_update or ops.sgd_update) that applies the weight
penalty to the leading kernel weights, as a (sub)gradient before the step or as the proximal
operator after it, issued by pyregnet.engine inside the captured step."""

from dataclasses import dataclass
from typing import ClassVar

from . import ops

OPTIMIZERS = ("adam", "sgd")
DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}   # the paper's Adam; a common SGD-with-momentum start on CIFAR-10
DEFAULT_MOMENTUM = 0.9


def _zeros_like(params):
    z = params.copy()
    z[...] = 0
    return z


@dataclass
class Adam:
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
class SGD:
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
