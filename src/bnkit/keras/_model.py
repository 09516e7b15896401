"""``KerasModel``: a Keras layer graph executed by PyTorch.

The layers live in a ``ModuleDict`` under their Keras names (helpers a Keras layer needs
get suffixed names: ``conv_pad``, ``conv_relu``); the graph is a list of steps over
numbered tensor slots.  Internally images are NCHW; by default the forward takes and
returns tensors in Keras' own layout (NHWC for a channels-last model), so outputs equal
Keras' outputs on the same inputs; with ``data_format="channels_first"`` it takes and
returns NCHW images and runs without any permute between convs and BNs.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor, fx, nn

__all__ = ["KerasLayerRow", "KerasModel", "Step"]


class Step(NamedTuple):
    """One graph step: run ``target`` (a module name), permute, or take output ``index`` of a
    module that returned several (op ``"item"``), from slots to a slot."""

    op: str
    target: str
    inputs: tuple[int, ...]
    output: int
    perm: tuple[int, ...] = ()
    many: bool = False
    release: tuple[int, ...] = ()
    index: int = 0


class KerasLayerRow(NamedTuple):
    """One layer as Keras lists it in ``model.layers`` (and ``model.summary()``), recorded at
    build time so :func:`bnkit.summary` can speak Keras' terms for a :class:`KerasModel`.

    ``name``/``class_name``: the Keras name and the class as in the config (a nested model is
    one row of class ``Sequential``/``Functional``).  ``modules``: the module keys computing
    it (its own, the helpers the planner added for it such as ``conv_pad`` or ``dense_relu``,
    every layer of a nested model).  ``outputs``: per call, per output tensor, the slot
    holding it and its torch layout ``perm`` (the torch tensor is the Keras tensor
    ``.permute(perm)``)."""

    name: str
    class_name: str
    modules: tuple[str, ...]
    outputs: tuple[tuple[tuple[int, tuple[int, ...]], ...], ...]


class KerasModel(nn.Module):
    """A Keras Sequential or functional model as a torch module.

    Build one with :func:`bnkit.keras.load_model` or :func:`bnkit.keras.build_from_config`.
    ``forward(*inputs)`` takes one tensor per Keras input and returns a tensor (or a tuple
    for several outputs), in Keras' layout by default; a model built with
    ``data_format="channels_first"`` takes and returns its rank-4/5 tensors as NCHW/NCDHW
    (``data_format`` says which: the layout of the model's images at its interface).  ``keras_config`` is the
    model config bnkit writes back (a tf_keras-style dialect that tf_keras 2.x and Keras 3
    both read); ``keras_notes`` lists Keras settings with no torch effect (e.g. kernel
    regularizers), so nothing is dropped silently.  ``keras_classes`` maps each module
    holding Keras weights to its Keras class (a ``DepthwiseConv2D`` is an ``nn.Conv2d``
    whose Keras weights differ from a ``Conv2D``'s), so weights are paired by Keras class.
    Layers live under module keys: their Keras names, except that names torch cannot use as
    keys (``conv1/conv``, ``head.fc``) get a safe key (``conv1_conv``); ``keras_names`` maps
    each layer's key to its Keras name, and :meth:`keras_layer` finds a layer by Keras name.
    Nested models are expanded into one flat graph (a layer whose name is taken gets one
    qualified by its nested models); ``keras_origins`` maps each flat layer with weights to
    ``(nested models, Keras name, .keras weight path)`` in the file it was read from.
    ``keras_layer_rows`` lists the layers as Keras' ``model.layers`` does (see
    :class:`KerasLayerRow`), for :func:`bnkit.summary`.  ``keras_version`` is the Keras
    version the file it was read from records (``"3.15.1"``, ``"2.21.0"``; ``""`` for a model
    built from a config), so :func:`bnkit.keras.save_model` can say which Keras it speaks.
    """

    def __init__(self, name: str, layers: dict[str, nn.Module], steps: list[Step], inputs: list[int],
                 input_ranks: list[int], outputs: list[int], slots: int, keras_config: dict[str, Any],
                 keras_weight_shapes: dict[str, dict[str, tuple[int, ...]]], keras_notes: list[str],
                 keras_classes: dict[str, str] | None = None, keras_names: dict[str, str] | None = None,
                 keras_origins: dict[str, tuple[tuple[str, ...], str, str]] | None = None,
                 data_format: str = "channels_last", keras_data_format: str = "channels_last",
                 keras_layer_rows: tuple[KerasLayerRow, ...] = ()) -> None:
        super().__init__()
        self.name = name
        self.layers = nn.ModuleDict(layers)
        self.steps = tuple(steps)
        self.input_slots = tuple(inputs)
        self.input_ranks = tuple(input_ranks)
        self.output_slots = tuple(outputs)
        self.slots = slots
        self.keras_config = keras_config
        self.keras_weight_shapes = keras_weight_shapes
        self.keras_notes = list(keras_notes)
        self.keras_classes = dict(keras_classes or {})
        self.keras_names = dict(keras_names or {})
        self.keras_origins = dict(keras_origins or {})
        self.data_format = data_format
        self.keras_data_format = keras_data_format
        self.keras_layer_rows = tuple(keras_layer_rows)
        self.keras_version = ""

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if isinstance(inputs, fx.Proxy):  # torch.fx traces ``*inputs`` as one proxy (surgery)
            inputs = tuple(inputs[i] for i in range(len(self.input_slots)))  # type: ignore[index]
            return self._run(inputs)
        if len(inputs) != len(self.input_slots):
            raise ValueError(
                f"Model {self.name!r} expects {len(self.input_slots)} input tensor(s); received {len(inputs)}"
            )
        for rank, x in zip(self.input_ranks, inputs):
            if x.dim() != rank:
                raise ValueError(
                    f"Model {self.name!r}: expected inputs of rank {rank} in {self._layout_name}; "
                    f"received shape {tuple(x.shape)}"
                )
        return self._run(inputs)

    def _run(self, inputs: tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
        values: list[Tensor | None] = [None] * self.slots
        for slot, x in zip(self.input_slots, inputs):
            values[slot] = x
        for step in self.steps:
            if step.op == "permute":
                out = values[step.inputs[0]].permute(step.perm)  # type: ignore[union-attr]
            elif step.op == "item":
                out = values[step.inputs[0]][step.index]  # type: ignore[index]
            elif step.many:
                out = self.layers[step.target]([values[i] for i in step.inputs])
            else:
                out = self.layers[step.target](values[step.inputs[0]])
            values[step.output] = out
            for slot in step.release:
                values[slot] = None
        results = tuple(values[slot] for slot in self.output_slots)
        return results[0] if len(results) == 1 else results  # type: ignore[return-value]

    def keras_name(self, key: str) -> str:
        """The Keras layer name of the module under ``key``."""
        return self.keras_names.get(key, key)

    def display_names(self) -> dict[str, str]:
        """Module path -> the name :func:`bnkit.summary` shows, for layers whose module key is
        not their Keras name (``layers.conv1_conv`` -> ``layers.conv1/conv``)."""
        return {f"layers.{key}": f"layers.{name}" for key, name in self.keras_names.items() if key != name}

    def keras_layer(self, name: str) -> nn.Module:
        """The module of the Keras layer ``name``."""
        for key, keras_name in self.keras_names.items():
            if keras_name == name:
                return self.layers[key]
        if name in self.layers:
            return self.layers[name]
        raise KeyError(f"Model {self.name!r} has no Keras layer named {name!r}")

    @property
    def input_shapes(self) -> list[tuple[int | None, ...]]:
        """The shapes ``forward`` takes, batch first, in this model's interface layout."""
        shapes = []
        for shape in self.keras_input_shapes:
            if self.data_format != self.keras_data_format and len(shape) in (4, 5):
                shape = (shape[0], shape[-1], *shape[1:-1]) if self.data_format == "channels_first" \
                    else (shape[0], *shape[2:], shape[1])
            shapes.append(shape)
        return shapes

    @property
    def keras_input_shapes(self) -> list[tuple[int | None, ...]]:
        """The model's input shapes in Keras' layout, batch first (None: any size)."""
        layers = {layer["name"]: layer["config"] for layer in self.keras_config["config"]["layers"]}
        return [tuple(layers[name]["batch_input_shape"]) for name, _, _ in self.keras_config["config"]["input_layers"]]

    @property
    def _layout_name(self) -> str:
        return "Keras' layout" if self.data_format == self.keras_data_format else f"the {self.data_format} layout"

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, inputs={len(self.input_slots)}, outputs={len(self.output_slots)}, "
                f"data_format={self.data_format!r}")
