"""Adam's state and hyper-parameters over the flat parameter buffer. The update itself is one
ops.adam_update launch per step, fused with the penalty gradient on the leading kernel weights
(DESIGN.md §1-2), issued by pyregnet.engine inside the captured step."""

from dataclasses import dataclass


@dataclass
class Adam:
    m: object      # first moment, same shape/device/dtype as the parameters
    v: object      # second moment
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7
    step: int = 0  # updates done (the engine's device clock holds it during an epoch)

    @classmethod
    def zeros_like(cls, params, **hyper):
        m = params.copy()
        m[...] = 0
        v = m.copy()
        return cls(m, v, **hyper)
