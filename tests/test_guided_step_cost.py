"""benchmarks/guided_step_cost.py: the recipes, the block of steps per sample, the written figures."""

import json

import pytest

from benchmark_module import load_benchmark


@pytest.fixture(scope="module")
def cost():
    return load_benchmark("guided_step_cost")


def test_recipes_resolve_explain_every_per_architecture(cost):
    _, every_cnn = cost.recipe_losses("cnn2d", ["defaults", "session7"])
    _, every_vit = cost.recipe_losses("vit2d", ["defaults", "session7"])
    # the bounded term explains every 64th case by default, CNN and transformer alike
    assert every_cnn == 64 and every_vit == 64
    # unbounded, every 32nd: the largest explain_every among the recipes asked for decides the block
    assert cost.recipe_losses("cnn2d", ["unbounded", "session7"])[1] == 32


def test_step_cost_smoke_run_writes_ratios(cost, tmp_path):
    out = tmp_path / "cost.json"
    cost.main(
        [
            "--archs",
            "cnn2d",
            "--rounds",
            "1",
            "--batch-size",
            "8",
            "--recipes",
            "defaults,no-lrp",
            "--out",
            str(out),
        ]
    )
    data = json.loads(out.read_text())
    r = data["results"]["cnn2d"]
    # one sample spans the steps that hold one explained case: 64 cases in batches of 8
    assert r["block"] == 8 and set(r["step_s"]) == {"plain", "defaults", "no-lrp"}
    # a guided step runs a reference forward and backward of the whole batch besides the plain one
    assert r["over_plain"]["defaults"] > 1.0 and r["over_plain"]["no-lrp"] > 1.0
    with pytest.raises(SystemExit):
        cost.main(["--recipes", "fastest", "--out", str(out)])
