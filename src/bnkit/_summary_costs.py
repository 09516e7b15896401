"""What one module call costs, for :func:`bnkit.summary`: multiply-adds and bytes.

Multiply-adds (MACs), counted per call from the shapes only (the convention of torchvision's
published "GFLOPS" column and of fvcore; bias additions are not counted):

* convolution (``nn.Conv1d/2d/3d``, lazy ones too): ``output elements x in_channels/groups
  x kernel elements`` (every output element is one dot product of that length);
* transposed convolution: ``input elements x out_channels/groups x kernel elements``
  (every input element is scattered into that many outputs);
* ``nn.Linear``: ``output elements x in_features`` (``in x out`` per row);
* batch norm (bnkit's both families and ``nn.BatchNorm*``/``SyncBatchNorm``): 2 per output
  element, inference batch norm being one multiply and one add per element
  (``x * gamma / sqrt(var + eps) + (beta - mean * gamma / sqrt(var + eps))``; fvcore's eval
  count with an affine layer);
* everything else (activations, pooling, dropout, flatten...): 0.

Bytes: ``numel x element_size`` of every tensor in a module's output (nested outputs
included), and of the counted parameters/buffers.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .layers import BatchNormalization, TorchBatchNorm

__all__ = ["call_macs", "output_bytes", "tensor_bytes"]

_BATCH_NORMS = (BatchNormalization, TorchBatchNorm, _BatchNorm)


def call_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """Multiply-adds of one call of ``module`` that read ``inputs`` and returned ``output``."""
    first = output if isinstance(output, Tensor) else None
    if isinstance(module, _ConvNd):
        weight = module.weight
        per_element = math.prod(weight.shape[1:])  # out: in/groups x kernel; transposed: out/groups x kernel
        if module.transposed:
            source = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
            return 0 if source is None else source.numel() * per_element
        return 0 if first is None else first.numel() * per_element
    if isinstance(module, nn.Linear):
        return 0 if first is None else first.numel() * module.in_features
    if isinstance(module, _BATCH_NORMS):
        return 0 if first is None else 2 * first.numel()
    return 0


def tensor_bytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def output_bytes(output: Any) -> int:
    """Bytes of every tensor in ``output`` (tensors, nested tuples/lists/dict values)."""
    total, stack = 0, [output]
    while stack:
        item = stack.pop()
        if isinstance(item, Tensor):
            total += tensor_bytes(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, Mapping):
            stack.extend(item.values())
    return total
