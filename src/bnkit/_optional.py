"""Optional dependencies: imported where they are used, with one clear error naming the pip extra.

``import bnkit`` needs only torch, numpy and tqdm.  The experiments (``bnkit demo`` /
``bnkit train``) also need the ``experiments`` extra: scikit-learn (the digits), matplotlib
(the plots) and Pillow (image folders).
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["optional_import"]

#: Top-level module -> (distribution to install, extra that installs it, what of bnkit needs it).
_PROVIDERS = {
    "sklearn": ("scikit-learn", "experiments", "experiments"),
    "matplotlib": ("matplotlib", "experiments", "experiments"),
    "PIL": ("pillow", "experiments", "experiments"),
}


def optional_import(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` (e.g. ``"sklearn.datasets"``) from an optional dependency.

    Raises:
        ModuleNotFoundError: the package is not installed, with a one-line message such as
            ``bnkit's experiments need matplotlib (for the plots); install them with:
            pip install 'bnkit[experiments]'``.
    """
    top = module.partition(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.partition(".")[0] != top:
            raise  # the package is there but one of its own dependencies is missing: keep that message
        distribution, extra, user = _PROVIDERS[top]
        reason = f" ({purpose})" if purpose else ""
        raise ModuleNotFoundError(f"bnkit's {user} need {distribution}{reason}; install them with: "
                                  f"pip install 'bnkit[{extra}]'", name=top) from None
