"""The inputs of :func:`bnkit.summary.summary`'s forward pass, from its arguments, validated.

Either ``input_shape`` (zeros of one shape or several, with ``batch_size``, ``dtypes`` and
``device``; the defaults follow the model's first tensor) or ``input_data`` (a tensor, a
sequence of positional inputs or a mapping of keyword inputs, moved to ``device``).  Every
refusal names the argument and shows the value received.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from ._repr import short

__all__ = ["model_inputs"]


def model_inputs(
    model: nn.Module, input_shape: Any, input_data: Any, batch_size: Any, dtypes: Any, device: Any
) -> tuple[tuple[Any, ...], dict[str, Any], int | None]:
    """Validate the input arguments; return (args, kwargs, batch size shown as None)."""
    if (input_shape is None) == (input_data is None):
        raise ValueError(
            "Exactly one of `input_shape` and `input_data` must be given; received: "
            f"input_shape={short(input_shape)}, input_data={'a value' if input_data is not None else None}"
        )
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"`device` must name a torch device such as 'cpu'; received: {short(device)}") from err
    if input_data is not None:
        for name, value in (("batch_size", batch_size), ("dtypes", dtypes)):
            if value is not None:
                raise ValueError(f"`{name}` only applies to `input_shape`, not `input_data`; received: {name}={short(value)}")
        return _data_inputs(input_data, device)
    shapes = _check_shapes(input_shape)
    batch_size = 1 if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int or None; received: batch_size={short(batch_size)}")
    tensors = [t for t in (*model.parameters(), *model.buffers()) if not is_lazy(t)]
    floats = [t.dtype for t in tensors if t.is_floating_point()]
    default_dtype = floats[0] if floats else torch.get_default_dtype()
    if device is None:
        device = tensors[0].device if tensors else torch.device("cpu")
    if dtypes is None:
        dtypes = [default_dtype] * len(shapes)
    elif isinstance(dtypes, torch.dtype):
        dtypes = [dtypes] * len(shapes)
    elif not (isinstance(dtypes, Sequence) and len(dtypes) == len(shapes)
              and all(isinstance(d, torch.dtype) for d in dtypes)):
        raise ValueError(
            f"`dtypes` must be a torch.dtype or a sequence of {len(shapes)} torch.dtype (one per input); "
            f"received: dtypes={short(dtypes)}"
        )
    args = tuple(torch.zeros((batch_size, *s), dtype=d, device=device) for s, d in zip(shapes, dtypes))
    return args, {}, batch_size


def _check_shapes(input_shape: Any) -> list[tuple[int, ...]]:
    def is_dims(value: Any) -> bool:
        return isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0 and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value
        )

    if is_dims(input_shape):
        return [tuple(input_shape)]
    if isinstance(input_shape, Sequence) and not isinstance(input_shape, str) and input_shape \
            and all(is_dims(s) for s in input_shape):
        return [tuple(s) for s in input_shape]
    raise ValueError(
        "`input_shape` must be one shape of positive ints without the batch dimension, e.g. "
        f"(3, 224, 224), or a non-empty list of such shapes; received: input_shape={short(input_shape)}"
    )


def _data_inputs(data: Any, device: torch.device | None) -> tuple[tuple[Any, ...], dict[str, Any], int | None]:
    def move(value: Any) -> Any:
        return value.to(device) if device is not None and isinstance(value, Tensor) else value

    if isinstance(data, Tensor):
        args, kwargs = (move(data),), {}
    elif isinstance(data, Mapping):
        args, kwargs = (), {str(k): move(v) for k, v in data.items()}
    elif isinstance(data, (list, tuple)) and data:
        args, kwargs = tuple(move(v) for v in data), {}
    else:
        raise TypeError(
            "`input_data` must be a tensor, a non-empty tuple/list of inputs or a mapping of keyword "
            f"inputs; received: {type(data).__name__} {short(data)}"
        )
    first = next((t for t in (*args, *kwargs.values()) if isinstance(t, Tensor) and t.dim() > 0), None)
    return args, kwargs, None if first is None else first.shape[0]
