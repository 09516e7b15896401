"""Experiment configuration: frozen dataclasses, validated up front.

A configuration comes from a TOML (or YAML, when PyYAML is installed) file, from a dict,
or from command-line flags; every key is checked, unknown keys and bad values are
``ValueError``s that name the key, what was expected and what was received.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from .._repr import short


__all__ = ["BN_VARIANTS", "RECORDED_KEYS", "Variant", "ExperimentConfig", "load_config"]

#: What each variant puts in the network.
BN_VARIANTS = ("none", "before_activation", "after_activation", "renorm", "ghost")

#: Keys a run folder's ``config.json`` records about how the run was launched; accepted (and
#: checked) when read back, but not settings: ``world_size`` is the number of processes.
RECORDED_KEYS = ("world_size",)
#: More threads than this are refused (OpenMP aborts on absurd counts).
MAX_THREADS = 1024


def _text(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"`{key}` must be a non-empty string; received: {short(value)}")


def _file_name(key: str, value: Any) -> None:
    """A name that becomes one file or folder name: no separators, no ``..``, not hidden."""
    _text(key, value)
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if any(sep in value for sep in separators) or value.startswith(".") or "\0" in value or len(value) > 100:
        raise ValueError(f"`{key}` names a folder or file inside the output folder: expected a plain name of at most "
                         "100 characters without path separators, '..' or a leading '.'; "
                         f"received: {short(value)}")


def _choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{key}` must be one of {list(choices)}; received: {short(value)}")


def _integer(key: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{key}` must be an integer >= {minimum}; received: {short(value)}")


def _number(key: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"`{key}` must be a number in {interval}; received: {short(value)}")


@dataclass(frozen=True)
class Variant:
    """One network variant: where batch norm goes and its hyper-parameters (Keras names)."""

    batch_norm: str = "none"
    name: str = ""
    momentum: float = 0.99
    epsilon: float = 1e-3
    virtual_batch_size: int = 8  # ghost only
    renorm_rmax: float = 3.0  # renorm only (Ioffe's final values)
    renorm_dmax: float = 5.0

    def __post_init__(self) -> None:
        _choice("batch_norm", self.batch_norm, BN_VARIANTS)
        if not self.name:
            object.__setattr__(self, "name", self.batch_norm)
        _file_name("name", self.name)  # the checkpoint file is <name>-seed<k>.pt
        _number("momentum", self.momentum, 0.0, 1.0)
        _number("epsilon", self.epsilon, 0.0, math.inf, low_open=True)
        _integer("virtual_batch_size", self.virtual_batch_size, 1)
        _number("renorm_rmax", self.renorm_rmax, 1.0, math.inf)
        _number("renorm_dmax", self.renorm_dmax, 0.0, math.inf)

    @property
    def placement(self) -> str | None:
        """Where the BN layers sit in the VGG builder (renorm and ghost go before the activation)."""
        if self.batch_norm == "none":
            return None
        return "after_activation" if self.batch_norm == "after_activation" else "before_activation"

    def bn_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"momentum": self.momentum, "epsilon": self.epsilon}
        if self.batch_norm == "renorm":
            kwargs.update(renorm=True, renorm_clipping={"rmax": self.renorm_rmax, "rmin": 1.0 / self.renorm_rmax,
                                                         "dmax": self.renorm_dmax})
        if self.batch_norm == "ghost":
            kwargs["virtual_batch_size"] = self.virtual_batch_size
        return kwargs


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run needs; ``bnkit train`` writes the resolved copy into the run folder."""

    name: str = "experiment"
    dataset: str = "digits"
    image_size: int = 32
    limit: int | None = None
    model: str = "vgg16"
    width: float = 0.125
    batch_norm_dense: bool = False
    dropout: float = 0.0
    variants: tuple[Variant, ...] = (Variant("none"), Variant("before_activation"), Variant("after_activation"))
    batch_size: int = 64
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    sgd_momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    epochs: int = 10
    seeds: tuple[int, ...] = (0,)
    threads: int | None = None
    target_accuracy: float = 0.9
    output_dir: str = "runs"
    # Synchronized BN: statistics over the global batch of all processes (bnkit.convert_sync_batchnorm).
    # Meaningful with torchrun and more than one process; with one it only switches bnkit's Keras
    # layers to tf.keras' synchronized (non-fused, biased moving-variance) rule, so that a one-process
    # --sync-bn run is the exact reference of an N-process one.
    sync_bn: bool = False
    device: str = "cpu"  # "cuda": GPU LOCAL_RANK of each process (NCCL between processes; gloo on CPU)

    def __post_init__(self) -> None:
        _file_name("name", self.name)
        _text("dataset", self.dataset)
        _integer("image_size", self.image_size, 32)
        if self.limit is not None:
            _integer("limit", self.limit, 1)
        _choice("model", self.model, ("vgg16", "vgg19"))
        _number("width", self.width, 0.0, 16.0, low_open=True)
        if not isinstance(self.batch_norm_dense, bool):
            raise ValueError(f"`batch_norm_dense` must be true or false; received: {short(self.batch_norm_dense)}")
        _number("dropout", self.dropout, 0.0, 1.0, high_open=True)
        if not self.variants or not all(isinstance(v, Variant) for v in self.variants):
            raise ValueError(f"`variants` must be a non-empty list of variants; received: {short(self.variants)}")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"`variants` must have distinct names; received: {names}")
        _integer("batch_size", self.batch_size, 1)
        for variant in self.variants:  # every variant, before any trains
            if variant.batch_norm == "ghost" and self.batch_size % variant.virtual_batch_size:
                raise ValueError(f"variant {variant.name!r}: `virtual_batch_size` ({variant.virtual_batch_size}) must "
                                 f"divide `batch_size` (ghost batches split every batch); received: "
                                 f"batch_size={self.batch_size}")
        _choice("optimizer", self.optimizer, ("sgd", "adam"))
        _number("learning_rate", self.learning_rate, 0.0, 10.0, low_open=True)
        _number("sgd_momentum", self.sgd_momentum, 0.0, 1.0, high_open=True)
        _number("weight_decay", self.weight_decay, 0.0, 1.0)
        _choice("schedule", self.schedule, ("constant", "cosine", "step"))
        _integer("epochs", self.epochs, 1)
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            raise ValueError(f"`seeds` must be a non-empty list of non-negative ints; received: {short(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` must be distinct; received: {list(self.seeds)}")
        if self.threads is not None:
            _integer("threads", self.threads, 1)
            if self.threads > MAX_THREADS:
                raise ValueError(f"`threads` must be at most {MAX_THREADS} (this machine has {os.cpu_count()} CPUs); "
                                 f"received: {self.threads!r}")
        _number("target_accuracy", self.target_accuracy, 0.0, 1.0, low_open=True)
        _text("output_dir", self.output_dir)
        if not isinstance(self.sync_bn, bool):
            raise ValueError(f"`sync_bn` must be true or false; received: {short(self.sync_bn)}")
        _choice("device", self.device, ("cpu", "cuda"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExperimentConfig":
        """Build from plain data (a parsed TOML/YAML/JSON file); unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise ValueError(f"An experiment configuration must be a table of keys; received: {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - set(RECORDED_KEYS))
        if unknown:
            raise ValueError(f"Unknown configuration keys {unknown}; expected some of {sorted(known)}")
        values = {key: value for key, value in data.items() if key not in RECORDED_KEYS}
        if "world_size" in data:
            _integer("world_size", data["world_size"], 1)
        if "variants" in values:
            values["variants"] = tuple(_variant(v) for v in _listed("variants", values["variants"]))
        if "seeds" in values:
            values["seeds"] = tuple(_listed("seeds", values["seeds"]))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["variants"] = [dataclasses.asdict(v) for v in self.variants]
        data["seeds"] = list(self.seeds)
        return data

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)

    def check_training_set(self, size: int) -> None:
        """The errors training on ``size`` examples would hit mid-run, raised before the first step."""
        if size < self.batch_size:  # then every epoch is one batch of all the examples
            for variant in self.variants:
                if variant.batch_norm == "ghost" and size % variant.virtual_batch_size:
                    raise ValueError(f"variant {variant.name!r}: `virtual_batch_size` ({variant.virtual_batch_size}) "
                                     f"must divide the {size} training examples, which are one batch since "
                                     f"batch_size={self.batch_size} exceeds them; lower `batch_size` or `limit`")


def load_config(path: str | Path) -> ExperimentConfig:
    """Read a ``.toml``, ``.json`` or ``.yaml``/``.yml`` experiment file."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"No configuration file at {source}")
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{source}: expected a UTF-8 text file; found undecodable bytes ({error.reason})") from None
    suffix = source.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data: Any = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ValueError(f"{source}: reading YAML needs PyYAML (pip install pyyaml); use TOML otherwise") from None
            data = yaml.safe_load(text)
        else:
            raise ValueError(f"{source}: expected a .toml, .json, .yaml or .yml file; received suffix {suffix!r}")
    except (ValueError, TypeError) as error:
        if str(source) in str(error):
            raise
        raise ValueError(f"{source}: not a valid {suffix[1:]} file: {error}") from error
    return ExperimentConfig.from_dict(data)


def _variant(value: Any) -> Variant:
    if isinstance(value, Variant):
        return value
    if isinstance(value, str):
        return Variant(batch_norm=value)
    if isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(Variant)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"Unknown variant keys {unknown}; expected some of {sorted(known)}")
        return Variant(**value)
    raise ValueError(f"A variant must be a name such as 'before_activation' or a table; received: {short(value)}")


def _listed(key: str, value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"`{key}` must be a list; received: {short(value)}")
