"""The activation table: the one place where activations are defined.

Every kernel that fuses an activation calls `apply(code, x, alpha, beta)`: `code` picks the function,
`alpha` and `beta` are its two parameters (for PRelu, `alpha` is the slope of the current channel). The
table maps each ONNX activation op to its code and says how its attributes become (alpha, beta), so a
fusion pass can only fuse what this table really implements, with the same attributes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit

NONE, RELU, LEAKY_RELU, PRELU, SIGMOID, TANH, HARD_SIGMOID, HARD_SWISH, SWISH, CLIP, ELU, SELU, CELU, \
    GELU, GELU_TANH, MISH, SOFTPLUS, SOFTSIGN = range(18)


@njit(inline="always", cache=True)
def _softplus(x):
    # log(1 + e^x) without overflow for large x
    if x > 0:
        return x + math.log1p(math.exp(-x))
    return math.log1p(math.exp(x))


@njit(inline="always", cache=True)
def _sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@njit(inline="always", cache=True)
def apply(code, x, alpha, beta):
    """Activation `code` of scalar x. Comparisons are written so that NaN propagates."""
    if code == NONE:
        return x
    if code == RELU:
        return 0.0 if x < 0 else x
    if code == LEAKY_RELU or code == PRELU:
        return x * alpha if x < 0 else x
    if code == SIGMOID:
        return _sigmoid(x)
    if code == TANH:
        return math.tanh(x)
    if code == HARD_SIGMOID:
        return min(max(alpha * x + beta, 0.0), 1.0) if x == x else x
    if code == HARD_SWISH:
        return x * min(max(x / 6.0 + 0.5, 0.0), 1.0) if x == x else x
    if code == SWISH:
        return x * _sigmoid(alpha * x)
    if code == CLIP:  # min(max(x, lo), hi): when lo > hi everything becomes hi, as in ONNX
        v = alpha if x < alpha else x
        return beta if v > beta else v
    if code == ELU:
        return alpha * (math.exp(x) - 1.0) if x < 0 else x
    if code == SELU:
        return beta * (alpha * (math.exp(x) - 1.0) if x <= 0 else x)
    if code == CELU:
        return alpha * (math.exp(x / alpha) - 1.0) if x < 0 else x
    if code == GELU:
        return 0.5 * x * (1.0 + math.erf(x * 0.7071067811865476))
    if code == GELU_TANH:
        return 0.5 * x * (1.0 + math.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    if code == MISH:
        return x * math.tanh(_softplus(x))
    if code == SOFTPLUS:
        return _softplus(x)
    if code == SOFTSIGN:
        return x / (1.0 + abs(x))
    return x


@njit(inline="always", cache=True)
def activate(code, x, alpha, hi, beta):
    """apply() for kernels specialised on a compile-time `code`: Relu and Clip as plain float32 selects
    (the store loops stay vectorizable), everything else through apply(). `hi` is Clip's upper bound as
    float32 (beta is float64 and would promote x)."""
    if code == RELU:
        return np.float32(0.0) if x < np.float32(0.0) else x
    if code == CLIP:
        x = alpha if x < alpha else x
        return hi if x > hi else x
    return apply(code, x, alpha, beta)


@dataclass(frozen=True)
class Activation:
    """How one ONNX activation op maps to a code and its (alpha, beta) parameters."""

    code: int
    params: Callable[[dict], tuple[float, float]]


def _no_params(attrs: dict) -> tuple[float, float]:
    return 0.0, 0.0


def _gelu_code(attrs: dict) -> int:
    return GELU_TANH if attrs.get("approximate", "none") == "tanh" else GELU


# ONNX op name -> Activation. Clip takes its bounds from constant inputs: the caller puts them in attrs
# as "min"/"max" (see bninfer.ops.elementwise). PRelu's slope is per channel: the kernel gets an array.
TABLE: dict[str, Activation] = {
    "Relu": Activation(RELU, _no_params),
    "LeakyRelu": Activation(LEAKY_RELU, lambda a: (a.get("alpha", 0.01), 0.0)),
    "PRelu": Activation(PRELU, _no_params),
    "Sigmoid": Activation(SIGMOID, _no_params),
    "Tanh": Activation(TANH, _no_params),
    "HardSigmoid": Activation(HARD_SIGMOID, lambda a: (a.get("alpha", 0.2), a.get("beta", 0.5))),
    "HardSwish": Activation(HARD_SWISH, _no_params),
    "Swish": Activation(SWISH, lambda a: (a.get("alpha", 1.0), 0.0)),
    "Clip": Activation(CLIP, lambda a: (a.get("min", -np.inf), a.get("max", np.inf))),
    "Elu": Activation(ELU, lambda a: (a.get("alpha", 1.0), 0.0)),
    "Selu": Activation(SELU, lambda a: (a.get("alpha", 1.6732632423543772),
                                        a.get("gamma", 1.0507009873554805))),
    "Celu": Activation(CELU, lambda a: (a.get("alpha", 1.0), 0.0)),
    "Gelu": Activation(GELU, _no_params),  # code chosen by code_of() from "approximate"
    "Mish": Activation(MISH, _no_params),
    "Softplus": Activation(SOFTPLUS, _no_params),
    "Softsign": Activation(SOFTSIGN, _no_params),
}


def code_of(op: str, attrs: dict) -> int:
    return _gelu_code(attrs) if op == "Gelu" else TABLE[op].code


def params_of(op: str, attrs: dict) -> tuple[float, float]:
    alpha, beta = TABLE[op].params(attrs)
    return float(alpha), float(beta)
