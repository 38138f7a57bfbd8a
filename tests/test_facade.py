import pytest
import torch

import medlrp
from medlrp.targets import one_hot_logit, resolve_target


def test_resolve_target_forms():
    out = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
    assert resolve_target(None, out).tolist() == [1, 0]
    assert resolve_target(2, out).tolist() == [2, 2]
    assert resolve_target([0, 2], out).tolist() == [0, 2]
    assert resolve_target(torch.tensor([1, 1]), out).tolist() == [1, 1]
    with pytest.raises(medlrp.InputError):
        resolve_target(3, out)
    with pytest.raises(medlrp.InputError):
        resolve_target([0, 1, 2], out)


def test_one_hot_logit_keeps_target_logit_only():
    out = torch.tensor([[0.5, -2.0], [1.5, 4.0]])
    r = one_hot_logit(out, torch.tensor([1, 0]))
    assert r.tolist() == [[0.0, -2.0], [1.5, 0.0]]


def test_unknown_method_is_input_error():
    with pytest.raises(medlrp.InputError, match="unknown method"):
        medlrp.explain(torch.nn.Linear(2, 2), torch.zeros(1, 2), method="nope")
