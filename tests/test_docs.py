"""The documentation's code examples run as tests.

Every ``.. code-block:: python`` in ``docs/**/*.rst`` is extracted; each page's blocks run
in order in one namespace, in a fresh temporary working directory. A block preceded by a
``.. skip-test: <reason>`` comment is not run (only for what cannot run here, e.g. a
multi-process launch). Pages whose code calls ``torch.compile`` are marked slow.

A block that prints must be followed (blank lines between) by its expected output, a
``.. code-block:: text`` with ``:caption: Output``. The printed lines must match it line by
line: the text between numbers exactly, each number within 1 % (or 1e-3) of the expected
one, and ``...`` in an expected line stands for any text (for timings, addresses).

The DDP tutorial's training script additionally runs in two processes
(``torch.distributed.run``) and must report identical bio state on both ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import linecache
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. (?P<name>code-block|code|sourcecode)::[ \t]*(?P<lang>\S*)")
SKIP = re.compile(r"^[ \t]*\.\. skip-test:(?P<reason>.*)$")
MAX_SKIPS = 3
OUTPUT_CAPTION = ":caption: Output"
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclasses.dataclass
class Block:
    page: Path
    line: int  # 1-based line of the directive
    code: str
    caption: str
    skip: str  # reason, or "" to run
    output: Optional[str] = None  # the expected output block, if one follows


def extract_blocks(page: Path) -> list[Block]:
    """The python code blocks of one reST page, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        match = DIRECTIVE.match(line)
        if not match or match["lang"] != "python":
            continue
        indent = len(match["indent"])
        j, caption = i + 1, ""
        while j < len(lines) and lines[j].strip().startswith(":"):  # directive options
            option = lines[j].strip()
            if option.startswith(":caption:"):
                caption = option[len(":caption:") :].strip()
            j += 1
        body = []
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
            body.append(lines[j])
            j += 1
        code = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        blocks.append(Block(page, i + 1, code, caption, _skip_reason(lines, i), _output_after(lines, j)))
    return blocks


def _output_after(lines: list[str], k: int) -> Optional[str]:
    """The body of an ``Output`` text block starting at line ``k`` (after blank lines), or None."""
    while k < len(lines) and not lines[k].strip():
        k += 1
    match = DIRECTIVE.match(lines[k]) if k < len(lines) else None
    if not match or match["lang"] != "text" or k + 1 >= len(lines) or lines[k + 1].strip() != OUTPUT_CAPTION:
        return None
    indent, k = len(match["indent"]), k + 2
    body = []
    while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) > indent):
        body.append(lines[k])
        k += 1
    return textwrap.dedent("\n".join(body)).strip("\n")


def output_mismatch(expected: str, printed: str) -> Optional[str]:
    """Why ``printed`` does not match ``expected`` (see the module docstring), or None."""
    want, got = _trimmed(expected), _trimmed(printed)
    if len(want) != len(got):
        return f"expected {len(want)} lines, printed {len(got)}:\n{printed}"
    for number, (line, out) in enumerate(zip(want, got), 1):
        if not _line_matches(line, out):
            return f"line {number}: expected\n  {line}\nprinted\n  {out}"
    return None


def _trimmed(text: str) -> list[str]:
    """The lines of ``text`` without trailing spaces and without blank lines at either end."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def _line_matches(expected: str, printed: str) -> bool:
    numbers, pattern = [], []
    for k, part in enumerate(expected.split("...")):
        if k:
            pattern.append(".*")
        last = 0
        for match in NUMBER.finditer(part):
            pattern += [re.escape(part[last : match.start()]), f"({NUMBER.pattern})"]
            numbers.append(float(match.group()))
            last = match.end()
        pattern.append(re.escape(part[last:]))
    match = re.fullmatch("".join(pattern), printed)
    return match is not None and all(
        math.isclose(want, float(got), rel_tol=1e-2, abs_tol=1e-3) for want, got in zip(numbers, match.groups())
    )



def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _skip_reason(lines: list[str], directive: int) -> str:
    """The reason of a ``.. skip-test:`` comment directly above the directive ("" if none)."""
    k = directive - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    match = SKIP.match(lines[k]) if k >= 0 else None
    return match["reason"].strip() if match else ""


PAGES = sorted(p for p in DOCS.rglob("*.rst") if "_build" not in p.parts)
PAGES_WITH_CODE = [p for p in PAGES if extract_blocks(p)]


def _page_param(page: Path):
    slow = any("torch.compile(" in b.code for b in extract_blocks(page))
    marks = [pytest.mark.slow] if slow else []
    return pytest.param(page, id=str(page.relative_to(DOCS)), marks=marks)


@pytest.mark.parametrize("page", [_page_param(p) for p in PAGES_WITH_CODE])
def test_page_examples_run(page: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {"__name__": f"docs_{page.stem}"}
    for block in extract_blocks(page):
        if block.skip:
            continue
        filename = f"{page.relative_to(DOCS)}:{block.line}"
        linecache.cache[filename] = (len(block.code), None, block.code.splitlines(True), filename)
        compiled = compile(block.code, filename, "exec")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compiled, namespace)
        if block.output is None:
            assert not printed.getvalue(), f"{filename} prints; add its output below it:\n{printed.getvalue()}"
        else:
            mismatch = output_mismatch(block.output, printed.getvalue())
            assert mismatch is None, f"{filename}: the output differs from the docs: {mismatch}"


def test_examples_are_found_and_skips_are_rare_and_explained():
    blocks = [b for p in PAGES for b in extract_blocks(p)]
    assert len(blocks) >= 20, "the extractor found too few code blocks; did the directive syntax change?"
    skipped = [b for b in blocks if b.skip]
    assert len(skipped) <= MAX_SKIPS, [f"{b.page.name}:{b.line}" for b in skipped]
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert ".. skip-test::" not in text, f"{page.name}: write '.. skip-test: reason' (a comment)"
        for line in text.splitlines():
            if line.strip() == ".. skip-test:":
                pytest.fail(f"{page.name}: a skip-test comment needs a reason")


def test_extractor_reads_options_indentation_and_skips(tmp_path):
    page = tmp_path / "p.rst"
    page.write_text(
        "Title\n=====\n\n"
        ".. code-block:: python\n   :caption: a.py\n\n   x = 1\n\n   if x:\n       y = 2\n\nText.\n\n"
        ".. skip-test: needs two GPUs\n\n"
        ".. code-block:: python\n\n   raise SystemExit\n\n"
        ".. code-block:: bash\n\n   echo no\n"
    )
    first, second = extract_blocks(page)
    assert (first.caption, first.skip, first.code) == ("a.py", "", "x = 1\n\nif x:\n    y = 2\n")
    assert second.skip == "needs two GPUs" and second.code == "raise SystemExit\n"


def test_extractor_reads_the_output_block(tmp_path):
    page = tmp_path / "p.rst"
    page.write_text(
        ".. code-block:: python\n\n   print(1)\n\n"
        ".. code-block:: text\n   :caption: Output\n\n   loss 0.250\n     indented\n\nText.\n\n"
        ".. code-block:: python\n\n   x = 2\n\nText.\n\n.. code-block:: text\n   :caption: Output\n\n   not x's\n"
    )
    first, second = extract_blocks(page)
    assert first.output == "loss 0.250\n  indented"
    assert second.output is None  # a paragraph in between: not this block's output


@pytest.mark.parametrize(
    "expected, printed, ok",
    [
        ("loss 0.250, accuracy 95.9%", "loss 0.251, accuracy 95.8%", True),  # numbers within 1 %
        ("loss 0.250, accuracy 95.9%", "loss 0.300, accuracy 95.9%", False),
        ("loss 0.250", "loss: 0.250", False),  # the text between numbers is exact
        ("fc1 [8, 16]", "fc1 [8, 16]", True),
        ("fc1 [8, 16]", "fc2 [8, 16]", False),
        ("took ... s", "took 12.3 s", True),  # ... stands for any text
        ("\nline\n\n", "line   \n", True),  # blank lines at the ends and trailing spaces do not count
        ("a\nb", "a", False),
    ],
)
def test_output_comparison(expected, printed, ok):
    assert (output_mismatch(expected, printed) is None) is ok


def _ddp_script() -> str:
    blocks = [b for b in extract_blocks(DOCS / "tutorials" / "distributed.rst") if b.caption == "ddp_train.py"]
    assert len(blocks) == 1, "the DDP tutorial must hold one block captioned ddp_train.py"
    return blocks[0].code


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_tutorial_script_on_two_processes(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(_ddp_script())
    # BIOFX_FUSED=0 as in conftest.py: each process would otherwise compile the fused kernels
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BIOFX_FUSED": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "identical on 2 ranks" in result.stdout, output[-4000:]


def test_math_renders_offline(tmp_path):
    """The docs' own conf.py, on a one-page project: the page loads MathJax from _static, not a CDN."""
    pytest.importorskip("sphinx")
    from sphinx.cmd.build import build_main

    source = tmp_path / "src"
    source.mkdir()
    conf = (DOCS / "conf.py").read_text(encoding="utf-8")
    (source / "conf.py").write_text(f"{conf}\nhtml_static_path = []\n", encoding="utf-8")
    (source / "index.rst").write_text("Math\n====\n\n:math:`g \\leftarrow g \\cdot f`\n", encoding="utf-8")
    out = tmp_path / "html"
    assert build_main(["-W", "-q", "-b", "html", str(source), str(out)]) == 0
    scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', (out / "index.html").read_text(encoding="utf-8"))
    assert scripts == ["_static/mathjax/tex-chtml.js"], scripts
    assert (out / scripts[0]).is_file()


def test_readme_says_how_to_get_the_cpu_build_of_torch():
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    install = readme.split("## Install")[1].split("\n## ")[0]
    commands = [line for block in re.findall(r"```bash\n(.*?)```", install, flags=re.S) for line in block.splitlines()]
    assert commands[0] == "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert install.index("without an NVIDIA GPU") < install.index("whl/cpu")
