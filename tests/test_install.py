"""The core install: ``import bnkit`` needs only torch, numpy and tqdm; the experiments name their extra."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bnkit

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("sklearn", "matplotlib", "PIL")

# Prepended to each child's code: importing any of OPTIONAL fails as if it were not installed,
# and every attempt is recorded in `attempts`.
BLOCK = textwrap.dedent(f"""
    import sys

    attempts = []

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {OPTIONAL!r}:
                attempts.append(name)
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
""")


def _run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_import_bnkit_and_its_cli_needs_no_optional_package() -> None:
    result = _run_blocked("""
        import torch
        import bnkit
        import bnkit.cli
        import bnkit.data
        import bnkit.experiments
        layer = bnkit.BatchNormalization()
        out = layer(torch.randn(8, 3))
        assert out.shape == (8, 3), out.shape
        bnkit.cli.parser().parse_args(["summary", "vgg16"])
        print("attempts:", attempts)
    """)
    assert result.returncode == 0, result.stderr
    assert "attempts: []" in result.stdout  # nothing even tried to import them


def test_demo_without_the_experiments_extra_is_one_clear_line() -> None:
    result = _run_blocked("""
        from bnkit.cli import main
        raise SystemExit(main(["demo", "--epochs", "1", "--seeds", "1"]))
    """)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("bnkit demo: error: bnkit's experiments need matplotlib (for the plots); "
                                     "install them with: pip install 'bnkit[experiments]'")
    assert result.stdout == ""


def test_the_digits_without_scikit_learn_name_the_extra() -> None:
    result = _run_blocked("""
        from bnkit.data import load_dataset
        try:
            load_dataset("digits")
        except ModuleNotFoundError as error:
            print(f"{error.name}: {error}")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("sklearn: bnkit's experiments need scikit-learn (for the 'digits' dataset); "
                                     "install them with: pip install 'bnkit[experiments]'")


def test_core_dependencies_are_torch_numpy_tqdm_and_the_version_has_one_source() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    names = {re.match(r"[A-Za-z0-9_.-]+", req).group() for req in project["project"]["dependencies"]}
    assert names == {"torch", "numpy", "tqdm"}
    extras = project["project"]["optional-dependencies"]
    assert {"experiments", "keras", "dev"} <= set(extras)
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bnkit.__version__"}
    assert bnkit.__version__.count(".") >= 2
