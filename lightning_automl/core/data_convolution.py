"""Convolutions of inputs that need no gradient (the data), with a lean second-order graph.

Differentiating a convolution's weight gradient ``g_W = conv_backward_W(g_out, x)`` once more
(a Hessian-vector product, as an unrolled hypergradient does at every step) needs only
``d g_W / d g_out``: the convolution of ``x`` with the incoming ``dg_W`` (and ``dg_b``, spread
over the output). PyTorch's double backward (``_convolution_double_backward``) also computes the
gradient for ``x``, a transposed convolution, even when ``x`` is data that needs none. For a
CNN's first layer that is a large part of the reverse pass: a transposed convolution into the
image, per unrolled step, thrown away.

`DataConvolutions` routes ``torch.nn.functional.conv1d/2d/3d`` calls whose input needs no
gradient through two autograd functions that compute the same forward and first-order values
with the same kernels, and in the second order only what is needed. Any other call is left to
PyTorch: an input that needs a gradient, string padding, an unbatched input, and any call under
autocast (which casts ``conv2d``'s arguments, not those of the ``aten.convolution`` used here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["DataConvolutions"]

_DIMENSIONS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


class _Geometry:
    """A convolution's stride, padding, dilation and groups, as ``aten.convolution`` takes them."""

    def __init__(
        self,
        dimensions: int,
        has_bias: bool,
        stride: int | Sequence[int],
        padding: int | Sequence[int],
        dilation: int | Sequence[int],
        groups: int,
    ) -> None:
        self.has_bias = has_bias
        self.stride = _per_dimension(stride, dimensions)
        self.padding = _per_dimension(padding, dimensions)
        self.dilation = _per_dimension(dilation, dimensions)
        self.output_padding = [0] * dimensions
        self.groups = groups

    def convolve(self, inputs: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return torch.ops.aten.convolution(
            inputs,
            weight,
            bias,
            self.stride,
            self.padding,
            self.dilation,
            False,
            self.output_padding,
            self.groups,
        )


def _per_dimension(value: int | Sequence[int], dimensions: int) -> list[int]:
    return [value] * dimensions if isinstance(value, int) else list(value)


class _WeightGradient(torch.autograd.Function):
    """``(g_W, g_b)`` from ``g_out`` (``g_b`` None without a bias); its backward is
    ``dg_out = conv(x, dg_W) + dg_b`` only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, grad_output: Tensor, inputs: Tensor, weight: Tensor, geometry: _Geometry
    ) -> tuple[Tensor, Tensor | None]:
        ctx.save_for_backward(inputs)
        ctx.geometry, ctx.output_shape = geometry, grad_output.shape
        ctx.set_materialize_grads(False)
        _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_output,
            inputs,
            weight,
            [weight.shape[0]],
            geometry.stride,
            geometry.padding,
            geometry.dilation,
            False,
            geometry.output_padding,
            geometry.groups,
            [False, True, geometry.has_bias],
        )
        return grad_weight, grad_bias

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_grad_weight: Tensor | None, grad_grad_bias: Tensor | None
    ) -> tuple[Tensor | None, None, None, None]:
        (inputs,) = ctx.saved_tensors
        if grad_grad_weight is not None:
            grad_output = ctx.geometry.convolve(inputs, grad_grad_weight, grad_grad_bias)
        elif grad_grad_bias is not None:
            spread = (1, -1) + (1,) * (len(ctx.output_shape) - 2)
            grad_output = grad_grad_bias.view(spread).expand(ctx.output_shape)
        else:
            grad_output = None
        return grad_output, None, None, None


class _DataConvolution(torch.autograd.Function):
    """``conv(x, W, b)`` for an ``x`` that needs no gradient; its backward is `_WeightGradient`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, inputs: Tensor, weight: Tensor, bias: Tensor | None, geometry: _Geometry
    ) -> Tensor:
        ctx.save_for_backward(inputs, weight)
        ctx.geometry = geometry
        return geometry.convolve(inputs, weight, bias)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_output: Tensor
    ) -> tuple[None, Tensor, Tensor | None, None]:
        inputs, weight = ctx.saved_tensors
        grad_weight, grad_bias = _WeightGradient.apply(grad_output, inputs, weight, ctx.geometry)
        return None, grad_weight, grad_bias, None


class DataConvolutions(TorchFunctionMode):
    """Inside ``with DataConvolutions():``, a ``conv1d/2d/3d`` of an input that needs no
    gradient, with a weight that does, builds the lean second-order graph of this module's
    docstring; same values, no wasted transposed convolution in a Hessian-vector product."""

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        dimensions = _DIMENSIONS.get(func)
        if dimensions is not None and torch.is_grad_enabled():
            call = dict(zip(_ARGUMENTS, args, strict=False)) | kwargs
            inputs, weight = call["input"], call["weight"]
            if (
                not inputs.requires_grad
                and weight.requires_grad
                and inputs.dim() == dimensions + 2
                and not isinstance(call.get("padding", 0), str)
                and not torch.is_autocast_enabled(inputs.device.type)  # autocast casts conv2d
            ):
                geometry = _Geometry(
                    dimensions,
                    call.get("bias") is not None,
                    call.get("stride", 1),
                    call.get("padding", 0),
                    call.get("dilation", 1),
                    call.get("groups", 1),
                )
                return _DataConvolution.apply(inputs, weight, call.get("bias"), geometry)
        return func(*args, **kwargs)
