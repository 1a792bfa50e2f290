"""`DataConvolutions`: the same values as PyTorch's convolution, in every order needed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_automl.core.data_convolution import DataConvolutions

CASES = {  # convolution, input shape, weight shape, keyword arguments
    "1d": (F.conv1d, (3, 4, 11), (6, 2, 3), {"stride": 2, "padding": 1, "groups": 2}),
    "2d": (F.conv2d, (3, 2, 9, 8), (4, 2, 3, 3), {"padding": (1, 2), "dilation": 2}),
    "3d": (F.conv3d, (2, 2, 5, 6, 5), (3, 2, 2, 3, 2), {"stride": (1, 2, 1)}),
}


def first_and_second_order(case: str, bias: bool, lean: bool, channels_last: bool = False):
    """The output, the weight (and bias) gradients of a loss of it, and the gradients of a
    function of those gradients for an upstream tensor ``phi`` and for the weights."""
    convolution, input_shape, weight_shape, kwargs = CASES[case]
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(input_shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(weight_shape, generator=generator, dtype=torch.float64)
    params = [weight]
    if bias:
        params.append(torch.randn(weight_shape[0], generator=generator, dtype=torch.float64))
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        params[0] = params[0].contiguous(memory_format=torch.channels_last)
    params = [param.requires_grad_() for param in params]
    with DataConvolutions() if lean else torch.enable_grad():
        output = convolution(inputs, *params, **kwargs)
    phi = torch.randn(output.shape, generator=generator, dtype=torch.float64).requires_grad_()
    grads = torch.autograd.grad((output * phi).tanh().sum(), params, create_graph=True)
    second = torch.autograd.grad(sum((grad.sin() ** 2).sum() for grad in grads), [phi, *params])
    return output, grads, second


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_equal_pytorchs(case: str, bias: bool) -> None:
    output, grads, second = first_and_second_order(case, bias, lean=False)
    lean_output, lean_grads, lean_second = first_and_second_order(case, bias, lean=True)
    assert lean_output.grad_fn.name() == "_DataConvolutionBackward"
    assert torch.equal(lean_output, output)
    for lean_grad, grad in zip(lean_grads, grads, strict=True):
        assert torch.equal(lean_grad, grad)  # the same kernel
    for lean_grad, grad in zip(lean_second, second, strict=True):
        torch.testing.assert_close(lean_grad, grad, rtol=1e-12, atol=1e-12)


def test_channels_last_values_and_gradients_equal_pytorchs() -> None:
    output, grads, second = first_and_second_order("2d", True, False, channels_last=True)
    lean_output, lean_grads, lean_second = first_and_second_order("2d", True, True, True)
    assert lean_output.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(lean_output, output)
    for lean, plain in zip([*lean_grads, *lean_second], [*grads, *second], strict=True):
        torch.testing.assert_close(lean, plain, rtol=1e-12, atol=1e-12)


def convolution_node(inputs: Tensor, weight: Tensor, **kwargs) -> str:
    with DataConvolutions():
        return F.conv2d(inputs, weight, **kwargs).grad_fn.name()


def test_what_it_cannot_lighten_is_left_to_pytorch() -> None:
    inputs, weight = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    assert convolution_node(inputs, weight.requires_grad_()) == "_DataConvolutionBackward"
    assert convolution_node(inputs.requires_grad_(), weight) == "ConvolutionBackward0"
    assert convolution_node(inputs.detach(), weight, padding="same") == "ConvolutionBackward0"
    assert convolution_node(inputs.detach()[0], weight) == "SqueezeBackward1"  # unbatched
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert convolution_node(inputs.detach(), weight) == "ConvolutionBackward0"
    with torch.no_grad(), DataConvolutions():
        assert F.conv2d(inputs.detach(), weight).grad_fn is None
