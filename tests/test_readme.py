"""The README's Python tour runs as written."""

import re
from pathlib import Path

import torch


def test_readme_python_tour_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    torch.manual_seed(0)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    e = namespace["e"]
    assert e.relevance.shape == namespace["x"].shape
    assert namespace["cam"].relevance.shape == (4, 1, 64, 64)
    assert namespace["r"].requires_grad
