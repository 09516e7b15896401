"""The documentation site: its code runs, its shown output is what the code prints, the
Chinese pages carry the same code, and ``mkdocs build --strict`` succeeds offline.

Conventions of the pages (``docs/*.md``):

* Every ```` ```python ```` block of a page runs, in order, in one namespace, in a fresh
  interpreter started in a temporary folder (files the examples write stay there).
* A block whose first line starts with ``# not run:`` (Keras code, which needs TensorFlow;
  a file the reader has and the tests do not) is only compiled.
* A ```` ```text ```` block that directly follows a python block (nothing but blank lines
  between them) is that block's expected standard output, compared line by line with runs
  of whitespace collapsed, unless the python block contains ``# output: not compared``
  (timings, whole summary tables whose layout may change).
* ``docs/zh/<page>`` is the Simplified Chinese version of ``docs/<page>``: the sequence of
  its code blocks (language and text) must equal the English one.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
QUESTION_PAGES = ("vgg16-batchnorm.md", "parameter-count.md", "layer-arguments.md")
PAGES = ("index.md",) + QUESTION_PAGES
NOT_RUN = "# not run:"
NOT_COMPARED = "# output: not compared"
PAGE_TIMEOUT_S = 300
# README blocks that must match between README.md and README.zh-CN.md: commands and code.
README_LANGS = {"bash", "sh", "shell", "console", "python", "toml"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    follows_previous: bool  # only blank lines since the previous block closed


def code_blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text`` in order (indented fences, e.g. in lists, included)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i, last_close = 0, None
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        lang = match["info"].strip().split(" ")[0].split("{")[0].strip()
        start, body = i, []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence) and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        if i >= len(lines):
            raise ValueError(f"unclosed code fence opened at line {start + 1}")
        between = lines[last_close + 1:start] if last_close is not None else ["x"]
        blocks.append(Block(lang, "\n".join(body), start + 1, all(not s.strip() for s in between)))
        last_close = i
        i += 1
    return blocks


def _normalise(output: str) -> list[str]:
    return [" ".join(line.split()) for line in output.strip().splitlines() if line.strip()]


_RUNNER = r"""
import contextlib, io, json, sys, traceback
blocks = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__main__"}
outputs = []
for block in blocks:
    buffer = io.StringIO()
    code = compile(block["code"], block["where"], "exec")
    try:
        with contextlib.redirect_stdout(buffer):
            exec(code, namespace)
    except BaseException:
        outputs.append({"output": buffer.getvalue(), "error": traceback.format_exc()})
        break
    outputs.append({"output": buffer.getvalue(), "error": None})
json.dump(outputs, open(sys.argv[2], "w", encoding="utf-8"))
"""


def run_page(page: Path, tmp_path: Path) -> list[tuple[Block, str, Block | None]]:
    """Run ``page``'s python blocks in one fresh interpreter; (block, stdout, expected block)."""
    blocks = code_blocks(page.read_text(encoding="utf-8"))
    runnable: list[tuple[Block, Block | None]] = []
    for k, block in enumerate(blocks):
        if block.lang != "python":
            continue
        nxt = blocks[k + 1] if k + 1 < len(blocks) else None
        expected = nxt if nxt is not None and nxt.lang == "text" and nxt.follows_previous else None
        if block.code.lstrip().startswith(NOT_RUN):
            compile(block.code, f"{page.name}:{block.line}", "exec")  # at least valid Python
            assert expected is None, f"{page.name}:{block.line}: a block that is not run shows output"
            continue
        runnable.append((block, expected))
    spec = [{"code": b.code, "where": f"{page.relative_to(ROOT)}:{b.line}"} for b, _ in runnable]
    (tmp_path / "blocks.json").write_text(json.dumps(spec), encoding="utf-8")
    (tmp_path / "runner.py").write_text(_RUNNER, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    env["PYTHONWARNINGS"] = "error"  # as the test suite: an example that warns is a bug
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "blocks.json"), str(tmp_path / "out.json")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=PAGE_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"{page.name}: the runner failed\n{proc.stdout}\n{proc.stderr}"
    results = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    for (block, _), result in zip(runnable, results):
        assert result["error"] is None, f"{page.name}:{block.line} raised:\n{result['error']}"
    assert len(results) == len(runnable)
    return [(b, r["output"], e) for (b, e), r in zip(runnable, results)]


# ---------------------------------------------------------------------------------------
def test_code_block_parser() -> None:
    text = "a\n```python\nx = 1\n```\n\n```text\n1\n```\nprose\n```text\n2\n```\n- item\n  ```bash\n  ls\n  ```\n"
    blocks = code_blocks(text)
    assert [(b.lang, b.code, b.follows_previous) for b in blocks] == [
        ("python", "x = 1", False), ("text", "1", True), ("text", "2", False), ("bash", "ls", False)]
    with pytest.raises(ValueError, match="unclosed"):
        code_blocks("```python\nx = 1\n")


@pytest.mark.slow
@pytest.mark.parametrize("name", QUESTION_PAGES)
def test_page_code_runs_and_prints_what_the_page_shows(name: str, tmp_path: Path) -> None:
    results = run_page(DOCS / name, tmp_path)
    assert len(results) >= 5, f"{name}: expected the answer to be shown by running code"
    compared = 0
    for block, output, expected in results:
        if expected is None:
            continue
        if NOT_COMPARED in block.code:
            continue
        assert output.strip(), f"{name}:{block.line}: the page shows output but the code printed nothing"
        assert _normalise(output) == _normalise(expected.code), (
            f"{name}:{block.line}: the output differs from the ```text block at line {expected.line}\n"
            f"--- printed ---\n{output}\n--- shown ---\n{expected.code}")
        compared += 1
    assert compared >= 3, f"{name}: expected several outputs checked against what the page shows"


def test_index_page_has_no_unchecked_output(tmp_path: Path) -> None:
    blocks = code_blocks((DOCS / "index.md").read_text(encoding="utf-8"))
    assert all(b.lang != "python" for b in blocks), "index.md: python examples belong on a question page"


def test_output_markers_are_only_used_on_blocks_with_output() -> None:
    for name in QUESTION_PAGES:
        blocks = code_blocks((DOCS / name).read_text(encoding="utf-8"))
        for k, block in enumerate(blocks):
            if block.lang == "python" and NOT_COMPARED in block.code:
                nxt = blocks[k + 1] if k + 1 < len(blocks) else None
                assert nxt is not None and nxt.lang == "text" and nxt.follows_previous, (
                    f"{name}:{block.line}: '{NOT_COMPARED}' on a block without shown output")


@pytest.mark.parametrize("name", PAGES)
def test_chinese_page_has_the_same_code_blocks(name: str) -> None:
    english = code_blocks((DOCS / name).read_text(encoding="utf-8"))
    chinese_path = DOCS / "zh" / name
    assert chinese_path.exists(), f"missing Chinese page docs/zh/{name}"
    chinese = code_blocks(chinese_path.read_text(encoding="utf-8"))
    assert [(b.lang, b.code) for b in chinese] == [(b.lang, b.code) for b in english], (
        f"docs/zh/{name}: its code blocks differ from docs/{name}'s; update both together")
    text = chinese_path.read_text(encoding="utf-8")
    assert len(re.findall(r"[\u4e00-\u9fff]", text)) > 200, f"docs/zh/{name} is not written in Chinese"


def test_chinese_readme_has_the_same_commands_and_code() -> None:
    english = [(b.lang, b.code) for b in code_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
               if b.lang in README_LANGS]
    chinese_text = (ROOT / "README.zh-CN.md").read_text(encoding="utf-8")
    chinese = [(b.lang, b.code) for b in code_blocks(chinese_text) if b.lang in README_LANGS]
    assert len(english) >= 5
    assert chinese == english, "README.zh-CN.md: its bash/python blocks differ from README.md's"
    assert len(re.findall(r"[\u4e00-\u9fff]", chinese_text)) > 1000


def test_readme_links_to_the_chinese_readme_and_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](README.zh-CN.md)" in readme
    for name in QUESTION_PAGES:
        assert f"](docs/{name})" in readme, f"README.md does not link docs/{name}"
    assert "make docs" in readme


def test_pages_link_only_to_existing_images() -> None:
    for page in sorted(DOCS.rglob("*.md")):
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).resolve().is_file(), f"{page.relative_to(ROOT)}: no image {target}"


@pytest.mark.slow
def test_mkdocs_builds_strictly_without_network(tmp_path: Path) -> None:
    try:
        import material  # noqa: F401  (mkdocs-material)
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.skip("mkdocs / mkdocs-material are not installed (pip install -e '.[dev]' installs them)")
    site = tmp_path / "site"
    env = dict(os.environ)
    # Any attempt to fetch something (fonts, plugins) fails instead of silently succeeding.
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env[key] = "http://127.0.0.1:9"
    env["NO_MKDOCS_2_WARNING"] = "1"  # a banner about mkdocs 2, not a build problem
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for name in PAGES:
        stem = "" if name == "index.md" else name[:-3] + "/"
        for prefix in ("", "zh/"):
            html = site / prefix / stem / "index.html"
            assert html.is_file(), f"the site lacks {html.relative_to(site)}"
    html = (site / "parameter-count" / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html
    assert "138,374,440" in html
