"""Make the real torch-exported ONNX fixtures in tests/data (run: python tests/data/make_fixtures.py).

Each model is a small hand-written torch module in eval mode with seeded random weights and
non-trivial BatchNorm statistics (random running_mean, positive random running_var, gammas of both
signs, random betas). Each is exported with
  * the classic TorchScript exporter (dynamo=False, training=TrainingMode.PRESERVE, opset 17), which
    keeps BatchNormalization nodes unfolded  -> NAME_classic.onnx
  * the dynamo exporter with its default optimizer (offline)           -> NAME_dynamo.onnx
  * for a few models, the dynamo exporter with optimize=False           -> NAME_dynamo_noopt.onnx
and next to each .onnx an .npz with a seeded input and torch's output ("input", "output"; models with a
dynamic batch axis also have "input_b3", "output_b3" at batch 3).

Needs torch (CPU wheel) and onnxscript; the test suite itself (tests/test_fixtures.py) needs neither.
Usage: python tests/data/make_fixtures.py [NAME_SUBSTRING ...]   (no argument: make them all)
"""
from __future__ import annotations

import io
import logging
import os
import sys
import traceback
import warnings
from contextlib import redirect_stdout

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSIC_OPSET = 17


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU, conv-BN, (+ 1x1 conv-BN shortcut when shape changes), Add, ReLU."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + idt)


class ResNetBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid),
                   nn.ReLU6(inplace=True),
                   nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2ish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)),
            InvertedResidual(8, 8, 1, 1),     # no expansion, residual
            InvertedResidual(8, 12, 2, 6),    # expand, depthwise stride 2
            InvertedResidual(12, 12, 1, 4),   # expand, depthwise stride 1, residual
            nn.Sequential(nn.Conv2d(12, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 10))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c, r):
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1)
        self.fc2 = nn.Conv2d(r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(F.silu(self.fc1(s))))
        return x * s


class SENet(nn.Module):
    """EfficientNet-style: conv-BN-SiLU, depthwise conv-BN-SiLU, SE, 1x1 projection-BN, residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16, eps=1e-3), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.se = SqueezeExcite(16, 4)
        self.proj = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 6)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.proj(self.se(self.dw(x)))
        x = F.adaptive_avg_pool2d(F.silu(x), 1).flatten(1)
        return self.head(x)


class NormsGelu(nn.Module):
    """Conv -> GroupNorm -> GELU -> conv (stride 2) -> tokens -> LayerNorm -> MLP (tanh GELU) -> mean -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1)
        self.gn = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 16, 3, 2, 1)
        self.ln = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.ln2 = nn.LayerNorm(16, eps=1e-6)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.conv2(F.gelu(self.gn(self.conv1(x))))
        t = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        t = t + self.fc2(F.gelu(self.fc1(self.ln(t)), approximate="tanh"))
        return self.head(self.ln2(t).mean(dim=1))


class MnistNet(nn.Module):
    """The classic PyTorch MNIST example, narrowed so the file stays small (see README):
    conv 1->8 3x3, conv 8->16 3x3, maxpool 2, dropout, flatten, Linear 2304->16, ReLU, dropout,
    Linear 16->10, log_softmax. order: 'bn_relu' (conv->BN->ReLU), 'relu_bn' (conv->ReLU->BN), 'none'."""

    def __init__(self, order):
        super().__init__()
        self.order = order
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        if order != "none":
            self.bn1 = nn.BatchNorm2d(8)
            self.bn2 = nn.BatchNorm2d(16)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(2304, 16)
        self.fc2 = nn.Linear(16, 10)

    def _cbr(self, conv, bn, x):
        x = conv(x)
        if self.order == "bn_relu":
            return F.relu(bn(x))
        if self.order == "relu_bn":
            return bn(F.relu(x))
        return F.relu(x)

    def forward(self, x):
        x = self._cbr(self.conv1, getattr(self, "bn1", None), x)
        x = self._cbr(self.conv2, getattr(self, "bn2", None), x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Dropout(0.5), nn.Linear(20, 1))

    def forward(self, x):
        return self.net(x)


class PreActBlock(nn.Module):
    """Pre-activation ResNet block: BN-ReLU-conv, BN-ReLU-conv, Add; 1x1 shortcut on the activated input."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        sc = x if self.shortcut is None else self.shortcut(a)
        y = self.conv1(a)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + sc


class PreActNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.block1 = PreActBlock(8, 8)
        self.block2 = PreActBlock(8, 16, 2)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.block2(self.block1(self.conv(x)))
        x = F.relu(self.bn(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size=4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return torch.cat([x, y], 1)


class DenseNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.norm0 = nn.BatchNorm2d(16)
        self.block = nn.Sequential(DenseLayer(16, 8), DenseLayer(24, 8))
        # transition: BN-ReLU-conv1x1-avgpool2
        self.tnorm = nn.BatchNorm2d(32)
        self.tconv = nn.Conv2d(32, 16, 1, bias=False)
        self.norm5 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.norm0(self.conv0(x))), 3, 2, 1)
        x = self.block(x)
        x = F.avg_pool2d(self.tconv(F.relu(self.tnorm(x))), 2)
        x = F.relu(self.norm5(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ----------------------------------------------------------------------------------------------
# Fixture table: name, constructor, input shape (batch 1), classic dynamic batch?, dynamo variants
#   dynamo variants: tuple of ("dynamo", optimize) pairs; dynamo_dynamic: dynamic batch in dynamo too
# ----------------------------------------------------------------------------------------------

FIXTURES = [
    # name,              ctor,                         input shape,     classic_dyn, noopt, dynamo_dyn
    ("resnet_block",      ResNetBlocks,                  (1, 3, 16, 16),  True,  True,  True),
    ("mobilenetv2",       MobileNetV2ish,                (1, 3, 32, 32),  True,  False, False),
    ("se_silu",           SENet,                         (1, 3, 16, 16),  False, False, False),
    ("norms_gelu",        NormsGelu,                     (1, 3, 8, 8),    False, True,  False),
    ("mnist_bn_relu",     lambda: MnistNet("bn_relu"),   (1, 1, 28, 28),  True,  True,  False),
    ("mnist_relu_bn",     lambda: MnistNet("relu_bn"),   (1, 1, 28, 28),  False, False, False),
    ("mnist_nobn",        lambda: MnistNet("none"),      (1, 1, 28, 28),  False, False, False),
    ("mlp_bn1d",          MLP,                           (1, 10),         True,  True,  True),
    ("preact_block",      PreActNet,                     (1, 3, 16, 16),  False, False, False),
    ("densenet_block",    DenseNetish,                   (1, 3, 16, 16),  False, False, False),
]


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial eval statistics: mean ~ N(0, 0.5), var ~ U(0.2, 2), gamma ~ N(0, 1) (about half
    negative, at least one), beta ~ N(0, 0.3); one channel of each BN gets a small variance (0.01)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                var = torch.rand(c, generator=gen) * 1.8 + 0.2
                var[c // 2] = 0.01
                m.running_var.copy_(var)
                w = torch.randn(c, generator=gen)
                w[0] = -abs(w[0]) - 0.1
                m.weight.copy_(w)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.3)
            elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.3)


def build(name, ctor, seed):
    torch.manual_seed(seed)
    model = ctor()
    randomize_bn(model, torch.Generator().manual_seed(seed + 1000))
    return model.eval()


def save_npz(path, model, x, dynamic):
    with torch.no_grad():
        arrays = {"input": x.numpy(), "output": model(x).numpy()}
        if dynamic:
            gen = torch.Generator().manual_seed(7)
            x3 = torch.randn((3,) + tuple(x.shape[1:]), generator=gen)
            arrays["input_b3"] = x3.numpy()
            arrays["output_b3"] = model(x3).numpy()
    np.savez(path, **arrays)


def export_classic(model, x, path, dynamic):
    kwargs = {}
    if dynamic:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
    torch.onnx.export(model, (x,), path, dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,
                      opset_version=CLASSIC_OPSET, input_names=["input"], output_names=["output"], **kwargs)


def export_dynamo(model, x, path, optimize, dynamic):
    kwargs = {}
    if dynamic:
        kwargs["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
    with redirect_stdout(io.StringIO()):  # the dynamo exporter prints progress lines
        torch.onnx.export(model, (x,), path, dynamo=True, optimize=optimize, external_data=False,
                          input_names=["input"], output_names=["output"], **kwargs)


def summarize(path):
    m = onnx.load(path)
    ops = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    inp = m.graph.input[0].type.tensor_type.shape.dim
    dims = [d.dim_param or d.dim_value for d in inp]
    return opset, ops, dims


def main(argv):
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" lines
    wanted = argv[1:]
    failures = []
    for i, (name, ctor, shape, classic_dyn, noopt, dynamo_dyn) in enumerate(FIXTURES):
        if wanted and not any(w in name for w in wanted):
            continue
        seed = 100 + i
        model = build(name, ctor, seed)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 2000))
        variants = [("classic", lambda p: export_classic(model, x, p, classic_dyn), classic_dyn),
                    ("dynamo", lambda p: export_dynamo(model, x, p, True, dynamo_dyn), dynamo_dyn)]
        if noopt:
            variants.append(("dynamo_noopt", lambda p: export_dynamo(model, x, p, False, dynamo_dyn), dynamo_dyn))
        for suffix, fn, dyn in variants:
            stem = os.path.join(HERE, f"{name}_{suffix}")
            try:
                fn(stem + ".onnx")
            except Exception as e:  # record and continue
                failures.append((f"{name}_{suffix}", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
                traceback.print_exc(limit=3)
                if os.path.exists(stem + ".onnx"):
                    os.remove(stem + ".onnx")
                continue
            save_npz(stem + ".npz", model, x, dyn)
            opset, ops, dims = summarize(stem + ".onnx")
            size = os.path.getsize(stem + ".onnx")
            print(f"{name}_{suffix}: opset {opset}, {size} B, input {dims}, "
                  f"BatchNormalization x{ops.get('BatchNormalization', 0)}, ops {sorted(ops.items())}")
    print(f"torch {torch.__version__}, onnx {onnx.__version__}")
    for n, why in failures:
        print(f"FAILED {n}: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
