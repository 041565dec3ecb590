"""A step as data: a named list of kernel launches (docs/design.md §2). The engine runs the list
(eagerly, or captured once as a CUDA graph and replayed); a benchmark iterates the same list to
time each launch beside its roofline, so the two cannot drift apart."""

from typing import Callable, NamedTuple


class Launch(NamedTuple):
    name: str           # "conv1.forward", "update", ...
    fn: Callable        # the launch itself, no arguments: everything it touches is bound
    flops: int = 0      # of its GEMM-like work (2 per multiply-add); elementwise work counts 0
    bytes: int = 0      # what it must move: the arrays it reads plus those it writes


def nbytes(*arrays):
    """Total bytes of the arrays (a lower bound on what a launch reading or writing them moves)."""
    return sum(int(a.nbytes) for a in arrays)


def run(launches):
    for launch in launches:
        launch.fn()
