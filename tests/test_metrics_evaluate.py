"""``medlrp evaluate`` end to end on a tiny phantom dataset and a random-weight checkpoint."""

import csv
import json

import pytest
import torch

from medlrp.cli import main
from medlrp.commands.evaluate import pick_cases
from medlrp.data.phantom import PhantomSpec, write_phantom
from medlrp.metrics.suite import METRIC_INFO, EvaluationResult
from medlrp.metrics.table import mean_ci, ranking, summary_table, table_markdown
from medlrp.models import Preprocessing, save_checkpoint
from medlrp.registry import ARCHITECTURES


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_phantom(root / "data", PhantomSpec(kind="glioma", dims=2, n=10, seed=0, size=32))
    torch.manual_seed(0)
    model = ARCHITECTURES.get("cnn2d")(in_channels=1, num_classes=2, width=4, stages=2)
    pre = Preprocessing(dims=2, channels=1, size=[32, 32])
    classes = ["high_grade", "low_grade"]
    save_checkpoint(root / "m.pt", model, "cnn2d", {"width": 4, "stages": 2}, pre, classes)
    return root


def test_evaluate_writes_table_plots_and_report(setup, capsys):
    out = setup / "out"
    code = main(
        ["evaluate", "--model", str(setup / "m.pt"), "--data", str(setup / "data"), "--out", str(out),
         "--methods", "gradcam,gradient", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    for name in ("metrics.csv", "metrics.md", "per_case.csv", "curves.png", "evaluation.json", "report.html"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "evaluation.json").read_text())
    assert data["methods"] == ["gradcam", "gradient"]
    assert data["data"].endswith("test")  # the test split is used when there is one
    n = len(data["cases"])
    assert n >= 2
    for method in data["methods"]:
        assert len(data["values"][method]["positive_share_in_mask"]) == n  # every phantom case has a mask
        assert all(v is not None for v in data["values"][method]["pointing_game"])
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["metric"] for r in rows} >= {
        "aopc_morf",
        "abpc",
        "positive_share_in_mask",
        "randomisation_similarity",
    }
    for r in rows:  # every mean and interval bound within the metric's documented range
        info = METRIC_INFO[r["metric"]]
        assert info.low <= float(r["mean"]) <= info.high, r
    assert {r["method"] for r in rows} == {"gradcam", "gradient"}
    report = (out / "report.html").read_text()
    assert [r["method"] for r in data["ranking"]] and "Metrics" in report and "data:image/png" in report


@pytest.mark.parametrize("methods", ["nope", "lrp,foo"])
def test_evaluate_with_an_unknown_method_is_one_line_and_writes_nothing(setup, capsys, methods):
    out = setup / f"out-{methods}"
    args = ["evaluate", "--model", str(setup / "m.pt"), "--data", str(setup / "data"), "--methods", methods]
    assert main(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown method" in err
    assert "lrp" in err and "gradcam" in err and "occlusion" in err  # the known methods are named
    assert not out.exists()


def test_table_statistics_and_ranking():
    mean, low, high, n = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert (mean, n) == (2.0, 3)
    assert high - mean == pytest.approx(4.302653 * 1.0 / 3**0.5, rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    r = EvaluationResult(
        methods=["a", "b"],
        cases=["c1", "c2"],
        values={
            "a": {"aopc_morf": [0.3, 0.5], "randomisation_similarity": [0.9, 0.7]},
            "b": {"aopc_morf": [0.1, 0.2], "randomisation_similarity": [0.1, 0.2]},
        },
    )
    assert [row["method"] for row in ranking(r)] in (["a", "b"], ["b", "a"])
    assert ranking(r)[0]["mean_rank"] == 1.5  # a wins AOPC, b wins randomisation
    assert len(summary_table(r)) == 4
    text = table_markdown(r)
    assert "| a | 0.400 ±" in text and "aopc_morf ↑ [-1, 1]" in text
    assert "| 1 | " in text and "| rank | method | mean rank |" in text  # the ranking is a table


def test_max_cases_takes_every_class():
    labels = [0, 0, 0, 0, 1, 1, 2]
    assert pick_cases(labels, None) == list(range(7))
    assert pick_cases(labels, 4) == [0, 1, 4, 6]
    assert pick_cases(labels, 100) == list(range(7))
