"""benchmarks/gpu_carry.py: pure-Python packages copied for a GPU session, compiled ones never."""

import importlib.machinery
from pathlib import Path

from benchmark_module import load_benchmark


def _module():
    return load_benchmark("gpu_carry")


def test_copies_pure_packages_and_leaves_compiled_ones(tmp_path):
    carry = _module()
    dest = tmp_path / "peers"
    done = carry.copy(("zennit", "numpy", "no_such_package_xyz"), dest)
    assert done["numpy"] == "compiled: not copied" and not (dest / "numpy").exists()
    assert done["no_such_package_xyz"] == "not installed here"
    assert (dest / "zennit" / "__init__.py").is_file() and not list(dest.rglob("__pycache__"))
    # found there alone (what PYTHONPATH=.gpu_peers gives the GPU machine)
    spec = importlib.machinery.PathFinder.find_spec("zennit", [str(dest)])
    assert spec is not None and Path(spec.origin).is_relative_to(dest)
    # the session's whole folder fits run's carry
    assert carry.main(["--dest", str(tmp_path / "all")]) == 0
    assert carry.size_mb(tmp_path / "all") < carry.LIMIT_MB
