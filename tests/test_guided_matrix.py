"""benchmarks/guided_matrix.py: seeds, kernel environments, the per-architecture goals (no training)."""

import json
import math
import statistics

import pytest

from benchmark_module import load_benchmark


@pytest.fixture(scope="module")
def matrix():
    return load_benchmark("guided_matrix")


def test_seeds_and_kernel_environments(matrix, monkeypatch):
    assert matrix.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert matrix.parse_seeds("0-2,7") == [0, 1, 2, 7] and matrix.parse_seeds("3") == [3]
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    assert "ATEN_CPU_CAPABILITY" not in matrix.kernel_env("native")  # the machine's own kernels
    for kernel in ("default", "avx2"):
        env = matrix.kernel_env(kernel)
        assert env["ATEN_CPU_CAPABILITY"] == kernel and env["OMP_NUM_THREADS"] == "1"


def _run(a, b, c, effect=0.01, mass=(0.1, 0.2)):
    parts = {
        "a_plain_confounded": {"test_accuracy": a, "token_effect": 2.0, "mass_inside_mask": mass[0]},
        "b_guided_confounded": {"test_accuracy": b, "token_effect": effect, "mass_inside_mask": mass[1]},
        "c_plain_clean": {"test_accuracy": c, "token_effect": 0.0, "mass_inside_mask": 0.2},
    }
    return {**parts, "gap_recovered": (b - a) / (c - a)}


def test_goals_per_architecture(matrix, tmp_path):
    runs = [_run(0.5, 0.9, 0.9), _run(0.5, 0.95, 0.9), _run(0.5, 0.89, 0.9)]
    rows = [{"arch": "x", "seed": i, "kernel": "default", **matrix.summarise(r)} for i, r in enumerate(runs)]
    s = matrix.per_arch(rows)["x"]
    assert s["recovered_median"] == pytest.approx(1.0) and s["recovered_min"] == pytest.approx(0.975)
    assert s["goals_met"] and s["runs"] == 3 and s["mass_b_over_a_everywhere"]
    # one run under 90 %, a token read, or less mass than the plain model: not met
    for bad in (_run(0.5, 0.8, 0.9), _run(0.5, 0.9, 0.9, effect=0.5), _run(0.5, 0.9, 0.9, mass=(0.2, 0.1))):
        row = {"arch": "x", "seed": 9, "kernel": "avx2", **matrix.summarise(bad)}
        assert not matrix.per_arch([*rows, row])["x"]["goals_met"]
    # the clean model's mass is shown against the same bar: (c) 0.2 under (a) 0.25 here
    weak_run = _run(0.5, 0.9, 0.9, mass=(0.25, 0.3))
    weak = {"arch": "x", "seed": 9, "kernel": "avx2", **matrix.summarise(weak_run)}
    both = matrix.per_arch([*rows, weak])["x"]
    assert both["mass_b_over_a_everywhere"] and not both["mass_c_over_a_everywhere"] and both["goals_met"]
    assert "0.25 / 0.30 / 0.20" in matrix.table([weak], {"x": both})
    failed = {"arch": "x", "seed": 9, "kernel": "native", "error": "boom"}
    assert matrix.per_arch([*rows, failed])["x"]["failed_runs"] == 1
    assert "failed" in matrix.table([*rows, failed], matrix.per_arch(rows))
    # --resume reads a run's JSON instead of running it
    (tmp_path / "x_seed0_avx2.json").write_text(json.dumps({"results": {"x": {"runs": [runs[0]]}}}))
    row = matrix.run_one("x", 0, "avx2", tmp_path, [], resume=True)
    assert row["b"] == 0.9 and row["kernel"] == "avx2"


def test_shortcuts_are_summarised_apart_and_together(matrix, tmp_path):
    rows = [
        {"arch": "x", "confound": c, "seed": s, "kernel": "native", **matrix.summarise(_run(0.5, b, 0.9))}
        for c, s, b in (("corner-token", 0, 0.9), ("ruler", 0, 0.95), ("ruler", 1, 0.7))
    ]
    summary = matrix.per_arch(rows)
    assert set(summary) == {"x", "x ruler", "x all"}
    assert summary["x"]["goals_met"] and not summary["x ruler"]["goals_met"]
    assert summary["x all"]["runs"] == 3 and summary["x all"]["recovered_min"] == pytest.approx(0.5)
    assert "| x | ruler | 1 |" in matrix.table(rows, summary)
    # each shortcut's runs are kept apart on disk
    (tmp_path / "x_ruler_seed1_native.json").write_text(
        json.dumps({"results": {"x": {"runs": [_run(0.5, 0.95, 0.9)]}}})
    )
    row = matrix.run_one("x", 1, "native", tmp_path, [], resume=True, confound="ruler")
    assert row["confound"] == "ruler" and row["b"] == 0.95


def test_kernel_spread_pairs_the_same_run_under_two_kernels(matrix):
    def row(seed, kernel, b, c=0.9, a=0.5, confound="corner-token"):
        return {
            "arch": "x",
            "confound": confound,
            "seed": seed,
            "kernel": kernel,
            **matrix.summarise(_run(a, b, c)),
        }

    rows = [
        row(0, "default", 0.90),
        row(0, "native", 0.86),  # 10 % of the gap apart
        row(1, "default", 0.80),
        row(1, "native", 0.84),  # 10 % apart the other way
        row(2, "native", 0.90),  # no partner: left out
        row(3, "default", 0.95, c=0.55),  # a gap of 5 points: left out
        row(3, "native", 0.60, c=0.55),
    ]
    spread = matrix.kernel_spread(rows)
    assert spread["pairs"] == 2
    assert spread["recovered_difference_sd"] == pytest.approx(10.0)
    assert spread["recovered_run_sd"] == pytest.approx(10.0 / 2**0.5)
    assert spread["b_difference_sd"] == pytest.approx(4.0) and spread["c_difference_sd"] == pytest.approx(0.0)
    # runs of different shortcuts are not pairs
    assert matrix.kernel_spread([row(0, "default", 0.9), row(0, "native", 0.8, confound="ruler")]) == {
        "pairs": 0
    }


def test_guided_minus_clean_averages_each_seed_over_its_kernels(matrix):
    def row(seed, kernel, b, c, confound="corner-token"):
        return {"arch": "x", "confound": confound, "seed": seed, "kernel": kernel, "b": b, "c": c}

    rows = [
        row(0, "default", 0.90, 0.92),
        row(0, "native", 0.94, 0.92),  # seed 0: +0 points on average over its kernels
        row(1, "native", 0.96, 0.92),  # seed 1: +4
        row(1, "native", 0.90, 0.90, confound="ruler"),  # another shortcut's seed 1: its own unit, 0
    ]
    d = matrix.guided_minus_clean(rows)
    assert d["b_minus_c_seeds"] == 3
    assert d["b_minus_c_points"] == pytest.approx(4 / 3)
    assert d["b_minus_c_se_points"] == pytest.approx((16 / 3) ** 0.5 / 3**0.5)  # stdev of (0, 4, 0) / sqrt 3
    assert math.isnan(matrix.guided_minus_clean(rows[:2])["b_minus_c_se_points"])
    full = [{**r, **matrix.summarise(_run(0.5, r["b"], r["c"]))} for r in rows[:3]]
    summary = matrix.per_arch(full)
    assert summary["x"]["b_minus_c_points"] == pytest.approx(2.0)
    assert "b - c +2.0 ± 2.0" in matrix.table(full, summary)


def test_noninferiority_judges_the_recipe_over_seeds(matrix):
    """(b) - (c) over seeds against 10 % of the gap, at 95 % one-sided confidence (Student's t)."""
    stats = pytest.importorskip("scipy.stats")

    def rows(diffs, a=0.5, c=0.9, confound="corner-token"):
        return [
            {
                "arch": "x",
                "confound": confound,
                "seed": s,
                "kernel": "native",
                **matrix.summarise(_run(a, c + d, c)),
            }
            for s, d in enumerate(diffs)
        ]

    # five seeds: one run 5 points short (87.5 % of the gap), the mean -1 point: the recipe passes
    good = rows([0.0, -0.05, 0.0, 0.0, 0.0])
    d = matrix.guided_minus_clean(good)
    se = statistics.stdev([0, -5, 0, 0, 0]) / 5**0.5
    assert d["b_minus_c_points"] == pytest.approx(-1.0) and d["b_minus_c_se_points"] == pytest.approx(se)
    assert d["b_minus_c_lower_points"] == pytest.approx(-1.0 - stats.t.ppf(0.95, 4) * se)
    assert d["noninferiority_margin_points"] == pytest.approx(4.0)  # 10 % of a 40-point gap
    assert d["b_noninferior"]
    s = matrix.per_arch(good)["x"]
    assert s["goals_met_over_seeds"] and not s["goals_met"]  # the per-run goal fails on the 87.5 % run
    assert "goals over seeds: met |" in matrix.table(good, {"x": s}).splitlines()[-1]
    # every seed about 5 points short: the recipe itself recovers under 90 %
    short = rows([-0.05, -0.051, -0.049, -0.05, -0.05])
    s = matrix.per_arch(short)["x"]
    assert not s["b_noninferior"] and not s["goals_met_over_seeds"]
    assert "goals over seeds: not met |" in matrix.table(short, {"x": s}).splitlines()[-1]
    # a single seed proves nothing: no bound, not met
    assert not matrix.guided_minus_clean(good[:1])["b_noninferior"]
    # a shortcut still read fails it however well (b) scores
    read = [{**r, "token_effect_b": 0.5} for r in good]
    assert not matrix.per_arch(read)["x"]["goals_met_over_seeds"]


def test_mass_is_judged_where_the_clean_model_separates(matrix):
    def row(seed, mass_a, mass_b, mass_c):
        return {
            "arch": "x",
            "seed": seed,
            "kernel": "native",
            "a": 0.5,
            "b": 0.9,
            "c": 0.9,
            "recovered": 1.0,
            "token_effect_b": 0.0,
            "mass_a": mass_a,
            "mass_b": mass_b,
            "mass_c": mass_c,
        }

    rows = [row(0, 0.10, 0.20, 0.20), row(1, 0.10, 0.20, 0.19), row(2, 0.16, 0.15, 0.14)]
    s = matrix.per_arch(rows)["x"]
    # seed 2: (b) under (a), and so is the clean model: the mass cannot separate there
    assert not s["mass_b_over_a_everywhere"] and s["mass_b_over_a_where_c_is"]
    bad = matrix.per_arch([*rows, row(3, 0.16, 0.15, 0.20)])["x"]
    assert not bad["mass_b_over_a_where_c_is"] and not bad["goals_met_over_seeds"]
