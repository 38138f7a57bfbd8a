"""docs/lrp.md's "Adding a rule" runs as written, in a fresh process (its registrations stay there)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
# the doc's rule against its own definition (as tests/test_lrp_registry.py checks every registered rule)
lrp = medlrp.LRP(model, "squared-first")
fast, exact = lrp.relevance(x, 1), lrp.relevance(x, 1, create_graph=True).detach()
assert torch.allclose(fast, exact, rtol=1e-6, atol=1e-9)
assert torch.allclose(e.relevance, reference.relevance) and e.relevance.abs().sum() > 0
"""


def test_adding_a_rule_runs_as_written() -> None:
    text = (ROOT / "docs" / "lrp.md").read_text()
    section = text.split("## Adding a rule", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(block.strip().splitlines()) < 40
    assert "medlrp/" not in block  # touches no medlrp file
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", block + CHECK], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "same as the built-in w-square: True" in run.stdout
