"""Copy the pure-Python packages a GPU session needs into one folder that ``run``'s ``carry`` takes along.

The GPU machine has torch (2.11) but no package registry: medlrp's own pure-Python dependencies and the
pure-Python peers of the benchmarks travel as plain folders on ``PYTHONPATH``. Compiled packages (numpy,
Pillow, torchvision, OpenCV ...) cannot travel this way; the session's first command prints which of
them the machine lacks (``benchmarks/gpu_session.sh``), and a peer that cannot be imported there is
skipped by the benchmarks with a note.

    .venv/bin/python benchmarks/gpu_carry.py            # writes .gpu_peers/ (git-ignored), prints its size
    # then: run(command="bash benchmarks/gpu_session.sh", carry=[".gpu_peers"], timeout_s=560)
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

#: Pure-Python packages: medlrp's run-time dependencies and the peers (zennit, LXT, pytorch-grad-cam
#: and its ttach). Compiled ones are never copied.
PACKAGES = (
    "typer",
    "click",
    "rich",
    "markdown_it",
    "mdurl",
    "pygments",
    "shellingham",
    "annotated_doc",
    "typing_extensions",
    "pydicom",
    "nibabel",
    "packaging",
    "zennit",
    "lxt",
    "pytorch_grad_cam",
    "ttach",
)
LIMIT_MB = 60.0  # run's carry takes 64 MiB in all


def source(name: str) -> Path | None:
    """The package's folder (or single module file), or ``None`` when it is not installed."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return None
    origin = Path(spec.origin)
    return origin.parent if origin.name == "__init__.py" else origin


def compiled(path: Path) -> bool:
    """Whether a package holds compiled extension modules (which cannot travel as a folder)."""
    files = path.rglob("*") if path.is_dir() else [path]
    return any(f.suffix in (".so", ".pyd") for f in files)


def size_mb(path: Path) -> float:
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def copy(names: tuple[str, ...], dest: Path) -> dict[str, str]:
    """Copy each installed, pure-Python package of ``names`` into ``dest``; what happened to each."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    done: dict[str, str] = {}
    for name in names:
        path = source(name)
        if path is None:
            done[name] = "not installed here"
        elif compiled(path):
            done[name] = "compiled: not copied"
        else:
            target = dest / path.name
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__", "tests"))
            else:
                shutil.copy2(path, target)
            done[name] = f"{size_mb(target):.1f} MB"
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parents[1] / ".gpu_peers")
    args = parser.parse_args(argv)
    done = copy(PACKAGES, args.dest)
    for name, what in done.items():
        print(f"{name:20s} {what}")
    total = size_mb(args.dest)
    print(f"{args.dest}: {total:.1f} MB")
    if total > LIMIT_MB:
        print(f"more than {LIMIT_MB:.0f} MB: run's carry would refuse it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
