"""benchmarks/guided_training.py: the test-set standard error of the recovered share of the gap."""

import math
import statistics

import pytest
import torch

from benchmark_module import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("guided_training")


def _models(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Correctness of (a), (b), (c) on n cases: (a) 60 %, (c) 92 %, (b) agrees with (c) on most cases."""
    u = torch.rand(n, generator=generator)
    c = u < 0.92
    a = (u < 0.55) | (torch.rand(n, generator=generator) < 0.1)
    flip = torch.rand(n, generator=generator) < 0.06
    b = c ^ flip
    return a, b, c


def test_standard_error_matches_the_spread_over_test_sets(bench):
    """The delta-method error of one test set is the spread of the share over fresh test sets."""
    generator = torch.Generator().manual_seed(0)
    population = _models(200_000, generator)
    n = 400
    shares, errors = [], []
    for _ in range(400):
        idx = torch.randint(0, len(population[0]), (n,), generator=generator)
        a, b, c = (t[idx] for t in population)
        fa, fb, fc = (float(t.float().mean()) for t in (a, b, c))
        shares.append((fb - fa) / (fc - fa))
        errors.append(bench.recovery_standard_error(a, b, c))
    spread = float(torch.tensor(shares).std())
    assert statistics.median(errors) == pytest.approx(spread, rel=0.15)
    # four times the cases: half the error (it falls with the square root of their number)
    big = bench.recovery_standard_error(*(t[:4000] for t in population))
    small = bench.recovery_standard_error(*(t[:1000] for t in population))
    assert small / big == pytest.approx(2.0, rel=0.15)


def test_standard_error_of_no_gap_and_identical_models(bench):
    right = torch.tensor([True, False, True, True])
    # (b) makes exactly (c)'s errors: the share is 1 whichever cases are drawn, no error at all
    assert bench.recovery_standard_error(~right, right, right) == pytest.approx(0.0)
    assert math.isnan(bench.recovery_standard_error(right, right, right))  # no gap: no share
