"""The command lines' argument types, and python -m pyregnet.train's options declared once.

The trainer builds its parser from TRAIN_OPTIONS; the sweep and the experiments add the options
they pass through to each run from the same declaration (not given: the trainer's default) and
turn the parsed values back into train arguments (docs/design.md §2).
"""

import argparse
import dataclasses
import decimal
import math

from .engine import MODELS, PENALTY_MODES, PENALTY_STEPS
from .optim import DEFAULT_LR, DEFAULT_MOMENTUM, OPTIMIZERS
from .regularizers import KINDS

SEED_MAX = 2**63 - 1  # the augmentation draws take the seed as a 64-bit integer on both backends
MAX_SEEDS = 10_000    # a sweep's seed list: a typo such as 0-100000000 is refused, not planned
DEVICES = ("auto", "cuda", "cpu")
DATASETS = ("cifar10", "synthetic")


class UsageError(Exception):
    """Bad arguments, data or state: one line for the user, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(message)


# ---------------------------------------------------------------- argument types

def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 but got {text}")
    return value


def count(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 but got {text}")
    return value


def momentum(text):
    value = float(text)
    if not (0.0 <= value < 1.0):
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) but got {text}")
    return value


def lam(text):
    """A penalty weight λ >= 0; text that float64 would round to 0 is refused unless it is 0."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 but got {text}")
    if value == 0 and decimal.Decimal(text.strip()) != 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a number float64 can hold (>= 5e-324) but got {text}, "
                                         f"which would be 0: give 0 to turn the term off")
    return value


def seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer but got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63 - 1 but got {text}")
    return value


def lr(text):
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0 but got {text}")
    return value


def _unique_list(text, item, expected):
    """The comma-separated items of text parsed by `item`, each once, in order."""
    values = []
    for part in text.split(","):
        if part.strip():
            value = item(part.strip())
            if value not in values:
                values.append(value)
    if not values:
        raise argparse.ArgumentTypeError(f"expected {expected} but got {text!r}")
    return values


def _pair(part):
    halves = part.split(":")
    if len(halves) != 2:
        raise argparse.ArgumentTypeError(f"expected λ1:λ2 pairs such as 1e-5:1e-4 but got {part!r}")
    return lam(halves[0].strip()), lam(halves[1].strip())


def lams(text):
    """Comma-separated λ, each once, in order."""
    return _unique_list(text, lam, "a comma-separated list of numbers")


def lam_pairs(text):
    """Comma-separated λ1:λ2 pairs, each once, in order."""
    return _unique_list(text, _pair, "comma-separated λ1:λ2 pairs")


def lam_pair(text):
    values = lam_pairs(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one λ1:λ2 pair but got {text!r}")
    return values[0]


def seeds(text):
    """Seeds such as 0,1,2 or 0-4, each once, in order; at most MAX_SEEDS."""
    found = {}  # a dict: unique and in order, in linear time
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            lo, hi = seed(lo), seed(hi) if hi else seed(lo)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"expected seeds such as 0,1,2 or 0-4 but got {part!r}: {e}") from None
        if hi < lo:
            raise argparse.ArgumentTypeError(f"expected a range low-high with low <= high but got {part!r}")
        if hi - lo >= MAX_SEEDS or len(found.keys() | range(lo, hi + 1)) > MAX_SEEDS:
            raise argparse.ArgumentTypeError(f"expected at most {MAX_SEEDS} seeds but {text!r} names more")
        found.update(dict.fromkeys(range(lo, hi + 1)))
    if not found:
        raise argparse.ArgumentTypeError(f"expected seeds such as 0,1,2 or 0-4 but got {text!r}")
    return list(found)


def penalties(text):
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"expected a list of {', '.join(KINDS)} but got {text!r}")
    return list(dict.fromkeys(kinds))


def gpus(text):
    ids = [g.strip() for g in text.split(",") if g.strip()]
    if not ids:
        raise argparse.ArgumentTypeError(f"expected GPU ids such as 0,1 but got {text!r}")
    return ids


def num(x):
    """A float as the shortest text that reads back to it: 1e-05, 0.0001, 0.001."""
    return repr(float(x))


# ---------------------------------------------------------------- the trainer's options

@dataclasses.dataclass(frozen=True)
class Option:
    """One option of python -m pyregnet.train."""
    flag: str
    kwargs: dict                # for add_argument: type, choices, metavar, action, default, help
    passed: bool = False        # a sweep passes it through to every run it launches
    defines_run: bool = False   # runs that differ in it are different experiments (config.json records it)
    added_later: bool = False   # config.json of runs made before it existed lacks it: read as the default
    source: bool = False        # --data or --dataset: one of the two

    @property
    def dest(self):
        return self.kwargs.get("dest") or self.flag.lstrip("-").replace("-", "_")


TRAIN_OPTIONS = (
    Option("--model", dict(choices=tuple(MODELS), default="cnn", help=f"cnn: the paper's CNN ({MODELS['cnn'].N_PARAMS:,} "
                           f"parameters); resnet20: He et al.'s CIFAR-10 ResNet-20 with batch normalization "
                           f"({MODELS['resnet20'].N_PARAMS:,} parameters; the penalty on its conv and dense kernels, "
                           f"not on BN's γ and β)"),
           passed=True, defines_run=True, added_later=True),
    Option("--reg", dict(default="none", choices=KINDS, help="weight penalty on the conv and dense kernels: none, "
                         "L1 (λ1 Σ|w|), L2 (λ2 Σw²) or both"), defines_run=True),
    Option("--l1", dict(type=lam, default=None, help="λ1 (default: the grid-search choice for --reg)"),
           defines_run=True),
    Option("--l2", dict(type=lam, default=None, help="λ2 (default: the grid-search choice for --reg)"),
           defines_run=True),
    Option("--epochs", dict(type=positive_int, default=20), passed=True),
    Option("--batch-size", dict(type=positive_int, default=64), passed=True, defines_run=True),
    Option("--optimizer", dict(choices=OPTIMIZERS, default="adam", help="adam (the paper's: β1 0.9, β2 0.999, ε "
                               "1e-7) or sgd (with momentum, PyTorch's: no dampening, no Nesterov)"),
           passed=True, defines_run=True, added_later=True),
    Option("--lr", dict(type=lr, default=None, help="learning rate (default: "
                        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")"),
           passed=True, defines_run=True),
    Option("--momentum", dict(type=momentum, default=None,
                              help=f"SGD's momentum, in [0, 1) (default {DEFAULT_MOMENTUM:g}; --optimizer sgd only)"),
           passed=True, defines_run=True, added_later=True),
    Option("--penalty-step", dict(choices=PENALTY_STEPS, default="gradient", help="gradient: the penalty's "
                                  "(sub)gradient l1·sign(w) + 2·l2·w is added to the data gradient before the "
                                  "optimizer step (the paper's and Keras' way); proximal: the step sees the data "
                                  "gradient alone, then each kernel weight z becomes sign(z)·max(|z| − lr·l1, 0)/"
                                  "(1 + 2·lr·l2), which makes exact zeros under L1 and is decoupled weight decay "
                                  "under L2"), passed=True, defines_run=True, added_later=True),
    Option("--seed", dict(type=seed, default=0, help="initialization, data order and augmentation (0 to 2**63 - 1)"),
           defines_run=True),
    Option("--data", dict(metavar="PATH", default=None, help="CIFAR-10 at PATH: cifar-10-python.tar.gz, "
                          "cifar-10-batches-py/, or an image-folder tree (train/<class>, test/<class>) or its "
                          ".tar.gz"), passed=True, defines_run=True, source=True),
    Option("--dataset", dict(choices=DATASETS, default="cifar10", help="cifar10: from the cache ($PYREGNET_DATA or "
                             "~/.cache/pyregnet), downloaded on first use"), passed=True, defines_run=True,
           source=True),
    Option("--train-size", dict(type=positive_int, default=None, help="train on a subset of N images"),
           passed=True, defines_run=True),
    Option("--val-size", dict(type=positive_int, default=None,
                              help="use a subset of N test images (the validation set when --holdout is 0)"),
           passed=True, defines_run=True),
    Option("--holdout", dict(type=count, default=0, metavar="N", help="hold out N training images (a fixed "
                             "class-stratified pick, the same for every seed) as the validation set; the test set is "
                             "then only reported. 0: validate on the test set, as the paper does"),
           passed=True, defines_run=True, added_later=True),
    Option("--device", dict(choices=DEVICES, default="auto"), passed=True),
    Option("--no-augment", dict(dest="augment", action="store_false",
                                help="turn off the random flips and ±3 px shifts"), passed=True, defines_run=True),
    Option("--penalty-mode", dict(choices=PENALTY_MODES, default="fused", help="how the penalty is applied (same "
                                  "result, different cost): fused into the Adam pass, unfused (its own gradient "
                                  "pass), or loss (a value reduction plus a gradient pass, as autodiff frameworks "
                                  "do); see bench/penalty_cost.py")),
    Option("--no-graph", dict(dest="graph", action="store_false", help="on the GPU, launch each step's kernels one "
                              "by one instead of replaying the step captured as a CUDA graph (the same results, "
                              "slower; for debugging and benchmarks)")),
    Option("--out", dict(metavar="DIR", default=None, help="output directory (default runs/<reg>-seed<seed>)")),
    Option("--resume", dict(action="store_true", help="continue the run in --out from its checkpoint")),
)
PASSED = tuple(o for o in TRAIN_OPTIONS if o.passed)
# The config.json keys that must agree for a finished run to count as the one a sweep asks for.
RUN_KEYS = tuple(o.dest for o in TRAIN_OPTIONS if o.defines_run)
OPTIONAL_KEYS = tuple(o.dest for o in TRAIN_OPTIONS if o.added_later)


def _add(parser, options, override=None):
    """Adds `options` to `parser` (--data and --dataset as mutually exclusive), their keyword
    arguments updated from override[dest]."""
    sources = None
    for option in options:
        kwargs = {**option.kwargs, **(override or {}).get(option.dest, {})}
        if option.source:
            sources = sources or parser.add_mutually_exclusive_group()
            sources.add_argument(option.flag, **kwargs)
        else:
            parser.add_argument(option.flag, **kwargs)


def add_train_options(parser):
    """python -m pyregnet.train's options, with its defaults and help."""
    _add(parser, TRAIN_OPTIONS)


def add_passed_options(parser, names=None, help=None):
    """The options a sweep passes through to its runs (only those whose dest is in `names`, when
    given) without the trainer's defaults: an option not given is not passed, so the run takes the
    trainer's default. help: {dest: text} for the options that show any."""
    override = {}
    for option in PASSED:
        kwargs = override[option.dest] = {"help": (help or {}).get(option.dest)}
        if option.kwargs.get("action") is None:
            kwargs["default"] = None
        if option.kwargs.get("type") in (positive_int, count):
            kwargs["metavar"] = "N"
    _add(parser, [o for o in PASSED if names is None or o.dest in names], override)


def passed_args(opts):
    """The passed-through options set in `opts` (an argparse namespace; a missing attribute is an
    option not given), as train arguments; floats as the shortest text that reads back to them."""
    args = []
    for option in PASSED:
        value = getattr(opts, option.dest, None)
        if option.kwargs.get("action") == "store_false":
            if value is False:
                args.append(option.flag)
        elif value is not None:
            args += [option.flag, num(value) if isinstance(value, float) else str(value)]
    return args
