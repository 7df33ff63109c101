"""The README's Python examples run, and its quickstart block has exactly two commands."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_block_has_two_commands():
    text = README.read_text()
    block = text.split("<!-- quickstart -->")[1].split("<!-- /quickstart -->")[0]
    commands = [line for line in block.strip().splitlines() if not line.startswith("```")]
    assert len(commands) == 2
    assert "biofx demo" in commands[0] and "pytest" in commands[1]


def test_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        if "bio_model = BioConverter" in block:
            block = "import torch.nn as nn\nmodel = nn.Sequential(nn.Linear(4, 4))\n" + block
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
