"""medlrp's CP-LRP equals LXT 2.1's CP-LRP on torchvision ``vit_b_16`` (float64, random weights).

LXT patches ``torch.nn`` classes for the whole process, so it runs in a subprocess
(``tests/vit_lxt_reference.py``), started first so both sides compute at the same time.
Matching rule choices: LXT leaves linear layers and sums to the plain gradient (``linear="zero"``,
``residual="plain"``); its GELU identity rule, layer norm with constant std and stopped query/key in
``nn.MultiheadAttention`` are what ``cp-lrp`` does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import medlrp

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from vit_lxt_reference import build, inputs  # noqa: E402


def test_cp_lrp_equals_lxt_on_vit_b_16(tmp_path: Path) -> None:
    out = tmp_path / "lxt.pt"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "vit_lxt_reference.py"), str(out), "--size", "32", "--n", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    model = build("vit_b_16", 32, 0, torch.float64)
    x = inputs(2, 32, 0, torch.float64)
    target = model(x).argmax(1)
    ours = medlrp.LRP(model, "cp-lrp", linear="zero", residual="plain").relevance(x, target)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log.decode()
    ref = torch.load(out)
    assert torch.equal(ref["target"], target)
    lxt = ref["relevance"]
    err = (ours - lxt).flatten(1).norm(dim=1) / lxt.flatten(1).norm(dim=1)
    assert (err < 1e-4).all(), err
