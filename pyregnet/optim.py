"""Adam with the fused penalty over the flat parameter buffer: one ops.adam_update launch per
step, the penalty gradient on the leading kernel weights only (DESIGN.md §1-2)."""

from dataclasses import dataclass

from . import ops
from .regularizers import Penalty


@dataclass
class Adam:
    m: object      # first moment, same shape/device/dtype as the parameters
    v: object      # second moment
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7
    step: int = 0  # updates done

    @classmethod
    def zeros_like(cls, params, **hyper):
        m = params.copy()
        m[...] = 0
        v = m.copy()
        return cls(m, v, **hyper)

    def update(self, params, grad, penalty: Penalty, n_penalized: int, with_penalty=False):
        """One step; with_penalty: returns the penalty value of the weights before the step,
        summed in the update's own pass."""
        self.step += 1
        return ops.adam_update(params, grad, self.m, self.v, step=self.step, lr=self.lr, beta1=self.beta1,
                               beta2=self.beta2, eps=self.eps, l1=penalty.l1, l2=penalty.l2, penalized=n_penalized,
                               with_penalty=with_penalty)
