"""One command-line grammar: shared option names and defaults, checks before any work, fast help.

The help must answer without importing torch (measured by what is imported, not by a wall time, so the
test does not depend on this machine's speed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image as PILImage

import test_io_support as S
from medlrp import __version__
from medlrp.cli import app, main
from medlrp.registry import ARCHITECTURES, COMPOSITES, METHODS

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ("torch", "numpy", "matplotlib", "scipy", "medlrp.methods", "medlrp.models", "medlrp.pipeline")


def _python(code: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(
    "argv", [None, ["--help"], ["explain", "--help"], ["train", "--help"], ["--version"]]
)
def test_help_and_version_import_nothing_heavy(argv):
    run = "" if argv is None else f"from medlrp.cli import main; main({argv!r})"
    code = (
        "import sys\nimport medlrp.cli\n"
        f"try:\n    {run or 'pass'}\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_version_and_bare_usage(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"medlrp {__version__}"
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Usage: medlrp [OPTIONS] COMMAND") and "error" not in err
    assert "explain" in err and "evaluate" in err and "Options:" not in err  # usage, not the whole help


@pytest.mark.parametrize("command", [None, "demo", "explain", "evaluate", "train", "phantom", "batch"])
def test_help_is_plain_text(capsys, command):
    assert main([*([command] if command else []), "--help"]) == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text and ":class:" not in text


def test_help_lists_the_known_names(capsys):
    main(["explain", "--help"])
    text = "".join(capsys.readouterr().out.split())  # help wraps long lines, also inside names
    for name in (*METHODS.builtin, *COMPOSITES.builtin):
        assert f" {name}," in f" {text.replace(',', ', ')}".replace(":", ": ").replace(".", ", "), name
    main(["train", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in ARCHITECTURES.builtin)


def test_builtin_names_are_the_registered_ones():
    # the help lists Registry.builtin without importing the registries; they must agree once loaded
    for registry in (METHODS, COMPOSITES, ARCHITECTURES):
        ours = {
            n for n in registry.names() if getattr(registry.get(n), "__module__", "").startswith("medlrp.")
        }
        assert set(registry.builtin) == ours, registry.kind


def _options(command: str) -> dict[str, object]:
    group = typer.main.get_command(app)
    cmd = group.commands[command]  # type: ignore[attr-defined]
    return {name: p for p in cmd.params for name in (*p.opts, *p.secondary_opts)}


def test_same_option_names_and_defaults_everywhere():
    for command in ("explain", "evaluate", "batch"):
        opts = _options(command)
        assert opts["--methods"] is opts["--method"], command
        assert opts["--device"].default == "auto", command
        assert "--composite" in opts and "--trust-model" in opts and "--model" in opts, command
    for command in ("demo", "explain", "evaluate", "train", "phantom", "batch"):
        opts = _options(command)
        assert opts["--progress"] is opts["--no-progress"] is opts["--quiet"], command
        assert opts["--progress"].default is True, command


@pytest.fixture()
def folder_of_cases(tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        PILImage.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"c{i:02d}.png")
    return folder


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--composite", "nonsense"], "unknown composite 'nonsense'"),
        (["--target", "banana"], "--target 'banana'"),
        (["--target", "7"], "out of range"),
        (["--method", "lrp,foo"], "unknown method 'foo'"),
        (["--methods", "foo"], "unknown method 'foo'"),
        (["--device", "tpu:3"], "device"),
    ],
)
def test_explain_checks_once_before_any_work(tmp_path, capsys, folder_of_cases, extra, message):
    ckpt = S.make_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    code = main(["explain", "--model", str(ckpt), str(folder_of_cases), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("medlrp: error:") and message in err, err
    assert not out.exists()


def test_explain_missing_input_is_one_line_and_writes_nothing(tmp_path, capsys, folder_of_cases):
    ckpt = S.make_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    code = main(
        ["explain", "--model", str(ckpt), str(folder_of_cases), str(tmp_path / "nope.png"), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "nope.png: input not found" in err
    assert not out.exists()


def test_a_picture_as_model_is_one_medlrp_line(tmp_path, capsys, folder_of_cases):
    picture = folder_of_cases / "c00.png"
    code = main(["explain", "--model", str(picture), str(picture), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not a model file" in err
    assert "weights_only" not in err and "torch.load" not in err


def test_unknown_architecture_before_any_progress_bar(tmp_path, capsys):
    out = tmp_path / "m.pt"
    code = main(["train", "--data", str(tmp_path / "none"), "--out", str(out), "--arch", "resnet99"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown architecture 'resnet99'" in err
    assert "cnn2d" in err and "vit3d" in err and not out.exists()


def test_quiet_is_an_alias_of_no_progress(tmp_path, capsys, folder_of_cases):
    ckpt = S.make_checkpoint(tmp_path / "m.pt")
    for flag in ("--quiet", "--no-progress", "--progress"):
        out = tmp_path / flag.strip("-")
        picture = folder_of_cases / "c01.png"
        assert main(["explain", "--model", str(ckpt), str(picture), "--out", str(out), flag]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert any(line.startswith("c01:") for line in lines) == (flag == "--progress"), flag
        assert json.loads((out / "results.json").read_text())["cases"][0]["case"] == "c01"


def test_evaluate_reports_progress_per_case_and_method():
    import torch

    from medlrp.metrics.suite import evaluate_methods

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 64, 2)
    )
    batches = [(torch.rand(n, 1, 8, 8), None, None, [f"c{n}{i}" for i in range(n)]) for n in (2, 3)]
    steps: list[tuple[str, int]] = []
    evaluate_methods(
        model,
        batches,
        ["gradient", "input-x-gradient"],
        randomisation=False,
        on_step=lambda m, k: steps.append((m, k)),
    )
    assert steps == [("gradient", 2), ("input-x-gradient", 2), ("gradient", 3), ("input-x-gradient", 3)]


@pytest.mark.parametrize("first", ["medlrp.lrp", "medlrp.lrp.composites", "medlrp.models", "medlrp.cam"])
def test_registries_load_whatever_is_imported_first(first):
    # the package facade is lazy: the registries import the methods on their first lookup, whichever
    # medlrp module a program imports first (a registering module must not trigger that half-way)
    code = (
        f"import {first}\nfrom medlrp.registry import ARCHITECTURES, COMPOSITES, METHODS\n"
        "print(sorted(METHODS.builtin) == sorted(METHODS.names()), sorted(COMPOSITES.builtin) == "
        "sorted(COMPOSITES.names()), sorted(ARCHITECTURES.builtin) == sorted(ARCHITECTURES.names()))"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "True"]
