"""Guided training under torchrun (2 processes, gloo on CPU) equals one process."""

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("guided_ddp_worker.py")


def _run(cmd: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_give_the_gradient_of_one(tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    _run([sys.executable, str(WORKER), str(one)], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    _run([*torchrun, "--master_port", "29517", str(WORKER), str(two)], tmp_path)
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert a["grads"].keys() == b["grads"].keys()
    for name, g in a["grads"].items():
        # shards of 3 and 2 cases: the scaling makes the uneven split exact too
        assert torch.allclose(g, b["grads"][name], rtol=1e-9, atol=1e-12), name
    assert any(g.abs().sum() > 0 for g in a["grads"].values())
    for key in ("ce", "guidance", "acc", "reference"):
        assert abs(a["parts"][key] - b["parts"][key]) < 1e-9, key
    assert a["parts"]["guidance"] > 0 and a["parts"]["reference"] > 0
