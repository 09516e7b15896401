"""Keras 3's recorded sequence masks, read back as data.

A Keras 3 functional model stores the mask of ``Embedding(mask_zero=True)`` as an operation
layer ``NotEqual(ids, 0)`` (module ``keras.src.ops.numpy``; a Masking layer's as ``Any`` of
it over the last axis; a merge layer's as ``LogicalOr`` of its inputs' masks) and passes
its output to the mask-consuming calls as ``kwargs["mask"]``.  bnkit rebuilds masks the way Keras propagates
them (see :mod:`bnkit.keras._rnn`), so such an operation is taken out of the graph and
each call it fed remembers its :data:`MaskDescription`, ``(layer, value, reduced)``:
"Keras gives me the mask ``layer != value``" (or ``("or", (description, ...), False)`` for
a merge's).  A shared layer remembers one per call (each call of a shared ``LSTM`` gets the
mask of its own input).  The sequence layers then check that this is the mask they
rebuild, and refuse otherwise.
Only calls that apply masks (recurrent layers, GlobalAveragePooling1D) or ignore them at inference
(BatchNormalization) are accepted; any other use keeps the operation in the graph, where
it is refused as an unsupported layer.
"""
from __future__ import annotations

from typing import Any

__all__ = ["MASK_CALLS", "MaskDescription", "strip_mask_ops"]

#: A sequence mask described from the config: ``(layer, value, reduced)`` is the mask
#: ``layer != value`` of ``layer``'s first output (``Embedding(mask_zero=True)``: its ids and
#: 0.0), reduced with ``any`` over the last axis when ``reduced`` is True (``Masking``);
#: ``("or"|"and", (description, ...), False)`` is the combined mask of a merge layer, Keras 3's
#: logical OR (``LogicalOr``) or tf_keras' AND of its inputs' masks.
MaskDescription = tuple[str, float, bool] | tuple[str, tuple["MaskDescription", ...], bool]

#: Layer classes whose Keras 3 call may take a recorded ``NotEqual`` mask.
MASK_CALLS = frozenset({"SimpleRNN", "LSTM", "GRU", "Bidirectional", "BatchNormalization", "GlobalAveragePooling1D"})


def _tensor(value: Any) -> str | None:
    """The producing layer of a Keras 3 ``__keras_tensor__`` reference ``[name, 0, 0]``."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        history = (value.get("config") or {}).get("keras_history")
        if isinstance(history, list) and len(history) == 3 and isinstance(history[0], str) and \
                history[1:] == [0, 0]:
            return history[0]
    return None


def _operation(raw: Any, class_name: str) -> list[Any] | None:
    """The positional arguments of a Keras 3 operation layer ``class_name`` called without
    keyword arguments, else None."""
    if not (isinstance(raw, dict) and raw.get("class_name") == class_name
            and str(raw.get("module", "keras.src.ops")).startswith("keras.src.ops")):  # .h5 configs: no module
        return None
    nodes = raw.get("inbound_nodes")
    if not (isinstance(nodes, list) and len(nodes) == 1 and isinstance(nodes[0], dict) and not nodes[0].get("kwargs")):
        return None
    args = nodes[0].get("args")
    return args if isinstance(args, list) else None


def _not_equal(raw: Any) -> MaskDescription | None:
    """``(layer, value, False)`` of a ``NotEqual(tensor, number)`` operation layer, else None."""
    args = _operation(raw, "NotEqual")
    if args is None or len(args) != 2:
        return None
    source, value = _tensor(args[0]), args[1]
    if source is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return source, float(value), False


def _any_last(raw: Any) -> str | None:
    """The operation an ``Any(..., axis=-1)`` layer reduces (a Masking layer's mask), else None."""
    args = _operation(raw, "Any")
    config = raw.get("config") if isinstance(raw, dict) else None
    if args is None or len(args) != 1 or not isinstance(config, dict) or config.get("keepdims", False) \
            or config.get("axis") not in (-1, [-1]):
        return None
    return _tensor(args[0])


def _name(raw: Any) -> Any:
    return raw.get("name", (raw.get("config") or {}).get("name")) if isinstance(raw, dict) else None


def _references(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [name for item in value for name in _references(item)]
    if isinstance(value, dict):
        name = _tensor(value)
        return [name] if name is not None else [n for item in value.values() for n in _references(item)]
    return []


def _logical(raw: Any) -> tuple[str, list[str]] | None:
    """``("or"|"and", [operand layers])`` of a ``LogicalOr``/``LogicalAnd`` operation layer on
    two tensors (a merge layer's mask), else None."""
    for class_name, mode in (("LogicalOr", "or"), ("LogicalAnd", "and")):
        args = _operation(raw, class_name)
        if args is not None and len(args) == 2:
            operands = [_tensor(arg) for arg in args]
            return (mode, operands) if all(operands) else None  # type: ignore[return-value]
    return None


def strip_mask_ops(layers: list[Any], outputs: Any) -> tuple[list[Any], dict[tuple[str, int], MaskDescription]]:
    """``layers`` without the mask operations used only as masks of :data:`MASK_CALLS` calls
    (their ``mask`` kwargs removed), and ``{(consumer, node index): description}`` (see
    :data:`MaskDescription`), one per call node of each consumer that was given a mask."""
    ops: dict[Any, MaskDescription] = {
        _name(raw): found for raw in layers if (found := _not_equal(raw)) is not None}
    inner: dict[Any, list[str]] = {}  # mask operation -> the mask operations it combines
    for raw in layers:  # in the order Keras records them: operands first
        reduced = _any_last(raw)
        if reduced in ops and not ops[reduced][2] and ops[reduced][0] not in ("or", "and"):
            inner[_name(raw)] = [reduced]
            ops[_name(raw)] = (ops[reduced][0], ops[reduced][1], True)
        logical = _logical(raw)
        if logical is not None and all(operand in ops for operand in logical[1]):
            inner[_name(raw)] = logical[1]
            ops[_name(raw)] = (logical[0], tuple(ops[operand] for operand in logical[1]), False)
    if not ops:
        return layers, {}
    kept = set(_references(outputs)) & set(ops)
    for raw in layers:
        nodes = raw.get("inbound_nodes") if isinstance(raw, dict) else None
        if _name(raw) in inner:
            continue  # its use of its operands goes with it
        for node in nodes if isinstance(nodes, list) else []:
            if not isinstance(node, dict):
                kept.update(set(_references(node)) & set(ops))
                continue
            kwargs = node.get("kwargs") if isinstance(node.get("kwargs"), dict) else {}
            kept.update(set(_references(node.get("args"))) & set(ops))
            kept.update(set(_references({k: v for k, v in kwargs.items() if k != "mask"})) & set(ops))
            mask = _tensor(kwargs.get("mask"))
            if mask in ops and raw.get("class_name") not in MASK_CALLS:  # type: ignore[union-attr]
                kept.add(mask)
    pending = [name for name in kept if name in inner]
    while pending:  # a kept operation keeps what it combines
        for operand in inner[pending.pop()]:
            if operand not in kept:
                kept.add(operand)
                pending.extend([operand] if operand in inner else [])
    dropped = set(ops) - kept
    result, masks = [], {}
    for raw in layers:
        if _name(raw) in dropped:
            continue
        nodes = raw.get("inbound_nodes")
        if isinstance(nodes, list) and any(isinstance(node, dict) for node in nodes):
            stripped = []
            for index, node in enumerate(nodes):
                kwargs = node.get("kwargs") if isinstance(node, dict) and isinstance(node.get("kwargs"), dict) else {}
                mask = _tensor(kwargs.get("mask"))
                if mask in dropped:
                    masks[(str(_name(raw)), index)] = ops[mask]
                    node = {**node, "kwargs": {k: v for k, v in kwargs.items() if k != "mask"}}
                stripped.append(node)
            raw = {**raw, "inbound_nodes": stripped}
        result.append(raw)
    return result, masks
