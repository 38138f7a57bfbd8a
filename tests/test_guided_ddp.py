"""Guided training under torchrun (2 processes, gloo on CPU) equals one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("guided_ddp_worker.py")


def _run(cmd: list[str], tmp_path: Path) -> None:
    # the tests folder, then whatever medlrp this test itself runs against (a checkout's src)
    path = os.pathsep.join([str(WORKER.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("bound", ["none", "0.05"])
def test_two_processes_give_the_gradient_of_one(tmp_path, bound):
    """Also with the guidance gradient bounded (0.05: the bound is hit), over the whole batch."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    _run([sys.executable, str(WORKER), str(one), bound], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    port = "29517" if bound == "none" else "29518"
    _run([*torchrun, "--master_port", port, str(WORKER), str(two), bound], tmp_path)
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert a["grads"].keys() == b["grads"].keys()
    for name, g in a["grads"].items():
        # shards of 3 and 2 cases: the scaling makes the uneven split exact too
        assert torch.allclose(g, b["grads"][name], rtol=1e-9, atol=1e-12), name
    assert any(g.abs().sum() > 0 for g in a["grads"].values())
    for key in ("ce", "guidance", "acc", "reference"):
        assert abs(a["parts"][key] - b["parts"][key]) < 1e-9, key
    assert a["parts"]["guidance"] > 0 and a["parts"]["reference"] > 0
    if bound != "none":
        assert a["parts"]["guidance_grad_ratio"] > float(bound)  # the bound acted
        assert abs(a["parts"]["guidance_grad_ratio"] - b["parts"]["guidance_grad_ratio"]) < 1e-9
