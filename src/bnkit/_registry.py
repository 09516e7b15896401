"""Resolve Keras-style identifiers (name, config dict, instance, callable) against a registry.

Shared by :mod:`bnkit.initializers`, :mod:`bnkit.regularizers` and
:mod:`bnkit.constraints`, which mirror the tf.keras 2 (tf_keras 2.21) ``get`` functions:

- a string is looked up case-sensitively among the registered names (class names,
  snake_case names and Keras' legacy aliases) and built with its default arguments;
- a dict is a Keras serialisation, ``{"class_name": ..., "config": {...}}``, optionally
  with the Keras 3 keys ``"module"`` and ``"registered_name"``;
- an instance of the module's base class is returned as is, a subclass is instantiated;
- an instance of a tf_keras / Keras class is rebuilt from its class name and ``get_config()``;
- any other callable is wrapped by the module (the wrapper checks what it returns).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, Generic, NoReturn, TypeVar, cast
from ._repr import short

_KERAS_MODULE_PREFIXES = ("keras.", "tf_keras.", "tensorflow.")
_DICT_KEYS = frozenset({"class_name", "config", "module", "registered_name"})


class KerasObject:
    """Base of the registry classes: ``get_config`` reads the attributes named in ``_config_keys``;
    ``__repr__`` and ``from_config`` follow from it."""

    _config_keys: tuple[str, ...] = ()

    def get_config(self) -> dict[str, Any]:
        """The Keras config dict: the constructor arguments, JSON-serialisable."""
        return {key: getattr(self, key) for key in self._config_keys}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> KerasObject:
        """Build an instance from the output of :meth:`get_config`."""
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"


T = TypeVar("T", bound=KerasObject)


class UserCallable:
    """Wraps a user callable; the subclass in each module checks what it returns."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fn!r})"

    def _fail(self, result: Any, expected: str) -> NoReturn:
        """Raise a ValueError saying the callable returned ``result`` instead of ``expected``."""
        shape = getattr(result, "shape", None)
        got = f"{type(result).__name__} of shape {tuple(shape)}" if shape is not None else short(result, 200)
        raise ValueError(f"Invalid result of the user callable {short(self.fn)}: expected {expected}; received: {got}.")


def check_number(value: Any, name: str, *, non_negative: bool = False) -> float:
    """Return ``value`` if it is a finite real number (and ``>= 0`` if asked), else raise ValueError."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (non_negative and value < 0):
        expected = "a finite non-negative number" if non_negative else "a finite number"
        raise ValueError(f"Invalid `{name}`: expected {expected}; received: {name}={short(value)}.")
    return cast(float, value)  # returned unchanged: an int stays an int in the config


class Registry(Generic[T]):
    """Identifier resolution for one kind of object (``"initializer"``, ``"regularizer"``, ...).

    Args:
        kind: the singular noun used in error messages.
        module: the Keras module name written by :meth:`serialize` (``"keras.initializers"``).
        base: the module's base class.
        factories: every accepted name mapped to a class or factory taking the config keys.
        display_names: the names listed in "unknown name" errors.
        wrap: turns a user callable into an object checking the callable's results.
        ignored_config_keys: config keys Keras tolerates and drops (e.g. ``"dtype"``).
    """

    def __init__(
        self,
        kind: str,
        module: str,
        base: type[T],
        factories: Mapping[str, Callable[..., T]],
        display_names: list[str],
        wrap: Callable[[Callable[..., Any]], T],
        ignored_config_keys: frozenset[str] = frozenset(),
    ) -> None:
        self.kind = kind
        self.module = module
        self.base = base
        self.factories = dict(factories)
        self.display_names = display_names
        self.wrap = wrap
        self.ignored_config_keys = ignored_config_keys

    def get(self, identifier: Any, arg_name: str = "identifier") -> T:
        """Resolve ``identifier`` (never None here) to an object of the registry's kind."""
        if isinstance(identifier, self.base):
            return identifier
        if isinstance(identifier, type) and issubclass(identifier, self.base):
            return identifier()
        if isinstance(identifier, str):
            return self.build(identifier, {}, arg_name)
        if isinstance(identifier, Mapping):
            return self._from_dict(identifier, arg_name)
        module = getattr(type(identifier), "__module__", "") or ""
        if module.startswith(_KERAS_MODULE_PREFIXES) and callable(getattr(identifier, "get_config", None)):
            return self.build(type(identifier).__name__, identifier.get_config(), arg_name)
        if callable(identifier) and not isinstance(identifier, type):
            return self.wrap(identifier)
        raise TypeError(
            f"Invalid type for `{arg_name}`: expected a {self.kind} name (str), a Keras config dict "
            f"({{'class_name': ..., 'config': ...}}), a bnkit {self.base.__name__} or a callable; "
            f"received: {short(identifier)} (of type {type(identifier).__name__})."
        )

    def build(self, name: str, config: Mapping[str, Any], arg_name: str = "identifier") -> T:
        """Instantiate the registered ``name`` with the keyword arguments in ``config``."""
        factory = self.factories.get(name)
        if factory is None:
            names = ", ".join(repr(n) for n in self.display_names)
            raise ValueError(
                f"Unknown {self.kind} for `{arg_name}`: {short(name)}. Expected one of: {names} "
                f"(or the matching class name); received: {short(name)}."
            )
        kwargs = {key: value for key, value in config.items() if key not in self.ignored_config_keys}
        accepted = [
            p.name
            for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        unexpected = sorted(set(kwargs) - set(accepted))
        if unexpected:
            raise ValueError(
                f"Invalid config for {self.kind} {name!r} in `{arg_name}`: unknown key(s) {unexpected}. "
                f"Expected keys among: {accepted}; received: {short(dict(config))}."
            )
        return factory(**kwargs)

    def _from_dict(self, identifier: Mapping[str, Any], arg_name: str) -> T:
        name = identifier.get("class_name")
        config = identifier.get("config", {})
        config = {} if config is None else config
        extra = sorted(str(key) for key in set(identifier) - _DICT_KEYS)
        if not isinstance(name, str) or not isinstance(config, Mapping) or extra:
            raise ValueError(
                f"Invalid Keras config dict for `{arg_name}`: expected {{'class_name': str, "
                f"'config': dict}} (optionally with 'module' and 'registered_name'); "
                f"received: {short(dict(identifier))}."
            )
        return self.build(name, config, arg_name)

    def serialize(self, obj: T | None) -> dict[str, Any] | None:
        """The Keras 3 / tf_keras 2.21 serialisation of ``obj`` (None for None)."""
        if obj is None:
            return None
        if not isinstance(obj, self.base) or type(obj).__name__ not in self.factories:
            raise TypeError(
                f"Cannot serialize {self.kind}: expected a built-in {self.base.__name__} "
                f"(user callables have no Keras config); received: {short(obj)}."
            )
        return {
            "module": self.module,
            "class_name": type(obj).__name__,
            "config": obj.get_config(),
            "registered_name": None,
        }

