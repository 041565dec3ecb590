"""The PyTorch baseline of every benchmark: pyregnet's network (NETS), weights, loss, penalty (on the
kernels, in the loss) and Adam (fused, else foreach), eager or compiled, float32 (no TF32); the uint8
data on the device, each batch augmented there through a (shift, flip) -> pixel table that
reproduces pyregnet's augmentation; sums read once an epoch.
"""

import numpy as np

from pyregnet import model, resnet
from pyregnet.engine import MAX_SHIFT, MODELS
from pyregnet.extras import missing
from pyregnet.regularizers import Penalty

EVAL_BATCH = 1000


def load(device):
    """(torch, None) set up for timing on `device`, or (None, why it is skipped)."""
    try:
        import torch
    except ImportError:
        return None, missing("torch")
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True   # cuDNN picks its fastest algorithms
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False   # float32, as pyregnet
    return torch, None


def shift_flip_table(h=32, w=32, max_shift=MAX_SHIFT):
    """(D, h*w) int64, D = (2s+1)^2 * 2: for each draw d (decode_draw) the source pixel of every
    output pixel: row clip(i - dy), column clip(j - dx), mirrored when flip (nearest-edge fill)."""
    span = 2 * max_shift + 1
    table = np.empty((span * span * 2, h * w), dtype=np.int64)
    for d in range(len(table)):
        dy, dx, flip = decode_draw(d, max_shift)
        rows, cols = np.clip(np.arange(h) - dy, 0, h - 1), np.clip(np.arange(w) - dx, 0, w - 1)
        table[d] = (rows[:, None] * w + (w - 1 - cols if flip else cols)[None, :]).ravel()
    return table


def decode_draw(d, max_shift=MAX_SHIFT):
    """Draw index -> (dy, dx, flip); uniform over d gives uniform shifts and a fair coin."""
    span = 2 * max_shift + 1
    return d % span - max_shift, (d // span) % span - max_shift, bool(d // (span * span))


def gather_augment(images_flat, index, draws, table, channels):
    """uint8 (B, C, H*W): sample b = images_flat[index[b]] (uint8 (N, C, H*W)) through the pixel
    map table[draws[b]]; one advanced-indexing gather, the same on NumPy and PyTorch arrays."""
    return images_flat[index[:, None, None], channels[None, :, None], table[draws][:, None, :]]


def _copy(torch, layer, **named):
    """The layer with the NumPy arrays `named` copied into its parameters of those names (same layouts)."""
    with torch.no_grad():
        for name, array in named.items():
            getattr(layer, name).copy_(torch.from_numpy(array))
    return layer


def cnn(torch, params):
    """The paper's CNN (pyregnet.model) with pyregnet's flat parameters `params`."""
    nn, v = torch.nn, model.views(params)
    layers = nn.Conv2d(3, 32, 3), nn.Conv2d(32, 64, 3), nn.Linear(2304, 128), nn.Linear(128, 10)
    for layer, spec in zip(layers, model.LAYERS):
        _copy(torch, layer, weight=v[f"{spec.name}.w"], bias=v[f"{spec.name}.b"])
    conv1, conv2, dense1, dense2 = layers
    return nn.Sequential(conv1, nn.ReLU(), nn.MaxPool2d(2), conv2, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), dense1,
                         nn.ReLU(), dense2)


def resnet20(torch, params):
    """pyregnet.resnet's ResNet-20 (option-A shortcuts: subsample, zero channels appended) with
    pyregnet's flat parameters `params`; BN's momentum, eps and initial statistics are PyTorch's."""
    nn, v = torch.nn, resnet.param_views(params)

    def conv_bn(c):
        conv = _copy(torch, nn.Conv2d(c.input[0], c.output[0], 3, c.stride, 1, bias=False), weight=v[f"{c.name}.w"])
        bn = nn.BatchNorm2d(c.output[0], eps=resnet.BN_EPS, momentum=resnet.BN_MOMENTUM)
        return nn.Sequential(conv, _copy(torch, bn, weight=v[f"{c.bn}.gamma"], bias=v[f"{c.bn}.beta"]))

    class Block(nn.Module):
        def __init__(self, blk):
            super().__init__()
            self.branch = nn.Sequential(conv_bn(blk.conv1), nn.ReLU(), conv_bn(blk.conv2))
            self.stride, self.pad = blk.stride, blk.output[0] - blk.input[0]

        def forward(self, x):
            shortcut = x if self.stride == 1 and not self.pad else \
                torch.nn.functional.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.pad))
            return torch.relu(self.branch(x) + shortcut)

    dense = _copy(torch, nn.Linear(*resnet.DENSE.input, *resnet.DENSE.output), weight=v["dense.w"], bias=v["dense.b"])
    return nn.Sequential(conv_bn(resnet.STEM), nn.ReLU(), *map(Block, resnet.BLOCKS), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), dense)


NETS = {"cnn": cnn, "resnet20": resnet20}   # the keys of pyregnet.engine.MODELS


class TorchNet:
    """The baseline for penalty `reg` (default λ) at pyregnet's initial weights for `seed`, or `params`:
    step(x, y) on a float batch; after data(dataset), train_epoch() and evaluate()."""

    def __init__(self, torch, device, reg, seed=0, compile_mode=None, net="cnn", params=None):
        self.torch, self.dev = torch, torch.device(device)
        params = MODELS[net].init_params(seed) if params is None else params
        self.net = NETS[net](torch, params).to(self.dev)
        self.kernels = [m.weight for m in self.net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        self.penalty = Penalty.with_defaults(reg)
        try:
            self.opt, self.adam = torch.optim.Adam(self.net.parameters(), lr=1e-3, eps=1e-7, fused=True), "fused"
        except Exception:  # noqa: BLE001 -- no fused Adam for this device in this PyTorch
            self.opt, self.adam = torch.optim.Adam(self.net.parameters(), lr=1e-3, eps=1e-7, foreach=True), "foreach"
        kw = dict(mode=compile_mode, dynamic=False)   # compiled: augmentation to optimizer step, and evaluation
        self._batch = torch.compile(self._augmented, **kw) if compile_mode else self._augmented
        self._eval = torch.compile(self._forward_sums, **kw) if compile_mode else self._forward_sums
        if compile_mode and device == "cuda":   # each call a new step of the compiled CUDA graphs
            mark, batch, evaluate = torch.compiler.cudagraph_mark_step_begin, self._batch, self._eval
            self._batch, self._eval = (lambda *a: (mark(), batch(*a))[1]), (lambda *a: (mark(), evaluate(*a))[1])
        self.setup = {"adam": f"torch.optim.Adam(lr=1e-3, eps=1e-7, {self.adam}=True)", "compile_mode": compile_mode,
                      "penalty": f"{self.penalty.describe()} on the kernels, added to the loss (autograd)"}

    def loss(self, x, y):
        """(data loss, loss with the penalty, logits) of a float batch."""
        logits = self.net(x)
        data = self.torch.nn.functional.cross_entropy(logits, y)
        total, pen = data, self.penalty
        if pen.l1:
            total = total + pen.l1 * sum(w.abs().sum() for w in self.kernels)
        if pen.l2:
            total = total + pen.l2 * sum(w.square().sum() for w in self.kernels)
        return data, total, logits

    def _train(self, x, y):
        data, total, logits = self.loss(x, y)
        out = (data.detach(), total.detach(), (logits.detach().argmax(1) == y).sum())
        total.backward()
        self.opt.step()
        return out

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)   # launches nothing; outside the compiled function
        return self._train(x, y)

    def _augmented(self, idx, draws):
        x = gather_augment(self.x_train, idx, draws, self.table, self.channels)
        return self._train((x * (1.0 / 255.0)).view(len(idx), *self.shape), self.y_train[idx])

    def data(self, dataset, batch):
        """Puts the uint8 data set on the device: (N, C, H*W) to train on, (N, C, H, W) to evaluate."""
        t, dev = self.torch, self.dev
        x = t.from_numpy(dataset.x_train).to(dev)
        n, h, w, c = x.shape
        self.x_train, self.y_train = x.permute(0, 3, 1, 2).contiguous().view(n, c, h * w), \
            t.from_numpy(dataset.y_train).to(dev)
        self.x_val = t.from_numpy(dataset.x_test).to(dev).permute(0, 3, 1, 2).contiguous()
        self.y_val = t.from_numpy(dataset.y_test).to(dev)
        self.shape, self.batch = (c, h, w), batch
        self.table, self.channels = t.from_numpy(shift_flip_table(h, w)).to(dev), t.arange(c, device=dev)
        self.gen = t.Generator(device=dev)
        self.gen.manual_seed(0)

    def train_epoch(self):
        t, n, b = self.torch, len(self.y_train), self.batch
        order = t.randperm(n, device=self.dev, generator=self.gen)
        draws = t.randint(0, len(self.table), (n,), device=self.dev, generator=self.gen)
        sums = t.zeros(3, dtype=t.float64, device=self.dev)
        for i in range(0, n, b):
            self.opt.zero_grad(set_to_none=True)
            data, total, hits = self._batch(order[i:i + b], draws[i:i + b])
            sums += t.stack([data * min(b, n - i), total * min(b, n - i), hits.double()])
        data, total, correct = (s / n for s in sums.tolist())   # the epoch's one read
        return {"train_data_loss": data, "train_loss": total, "train_acc": correct}

    def kernel_weights(self):
        return np.concatenate([w.detach().cpu().numpy().ravel() for w in self.kernels])

    def _forward_sums(self, x, y):
        with self.torch.no_grad():
            logits = self.net(x * (1.0 / 255.0))
            return self.torch.nn.functional.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum()

    def evaluate(self):
        t, n = self.torch, len(self.y_val)
        sums = t.zeros(2, dtype=t.float64, device=self.dev)
        self.net.eval()   # BN normalizes with its running statistics
        for i in range(0, n, EVAL_BATCH):
            loss, hits = self._eval(self.x_val[i:i + EVAL_BATCH], self.y_val[i:i + EVAL_BATCH])
            sums += t.stack([loss.double(), hits.double()])
        self.net.train()
        loss, correct = (s / n for s in sums.tolist())
        return {"val_data_loss": loss, "val_acc": correct}
