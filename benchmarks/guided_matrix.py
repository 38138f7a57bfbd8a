"""Guided training over architectures x seeds x CPU kernels: does the outcome depend on rounding?

Runs ``benchmarks/guided_training.py`` once per (architecture, seed, kernel setting), each in its own
process with ``ATEN_CPU_CAPABILITY`` set (``native``: unset, the machine's own kernels) and one thread,
collects per run (a) plain confounded, (b) guided, (c) plain clean test accuracy, the recovered share of
the gap, the guided model's token effect and relevance mass in the tumour (against (a)'s), and prints
and writes the table with the median and minimum per architecture and shortcut. Two sets of goals
(issue 18): per run (``goals_met``: every run recovers at least 90 %, the median run at least 100 %,
token effect under 0.1, mass above (a)'s in every run) and over seeds (``goals_met_over_seeds``: the
guided recipe is non-inferior to clean training, :func:`guided_minus_clean`; token effect under 0.1;
mass above (a)'s wherever the clean model's is).

    .venv/bin/python benchmarks/guided_matrix.py --archs vit2d,cnn2d --seeds 0-4 --jobs 2
    .venv/bin/python benchmarks/guided_matrix.py --seeds 0 --kernels default,native -- --quick
    .venv/bin/python benchmarks/guided_matrix.py --archs cnn2d --confounds corner-token,digits,ruler

Arguments after ``--`` go to ``guided_training.py`` unchanged (``--guidance-bound``, ``--quick`` ...).
Each run's own JSON lands in ``--work`` (kept: ``--resume`` skips runs whose JSON is there).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scipy import stats

RESULTS = Path(__file__).with_name("results")
SCRIPT = Path(__file__).with_name("guided_training.py")
KERNELS = ("default", "avx2", "native")
KEYS = ("a_plain_confounded", "b_guided_confounded", "c_plain_clean")
DEFAULT_CONFOUND = "corner-token"
# the recipe's goal over seeds (guided_minus_clean): (b) - (c) above -10 % of the gap, at 95 % confidence
NONINFERIORITY_SHARE = 0.10
CONFIDENCE = 0.95


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` or ``"0,2,5"`` (or both: ``"0-2,7"``) as a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    return seeds


def kernel_env(kernel: str) -> dict[str, str]:
    """The environment of one run: ``ATEN_CPU_CAPABILITY=kernel`` (unset for ``native``), one thread."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if kernel != "native":
        env["ATEN_CPU_CAPABILITY"] = kernel
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run_one(
    arch: str,
    seed: int,
    kernel: str,
    work: Path,
    extra: list[str],
    resume: bool,
    confound: str = DEFAULT_CONFOUND,
) -> dict[str, Any]:
    """One ``guided_training.py`` run in a subprocess; its row (or the error)."""
    tag = arch if confound == DEFAULT_CONFOUND else f"{arch}_{confound}"
    out = work / f"{tag}_seed{seed}_{kernel}.json"
    head = {"arch": arch, "confound": confound, "seed": seed, "kernel": kernel}
    t0 = time.perf_counter()
    if not (resume and out.exists()):
        cmd = [sys.executable, str(SCRIPT), "--archs", arch, "--seeds", str(seed), "--out", str(out)]
        cmd += ["--confound", confound, *extra]
        done = subprocess.run(cmd, env=kernel_env(kernel), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return {**head, "error": done.stderr[-2000:]}
    row = summarise(json.loads(out.read_text())["results"][arch]["runs"][0])
    print(f"{tag} seed {seed} {kernel}: {fmt(row)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {**head, **row}


def group(row: dict[str, Any]) -> str:
    """The summary a row counts in: its architecture, and its shortcut unless the corner token."""
    confound = row.get("confound", DEFAULT_CONFOUND)
    return row["arch"] if confound == DEFAULT_CONFOUND else f"{row['arch']} {confound}"


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """The figures the goals judge, from one run of ``guided_training.py``."""
    a, b, c = (run[k] for k in KEYS)
    row = {
        "a": a["test_accuracy"],
        "b": b["test_accuracy"],
        "c": c["test_accuracy"],
        "recovered": run["gap_recovered"],
        "token_effect_b": b["token_effect"],
        "mass_a": a["mass_inside_mask"],
        "mass_b": b["mass_inside_mask"],
        "mass_c": c["mass_inside_mask"],
    }
    if "gap_recovered_se" in run:
        row["recovered_se"] = run["gap_recovered_se"]
    if "step_time" in run:
        row["step_ratio"] = run["step_time"]["guided_over_plain"]
    return row


def recovered_text(row: dict[str, Any]) -> str:
    """The recovered share in percent, with its test-set standard error where the run has one."""
    se = row.get("recovered_se")
    return f"{100 * row['recovered']:.0f} %" + ("" if se is None else f" ± {100 * se:.0f}")


def fmt(row: dict[str, Any]) -> str:
    """One row as text."""
    return (
        f"(a) {row['a']:.3f} (b) {row['b']:.3f} (c) {row['c']:.3f} recovered {recovered_text(row)} "
        f"token effect {row['token_effect_b']:.3f} mass a/b {row['mass_a']:.2f}/{row['mass_b']:.2f}"
    )


def per_arch(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and minimum per architecture and shortcut (:func:`group`), and with several shortcuts per
    architecture over all of them too (``"cnn2d all"``); whether each judged goal holds in every run."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group(r), []).append(r)
    for arch in dict.fromkeys(r["arch"] for r in rows):
        if len({group(r) for r in rows if r["arch"] == arch}) > 1:
            groups[f"{arch} all"] = [r for r in rows if r["arch"] == arch]
    out: dict[str, Any] = {}
    for name, members in groups.items():
        done = [r for r in members if "error" not in r]
        if not done:
            continue
        rec = [r["recovered"] for r in done]
        effect = [abs(r["token_effect_b"]) for r in done]
        out[name] = {
            "runs": len(done),
            "failed_runs": len(members) - len(done),
            "recovered_median": statistics.median(rec),
            "recovered_min": min(rec),
            "b_median": statistics.median(r["b"] for r in done),
            "b_min": min(r["b"] for r in done),
            "token_effect_b_max": max(effect),
            "mass_b_over_a_everywhere": all(r["mass_b"] > r["mass_a"] for r in done),
            # the clean model against the same bar: where it fails too, the shortcut model reads the
            # lesion as much as a clean one does, and the mass cannot tell them apart
            "mass_c_over_a_everywhere": all(r["mass_c"] > r["mass_a"] for r in done),
            "goals_met": min(rec) >= 0.9
            and statistics.median(rec) >= 1.0
            and max(effect) < 0.1
            and all(r["mass_b"] > r["mass_a"] for r in done),
        }
        out[name].update(guided_minus_clean(done))
        # the mass can only separate the models where the clean one reads the tumour more than (a)
        separating = [r for r in done if r["mass_c"] > r["mass_a"]]
        out[name]["mass_b_over_a_where_c_is"] = all(r["mass_b"] > r["mass_a"] for r in separating)
        out[name]["goals_met_over_seeds"] = (
            out[name].get("b_noninferior", False)
            and max(effect) < 0.1
            and out[name]["mass_b_over_a_where_c_is"]
        )
        errors = [r["recovered_se"] for r in done if "recovered_se" in r]
        if errors:
            out[name]["recovered_se_median"] = statistics.median(errors)
        steps = [r["step_ratio"] for r in done if "step_ratio" in r]
        if steps:
            out[name]["step_ratio_max"] = max(steps)
    return out


def guided_minus_clean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the guided model learns the lesion as well as the clean one: ``b - c`` over seeds, in points.

    The runs of one shortcut and seed (its kernel settings) share data and initial weights, so they are
    averaged first: each (shortcut, seed) is one unit, and the standard error is that of the mean over
    the units (NaN with one). Where (b) and (c) learn alike, the mean is within about two errors of 0 and
    a run's recovery below 100 % is the spread of training, not a deficit of the recipe.

    The judged form is a non-inferiority test, as for a treatment against a reference: the guided recipe
    passes when the one-sided 95 % lower confidence bound of the mean ``b - c`` (Student's t over the
    units) lies above ``-NONINFERIORITY_SHARE`` of the mean gap ``c - a``: "recovers at least 90 % of the
    gap" said of the recipe, not of each noisy run. With one unit the bound is NaN and the test fails.
    """
    units: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        units.setdefault((r.get("confound", DEFAULT_CONFOUND), r["seed"]), []).append(r)
    means = [statistics.fmean(100 * (r["b"] - r["c"]) for r in u) for u in units.values()]
    n = len(means)
    mean = statistics.fmean(means)
    se = statistics.stdev(means) / math.sqrt(n) if n > 1 else math.nan
    lower = mean - float(stats.t.ppf(CONFIDENCE, n - 1)) * se if n > 1 else math.nan
    out = {"b_minus_c_points": mean, "b_minus_c_se_points": se, "b_minus_c_seeds": n}
    if all("a" in r for r in rows):
        gap = statistics.fmean(statistics.fmean(100 * (r["c"] - r["a"]) for r in u) for u in units.values())
        margin = NONINFERIORITY_SHARE * gap
        out |= {
            "b_minus_c_lower_points": lower,
            "noninferiority_margin_points": margin,
            "b_noninferior": bool(lower >= -margin),  # False for NaN
        }
    return out


def kernel_spread(rows: list[dict[str, Any]], min_gap: float = 0.10) -> dict[str, Any]:
    """How far the same run lands under two kernel settings: the run-to-run spread of each recipe.

    The same architecture, shortcut and seed under two kernel settings share data, initial weights and
    batch order; only rounding differs, so each such pair is two draws of one recipe. Pairs whose gap
    ``c - a`` is at most ``min_gap`` under either kernel are left out (there a point of accuracy is many
    percent of the gap). Returns the number of pairs, the standard deviation of the difference in
    recovery (and that of one run: divided by sqrt 2), and those of (b)'s and (c)'s accuracy, in points.
    """
    runs: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        if "error" not in r:
            key = (r["arch"], r.get("confound", DEFAULT_CONFOUND), r["seed"])
            runs.setdefault(key, []).append(r)
    pairs = [
        (x, y)
        for members in runs.values()
        for i, x in enumerate(members)
        for y in members[i + 1 :]
        if min(x["c"] - x["a"], y["c"] - y["a"]) > min_gap
    ]
    if len(pairs) < 2:
        return {"pairs": len(pairs)}

    def sd(key: str) -> float:
        return statistics.pstdev([100 * (x[key] - y[key]) for x, y in pairs])

    return {
        "pairs": len(pairs),
        "recovered_difference_sd": sd("recovered"),
        "recovered_run_sd": sd("recovered") / math.sqrt(2),
        "b_difference_sd": sd("b"),
        "c_difference_sd": sd("c"),
    }


def table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The rows and the per-architecture summary as a Markdown table."""
    lines = [
        "| arch | shortcut | seed | kernels | (a) | (b) | (c) | recovered | token effect (b) "
        "| mass a / b / c | |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['arch']} | {r.get('confound', DEFAULT_CONFOUND)} | {r['seed']} | {r['kernel']} |"
        if "error" in r:
            lines.append(f"{head} failed | | | | | | |")
            continue
        lines.append(
            f"{head} {r['a']:.3f} | {r['b']:.3f} | {r['c']:.3f} | "
            f"{recovered_text(r)} | {r['token_effect_b']:.3f} | "
            f"{r['mass_a']:.2f} / {r['mass_b']:.2f} / {r['mass_c']:.2f} | |"
        )
    for arch, s in summary.items():
        lines.append(
            f"| {arch} | | median / min of {s['runs']} | | | {s['b_median']:.3f} / {s['b_min']:.3f} | "
            f"b - c {s['b_minus_c_points']:+.1f} ± {s['b_minus_c_se_points']:.1f}{bound_text(s)} | "
            f"{100 * s['recovered_median']:.0f} % / {100 * s['recovered_min']:.0f} %{se_text(s)} | "
            f"max {s['token_effect_b_max']:.3f} | b > a in every run: {s['mass_b_over_a_everywhere']} "
            f"(c > a: {s['mass_c_over_a_everywhere']}; b > a where c > a: {s['mass_b_over_a_where_c_is']}) "
            f"| goals over seeds: {'met' if s['goals_met_over_seeds'] else 'not met'} |"
        )
    return "\n".join(lines)


def bound_text(summary: dict[str, Any]) -> str:
    """The non-inferiority verdict of a group (:func:`guided_minus_clean`), where its runs have (a)."""
    if "b_minus_c_lower_points" not in summary:
        return ""
    verdict = "met" if summary["b_noninferior"] else "not met"
    return (
        f"; 95 % bound {summary['b_minus_c_lower_points']:+.1f} against "
        f"-{summary['noninferiority_margin_points']:.1f}: {verdict}"
    )


def se_text(summary: dict[str, Any]) -> str:
    """The median test-set standard error of a group's recoveries, where its runs have one."""
    se = summary.get("recovered_se_median")
    return "" if se is None else f" (median SE {100 * se:.0f})"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` through a temporary name (nothing half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="vit2d,cnn2d")
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,2")
    parser.add_argument(
        "--confounds",
        default=DEFAULT_CONFOUND,
        help="shortcuts, comma-separated (guided_training.py --confound)",
    )
    parser.add_argument("--kernels", default=",".join(KERNELS), help="default, avx2, native (unset)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each)")
    parser.add_argument("--repeats", type=int, default=0, help="step-time repeats per run (0: skip)")
    parser.add_argument("--work", type=Path, default=RESULTS / "guided_matrix_runs")
    parser.add_argument("--resume", action="store_true", help="reuse runs whose JSON is in --work")
    parser.add_argument("--out", type=Path, default=RESULTS / "guided_matrix.json")
    args = parser.parse_args(own)
    kernels = args.kernels.split(",")
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        parser.error(f"unknown kernels {unknown}; choose from {', '.join(KERNELS)}")
    extra = ["--repeats", str(args.repeats), *extra]
    # seed by seed: an interrupted matrix still has every kernel of its first seeds
    jobs = [
        (a, s, k, c)
        for c in args.confounds.split(",")
        for s in parse_seeds(args.seeds)
        for a in args.archs.split(",")
        for k in kernels
    ]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda j: run_one(*j[:3], args.work, extra, args.resume, j[3]), jobs))
    summary = per_arch(rows)
    spread = kernel_spread(rows)
    info = {
        "command": " ".join([Path(sys.argv[0]).name, *argv]),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores",
        "total_seconds": time.perf_counter() - t0,
        "runs": rows,
        "summary": summary,
        "kernel_spread": spread,
    }
    write_json(args.out, info)
    print(table(rows, summary))
    if "recovered_run_sd" in spread:
        print(
            f"kernel pairs: {spread['pairs']}, one run's spread {spread['recovered_run_sd']:.1f} % "
            "of the gap; "
            f"(b) {spread['b_difference_sd']:.1f}, (c) {spread['c_difference_sd']:.1f} points between kernels"
        )
    print(f"wrote {args.out} ({info['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
