"""Regenerate the committed ``small_*`` Keras files (needs tf_keras and Keras 3)::

    python tests/keras_fixtures/make_fixtures.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.keras_fixtures.oracle import run_jobs  # noqa: E402


def main() -> int:
    tasks = {
        "tf_keras": [{"kind": "build", "name": "small_tf_keras", "recipe": "small",
                      "formats": ["h5", "keras", "w.h5"], "train": False}],
        "keras3": [{"kind": "build", "name": "small_keras3", "recipe": "small",
                    "formats": ["h5", "keras", "weights.h5"], "train": False}],
    }
    with tempfile.TemporaryDirectory() as tmp:
        results = run_jobs(Path(tmp), tasks, "fixtures")
        for flavour, statuses in results.items():
            for name, status in statuses.items():
                if status != "ok":
                    print(f"{flavour} {name}: {status}", file=sys.stderr)
                    return 1
        for path in Path(tmp).iterdir():
            if path.name.startswith("small_"):
                path.replace(HERE / path.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
