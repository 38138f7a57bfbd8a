"""medlrp's CP-LRP equals LXT 2.1's CP-LRP on torchvision ``vit_b_16`` (float64, random weights).

LXT patches ``torch.nn`` classes for the whole process, so it runs in a subprocess
(``tests/vit_lxt_reference.py``), started first so both sides compute at the same time; one
subprocess serves both tests.
Matching rule choices: LXT leaves linear layers and sums to the plain gradient (``linear="zero"``,
``residual="plain"``); its GELU identity rule, layer norm with constant std and stopped query/key in
``nn.MultiheadAttention`` are what ``cp-lrp`` does. LXT's gamma recipe for ViTs adds zennit's ``Gamma``
on every ``nn.Linear`` / ``nn.Conv2d`` module; the attention projections (not called as modules) keep
the plain gradient: ``linear="gamma"`` with ``Zero`` named for them.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import medlrp
from medlrp.lrp.rules import Zero
from medlrp.lrp.transformer import cp_lrp

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from vit_lxt_reference import build, inputs  # noqa: E402

GAMMA = 0.25


@pytest.fixture(scope="module")
def lxt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], dict]]:
    """LXT's relevances, computed in a subprocess started now and read on first use."""
    out = tmp_path_factory.mktemp("lxt") / "lxt.pt"
    cmd = [sys.executable, str(HERE / "vit_lxt_reference.py"), str(out), "--size", "32", "--n", "2"]
    proc = subprocess.Popen([*cmd, "--gamma", str(GAMMA)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cache: dict = {}

    def result() -> dict:
        if not cache:
            log, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, log.decode()
            cache.update(torch.load(out))
        return cache

    yield result
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = build("vit_b_16", 32, 0, torch.float64)
    x = inputs(2, 32, 0, torch.float64)
    return model, x, model(x).argmax(1)


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (ours - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)


def test_cp_lrp_equals_lxt_on_vit_b_16(lxt: Callable[[], dict]) -> None:
    model, x, target = _case()
    ours = medlrp.LRP(model, "cp-lrp", linear="zero", residual="plain").relevance(x, target)
    ref = lxt()
    assert torch.equal(ref["target"], target)
    err = _rel_err(ours, ref["relevance"])
    assert (err < 1e-4).all(), err


def test_gamma_equals_lxt_with_zennit_gamma_on_vit_b_16(lxt: Callable[[], dict]) -> None:
    model, x, target = _case()
    attention = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    plain = {name: Zero() for a in attention for name in (a, f"{a}.out_proj")}
    composite = dataclasses.replace(cp_lrp(linear="gamma", gamma=GAMMA, residual="plain"), name_map=plain)
    ours = medlrp.LRP(model, composite).relevance(x, target)
    ref = lxt()
    assert torch.equal(ref["target"], target)
    err = _rel_err(ours, ref["relevance_gamma"])
    assert (err < 1e-4).all(), err
    # the gamma rule really acted: far from LXT's plain CP-LRP
    assert (_rel_err(ours, ref["relevance"]) > 1e-2).all()
