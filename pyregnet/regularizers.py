"""The penalty spec: which regularizer, with which λ (docs/design.md §1, the paper's eq. 1-3).

    none   0
    l1     λ1 Σ|w|
    l2     λ2 Σw²          (gradient 2 λ2 w; PyTorch's weight_decay = 2 λ2)
    l1l2   λ1 Σ|w| + λ2 Σw²

over the kernel weights (conv and dense), not the biases, as Keras' kernel_regularizer.
"""

import math
from dataclasses import dataclass

from . import ops

KINDS = ("none", "l1", "l2", "l1l2")

# Default λ per penalty: experiment E2's choice (docs/experiments.md; docs/results/E2/chosen.json,
# docs/results.md "E2"): the best mean held-out accuracy over epochs 18-20 of 20, 5,000 training
# images held out, no augmentation, seed 0, the paper's CNN with Adam lr 1e-3 (L1 68.02%, L2
# 69.05%, L1L2 69.26%). The test set chose nothing. Other networks, optimizers or augmentation
# want their own grid (E5 and E8 run theirs).
DEFAULT_L1 = {"l1": 3e-5, "l1l2": 3e-5}
DEFAULT_L2 = {"l2": 1e-3, "l1l2": 3e-4}


@dataclass(frozen=True)
class Penalty:
    kind: str = "none"
    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"reg: expected one of {', '.join(KINDS)} but got {self.kind!r}")
        for name in ("l1", "l2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0 but got {value!r}")
        if self.l1 > 0 and "l1" not in self.kind:
            raise ValueError(f"l1: λ1 = {self.l1:g} given but --reg {self.kind} has no L1 term (use --reg l1 or l1l2)")
        if self.l2 > 0 and self.kind not in ("l2", "l1l2"):
            raise ValueError(f"l2: λ2 = {self.l2:g} given but --reg {self.kind} has no L2 term (use --reg l2 or l1l2)")

    @classmethod
    def with_defaults(cls, kind, l1=None, l2=None):
        """The penalty `kind` with λ given or, when None, the default for that kind."""
        return cls(kind, DEFAULT_L1.get(kind, 0.0) if l1 is None else l1,
                   DEFAULT_L2.get(kind, 0.0) if l2 is None else l2)

    def value(self, kernels):
        """λ1 Σ|w| + λ2 Σw² over the flat kernel weights (a view of the parameter buffer)."""
        return 0.0 if self.kind == "none" else ops.penalty(kernels, self.l1, self.l2)

    def describe(self):
        terms = {"none": "no penalty", "l1": f"L1 λ1={self.l1:g}", "l2": f"L2 λ2={self.l2:g}",
                 "l1l2": f"L1L2 λ1={self.l1:g} λ2={self.l2:g}"}
        return terms[self.kind]
