import json

import torch

from medlrp.cli import main
from medlrp.registry import METHODS


def test_demo_small_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n", "10", "--epochs", "1", "--size", "32"]
    assert main([*args, "--cases", "1", "--eval-cases", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = out / "report.html"
    assert f"report: {report}" in printed.strip().splitlines()[-1]
    assert report.is_file() and (out / "model.pt").is_file() and (out / "data" / "dataset.json").is_file()
    results = json.loads((out / "results.json").read_text())
    (case,) = results["cases"]
    assert set(case["outputs"]) == set(METHODS.names())  # every method that exists
    assert (out / case["outputs"]["lrp"]["relevance"]).is_file()
    assert "metrics" in case  # the tumour mask went along
    html = report.read_text()
    assert "Demo" in html and "accuracy" in html
    table = out / "evaluate" / "metrics.md"
    assert table.is_file() and "| lrp |" in table.read_text()


def test_demo_bad_input(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a folder" in err
    assert main(["demo", "--out", str(tmp_path / "d"), "--n", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--n" in err


def test_demo_leaves_out_a_broken_method(monkeypatch, capsys):
    from medlrp.commands.demo import working_methods
    from medlrp.models.cnn import cnn2d

    def broken(model, x, target, **options):
        raise RuntimeError("under construction")

    monkeypatch.setitem(METHODS._items, "broken-method", broken)
    model = cnn2d().eval()
    assert working_methods(model, torch.randn(1, 1, 32, 32), ["gradient", "broken-method"]) == ["gradient"]
    assert "broken-method" in capsys.readouterr().err
