"""Captured LRP passes (``LRP(..., graphs=True)``) on the CPU: the eager backend runs the same protocol.

What a CPU can check of the CUDA-graph layer: the cache (hits, misses, keys), invalidation when the
model's weights change or are replaced, the LRU limit, the fallbacks (a capture that fails, a host read
inside the pass, a rule branch that flips for a new input), the copy semantics of the static outputs,
and that a replayed pass gives the eager pass's result bit for bit.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.nn.modules import module as torch_module
from torchvision.models import VisionTransformer

import medlrp
from medlrp.lrp.reads import HostReadError, HostReads, Recorder, Replayer
from medlrp.lrp.replay import MISMATCH_LIMIT, STALE_LIMIT, Captured, Eager

CNN_COMPOSITES = [n for n in medlrp.COMPOSITES.names() if n not in ("attnlrp", "cp-lrp")]


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


def cnn(classes: int = 4) -> nn.Module:
    """A small ResNet-like CNN (BatchNorm with mixed-sign scales, a residual sum, pooling)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        Block(8),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_()  # some negative scales: the merge reads their signs
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def vit() -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(32, 16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=4)
    with torch.no_grad():
        model.heads.head.weight.normal_(0.0, 0.5)  # torchvision zero-initialises the head
    return model.eval()


def x_of(n: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_same(a: medlrp.Explanation, b: medlrp.Explanation) -> None:
    assert torch.equal(a.relevance, b.relevance)
    assert torch.equal(a.output, b.output) and torch.equal(a.target, b.target)


@pytest.mark.parametrize(
    ("make", "composites", "size"),
    [(cnn, CNN_COMPOSITES, 16), (vit, ["attnlrp", "cp-lrp"], 32)],
    ids=["cnn", "vit"],
)
def test_replayed_passes_equal_the_eager_pass_bit_for_bit(make, composites, size):
    model = make()
    for name in composites:
        eager, replayed = medlrp.LRP(model, name, graphs=False), medlrp.LRP(model, name, graphs=True)
        for seed, target in [(1, None), (2, None), (3, 1), (4, [0, 3]), (5, torch.tensor([2, 1]))]:
            x = x_of(2, size, seed)
            assert_same(replayed(x, target), eager(x, target))
        stats = replayed.replay.stats
        # one capture per target mode (argmax / given), every later call replayed, none failed
        assert (stats.captures, stats.replays, replayed.replay.eager) == (2, 3, {}), name
    assert eager.replay is None


def test_a_new_shape_dtype_or_target_mode_is_a_new_capture_the_same_one_a_hit():
    model = cnn()
    lrp = medlrp.LRP(model, "epsilon-gamma-box", graphs=True)
    stats = lrp.replay.stats
    lrp.relevance(x_of(2))
    assert (stats.captures, stats.replays) == (1, 0)
    lrp.relevance(x_of(2, seed=7))
    assert (stats.captures, stats.replays) == (1, 1)
    lrp.relevance(x_of(3))  # batch size
    lrp.relevance(x_of(2, size=12))  # image size
    lrp.relevance(x_of(2), 1)  # a given target
    assert (stats.captures, stats.replays) == (4, 1)
    assert list(lrp.replay.backends) == [torch.device("cpu")]  # one backend (one memory pool) per device
    model64 = cnn().double()
    lrp64 = medlrp.LRP(model64, "epsilon", graphs=True)
    x = x_of(2)
    lrp64.relevance(x.double())
    reference = medlrp.LRP(model64, "epsilon", graphs=False).relevance(x.double())
    assert torch.equal(lrp64.relevance(x.double()), reference)
    assert (lrp64.replay.stats.captures, lrp64.replay.stats.replays) == (1, 1)
    lrp.relevance(x_of(2).contiguous(memory_format=torch.channels_last))  # strides: another capture
    assert stats.captures == 5 and len(lrp.replay.entries) == 5


def test_in_place_weight_updates_recapture_then_run_eagerly(caplog):
    model = cnn()
    lrp = medlrp.LRP(model, "epsilon-plus-flat", graphs=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = x_of(2)
    stats = lrp.replay.stats
    lrp.relevance(x, 1)
    lrp.relevance(x, 1)
    assert (stats.captures, stats.replays) == (1, 1)
    before = lrp.relevance(x, 1)
    for _ in range(STALE_LIMIT + 1):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()  # changes every parameter in place (version counters move)
        fresh = medlrp.LRP(model, "epsilon-plus-flat", graphs=False).relevance(x, 1)
        with caplog.at_level(logging.WARNING, logger="medlrp.lrp.replay"):
            assert torch.equal(lrp.relevance(x, 1), fresh)
        assert not torch.equal(fresh, before)
        before = fresh
    # the first change recaptured; at STALE_LIMIT changes the key runs eagerly for good, said once
    assert stats.captures == STALE_LIMIT and not lrp.replay.entries
    assert list(lrp.replay.eager.values()) == ["the model's weights keep changing (training)"]
    assert [r.getMessage() for r in caplog.records] == [
        "medlrp: LRP passes of input 2x3x16x16 (torch.float32, cpu) run eagerly from now on: "
        "the model's weights keep changing (training)"
    ]
    replays = stats.replays
    assert torch.equal(lrp.relevance(x, 1), fresh) and stats.replays == replays


def test_replaced_parameters_and_buffers_are_recaptured():
    model = cnn()
    lrp = medlrp.LRP(model, "epsilon-gamma-box", graphs=True)
    x = x_of(2)
    lrp.relevance(x)
    old = model[7].weight
    model[7].weight = nn.Parameter(torch.randn_like(old))  # a new parameter object
    fresh = medlrp.LRP(model, "epsilon-gamma-box", graphs=False).relevance(x)
    assert torch.equal(lrp.relevance(x), fresh)
    (entry,) = lrp.replay.entries.values()
    assert any(t is model[7].weight for t in entry.tensors) and not any(t is old for t in entry.tensors)
    assert torch.equal(lrp.relevance(x), fresh)  # a replay in between: the next change recaptures again
    model[1].running_var = model[1].running_var * 2  # a new buffer tensor
    fresh = medlrp.LRP(model, "epsilon-gamma-box", graphs=False).relevance(x)
    assert torch.equal(lrp.relevance(x), fresh)
    assert torch.equal(lrp.relevance(x), fresh)
    model[3].mask = torch.ones(1)  # a tensor attribute a forward of ours could read
    lrp.relevance(x)
    stats = lrp.replay.stats
    assert (stats.captures, stats.replays, lrp.replay.eager) == (4, 2, {})
    model[2].train()  # a module's mode is part of the key (a ReLU in train mode: nothing else changes)
    lrp.relevance(x)
    assert (stats.captures, len(lrp.replay.entries)) == (5, 2)


def test_returned_maps_are_never_overwritten_by_a_later_replay():
    model = cnn()
    lrp = medlrp.LRP(model, "epsilon-plus-flat", graphs=True)
    lrp(x_of(2, seed=1))
    x2, x3 = x_of(2, seed=2), x_of(2, seed=3)
    e2 = lrp(x2)
    kept = (e2.relevance.clone(), e2.output.clone(), e2.target.clone())
    x2.mul_(-3.0)  # the caller's input changes after the call: the result does not
    e3 = lrp(x3)
    assert lrp.replay.stats.replays == 2
    assert torch.equal(e2.relevance, kept[0]) and torch.equal(e2.output, kept[1])
    assert torch.equal(e2.target, kept[2])
    assert not torch.equal(e3.relevance, e2.relevance)
    (entry,) = lrp.replay.entries.values()
    static = {t.data_ptr() for t in entry.captured.outputs if t is not None} | {entry.x.data_ptr()}
    assert not static & {t.data_ptr() for t in (e2.relevance, e2.output, e2.target, e3.relevance)}


class Failing:
    """A backend whose capture raises (an operation the device cannot capture)."""

    name = "failing"

    def __init__(self) -> None:
        self.calls = 0

    def capture(self, step, device):
        self.calls += 1
        raise RuntimeError("operation not permitted when stream is capturing\ndetails")


def test_a_failing_capture_runs_that_key_eagerly_with_one_logged_line(caplog):
    model = cnn()
    eager = medlrp.LRP(model, "epsilon-gamma-box", graphs=False)
    lrp = medlrp.LRP(model, "epsilon-gamma-box", graphs=True)
    lrp.replay.backend = backend = Failing()
    with caplog.at_level(logging.WARNING, logger="medlrp.lrp.replay"):
        for seed in range(3):
            assert_same(lrp(x_of(2, seed=seed)), eager(x_of(2, seed=seed)))
    assert backend.calls == 1 and not lrp.replay.entries
    assert [r.getMessage() for r in caplog.records] == [
        "medlrp: LRP passes of input 2x3x16x16 (torch.float32, cpu) run eagerly: the failing capture "
        "failed (RuntimeError: operation not permitted when stream is capturing)"
    ]
    lrp.relevance(x_of(3))  # another key tries again
    assert backend.calls == 2


def test_a_host_read_inside_the_pass_fails_its_capture_and_runs_eagerly(caplog):
    def start(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        scale = 2.0 if output.max().item() > 0 else 1.0  # a host read: a CUDA capture refuses it
        return scale * torch.zeros_like(output).scatter(1, target[:, None], output.gather(1, target[:, None]))

    model = cnn()
    lrp = medlrp.LRP(model, "epsilon", start=start, graphs=True)
    eager = medlrp.LRP(model, "epsilon", start=start, graphs=False)
    with caplog.at_level(logging.WARNING, logger="medlrp.lrp.replay"):
        for seed in range(2):
            assert torch.equal(lrp.relevance(x_of(2, seed=seed)), eager.relevance(x_of(2, seed=seed)))
    assert "reads a tensor's value on the host (item)" in caplog.text
    assert lrp.replay.stats.captures == 0 and len(lrp.replay.eager) == 1


def test_a_rule_branch_that_flips_fails_the_guard_and_runs_eagerly():
    """epsilon-plus on a first layer reads the input's signs: a capture with inputs >= 0 does not fit -1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 3)).eval()
    lrp = medlrp.LRP(model, "epsilon-plus", graphs=True)
    eager = medlrp.LRP(model, "epsilon-plus", graphs=False)
    positive = x_of(2).abs()
    lrp.relevance(positive)
    (entry,) = lrp.replay.entries.values()
    assert entry.captured.outputs[3] is not None  # the pass reads a value: it carries a guard
    assert torch.equal(lrp.relevance(positive + 1.0), eager.relevance(positive + 1.0))
    assert lrp.replay.stats.replays == 1
    for seed in range(MISMATCH_LIMIT):
        mixed = x_of(2, seed=seed)
        assert torch.equal(lrp.relevance(mixed), eager.relevance(mixed))
    assert lrp.replay.stats.mismatches == {next(iter(lrp.replay.eager)): MISMATCH_LIMIT}
    assert list(lrp.replay.eager.values()) == ["inputs keep changing a rule's branch"]
    assert torch.equal(lrp.relevance(positive), eager.relevance(positive))


class Counting(Eager):
    """The eager backend, counting the passes freed."""

    def __init__(self) -> None:
        self.freed = 0

    def capture(self, step, device) -> Captured:
        captured = super().capture(step, device)
        captured.free = lambda: setattr(self, "freed", self.freed + 1)
        return captured


def test_at_most_limit_passes_are_kept_least_recently_used_first_out():
    model = cnn()
    lrp = medlrp.LRP(model, "epsilon", graphs=True)
    lrp.replay.limit, lrp.replay.backend = 2, (backend := Counting())
    stats = lrp.replay.stats
    for n in (1, 2, 1, 3):  # 1 is used again before 3 arrives: 2 goes out
        lrp.relevance(x_of(n))
    assert [k[0][0] for k in lrp.replay.entries] == [1, 3]
    assert (stats.captures, stats.replays, stats.evictions, backend.freed) == (3, 1, 1, 1)
    x = x_of(2, seed=9)
    assert torch.equal(lrp.relevance(x), medlrp.LRP(model, "epsilon", graphs=False).relevance(x))
    assert (stats.captures, stats.evictions, backend.freed) == (4, 2, 2)
    lrp.replay.clear()
    assert not lrp.replay.entries and backend.freed == 4


def test_an_explainer_with_captures_copies_without_them():
    import copy

    model = cnn()
    lrp = medlrp.LRP(model, "epsilon", graphs=True)
    x = x_of(2)
    lrp.relevance(x)
    twin = copy.deepcopy(lrp)  # its own model copy: its passes are captured again, for that model
    assert not twin.replay.entries and twin.replay.stats.captures == 1 and twin.replay.model is twin.model
    assert torch.equal(twin.relevance(x), lrp.relevance(x))
    assert twin.replay.stats.captures == 2 and lrp.replay.stats.replays == 1


def test_threads_sharing_one_explainer_get_their_own_maps():
    """The static buffers are one per key: calls from several threads are serialised, never mixed."""
    from concurrent.futures import ThreadPoolExecutor

    model = cnn()
    lrp = medlrp.LRP(model, "epsilon-gamma-box", graphs=True)
    eager = medlrp.LRP(model, "epsilon-gamma-box", graphs=False)
    xs = [x_of(2, seed=seed) for seed in range(8)]
    lrp.relevance(xs[0])
    with ThreadPoolExecutor(4) as pool:
        maps = list(pool.map(lrp.relevance, xs))
    for x, r in zip(xs, maps, strict=True):
        assert torch.equal(r, eager.relevance(x))
    assert lrp.replay.stats.replays == 8


def test_a_model_switched_to_train_mode_is_refused_also_after_a_capture():
    model = cnn()
    lrp = medlrp.LRP(model, "epsilon", graphs=True)
    x = x_of(2)
    lrp.relevance(x)
    lrp.relevance(x)
    model.train()
    counted = model[1].num_batches_tracked.clone()
    with pytest.raises(medlrp.InputError, match=r"model\.eval\(\)"):
        lrp.relevance(x)
    assert torch.equal(model[1].num_batches_tracked, counted)  # the refusal came before any pass
    model.eval()
    assert torch.equal(lrp.relevance(x), medlrp.LRP(model, "epsilon", graphs=False).relevance(x))
    assert (lrp.replay.stats.captures, lrp.replay.stats.replays) == (1, 2)


def test_what_stays_eager():
    model = cnn()
    x = x_of(2)
    auto = medlrp.LRP(model, "epsilon")  # graphs="auto": CUDA inputs only
    auto.relevance(x)
    assert auto.replay.stats.captures == 0 and auto.replay.stats.eager == 0
    lrp = medlrp.LRP(model, "epsilon", graphs=True)
    xg = x.clone().requires_grad_(True)
    r = lrp.relevance(xg, 1, create_graph=True)  # differentiable relevance is never captured
    assert r.requires_grad and lrp.replay.stats.captures == 0 and lrp.replay.stats.eager == 0
    with pytest.raises(medlrp.InputError, match="graphs must be True, False or 'auto'"):
        medlrp.LRP(model, "epsilon", graphs="yes")
    with pytest.raises(medlrp.InputError, match="out of range"):  # a bad target: the same error
        lrp.relevance(x, 9)
    lrp.relevance(x, 1)
    with pytest.raises(medlrp.InputError, match=r"target \[9, 9\] out of range"):  # also on a hit
        lrp.relevance(x, 9)


def test_a_segmentation_output_runs_eagerly(caplog):
    torch.manual_seed(0)
    seg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    lrp = medlrp.LRP(seg, "epsilon", graphs=True)
    x = x_of(2, size=8)
    with caplog.at_level(logging.INFO, logger="medlrp.lrp.replay"):
        a = lrp(x, 1)
    assert_same(a, medlrp.LRP(seg, "epsilon", graphs=False)(x, 1))
    assert "segmentation output is not captured" in caplog.text and lrp.replay.stats.captures == 0
    mask = torch.zeros(8, 8)
    mask[2:6, 2:6] = 1
    assert torch.equal(
        lrp.relevance(x, 1, region=mask), medlrp.LRP(seg, "epsilon").relevance(x, 1, region=mask)
    )


def test_the_model_is_left_untouched():
    model = cnn()
    x = x_of(2)
    out = model(x)
    params = [(n, p, p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()
    ]
    global_hooks = [
        dict(h) for h in (torch_module._global_forward_pre_hooks, torch_module._global_forward_hooks)
    ]
    attributes = set(model.__dict__)
    for name in CNN_COMPOSITES:
        lrp = medlrp.LRP(model, name, graphs=True)
        for seed in range(3):
            lrp(x_of(2, seed=seed))
        lrp.replay.backend = Failing()
        lrp(x_of(3))
    for (n, p, v, rg), (n2, p2) in zip(params, model.named_parameters(), strict=True):
        assert n == n2 and p is p2 and torch.equal(v, p2) and rg == p2.requires_grad and p2.grad is None
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert hooks == [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()
    ]
    assert global_hooks == [
        dict(h) for h in (torch_module._global_forward_pre_hooks, torch_module._global_forward_hooks)
    ]
    assert set(model.__dict__) == attributes and not model.training
    assert torch.equal(model(x), out) and not hasattr(x, "_medlrp_node")


def test_reads_recorded_then_replayed_with_a_device_guard():
    cond = [torch.tensor(True), torch.tensor(False)]
    recorder = Recorder()
    assert [recorder(c) for c in cond] == [True, False] and recorder.values == [True, False]
    replayer = Replayer(recorder.values)
    with HostReads():  # a replayer never reads a value on the host
        assert [replayer(c) for c in cond] == [True, False]
        guard = replayer.guard()
    assert bool(guard)
    flipped = Replayer(recorder.values)
    flipped(torch.tensor(False))
    flipped(torch.tensor(False))
    assert not bool(flipped.guard())
    with pytest.raises(HostReadError, match="more values"):
        flipped(cond[0])
    with pytest.raises(HostReadError, match="fewer values"):
        Replayer([True]).guard()
    assert Replayer([]).guard() is None
    with HostReads(), pytest.raises(HostReadError, match="host data"):
        torch.as_tensor(0.5)
    with HostReads(), pytest.raises(HostReadError, match="tolist"):
        cond[0].tolist()


@pytest.mark.parametrize("name", ["torchvision_swin_v2", "monai_senet_3d", "timm_efficientnet_evos"])
def test_zoo_members_capture_without_host_reads(name):
    """Layer norm and shifted windows, 3D squeeze-excitation, EvoNorm: captured (no host read), equal."""
    from medlrp.lrp import looks_like_transformer
    from test_lrp_zoo import ZOO

    make, shape = ZOO[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    composite = "attnlrp" if looks_like_transformer(model) else "epsilon-gamma-box"
    eager, replayed = medlrp.LRP(model, composite, graphs=False), medlrp.LRP(model, composite, graphs=True)
    for shift in (0.0, 0.5):
        assert torch.equal(replayed.relevance(x + shift), eager.relevance(x + shift))
    assert (replayed.replay.stats.captures, replayed.replay.stats.replays, replayed.replay.eager) == (
        1,
        1,
        {},
    )


def test_a_batch_job_reuses_one_explainer_and_writes_the_same_files(tmp_path, monkeypatch):
    """``medlrp batch`` explains every batch with one LRP (on a GPU: replayed); the files are the same."""
    import medlrp.batch.job as job
    from medlrp.cli import main
    from test_batch_support import batch_args, make_checkpoint, make_dataset, output_files

    make_dataset(tmp_path / "data", per_class=3)
    model = make_checkpoint(tmp_path / "m.pt")
    args = ("--methods", "lrp", "--batch-size", "2")
    assert main(batch_args(model, tmp_path / "data", tmp_path / "eager", *args)) == 0
    made: list[medlrp.LRP] = []

    class Replayed(medlrp.LRP):  # graphs=True: the eager backend's protocol on the CPU
        def __init__(self, *a, **k) -> None:
            super().__init__(*a, graphs=True, **k)
            made.append(self)

    monkeypatch.setattr(job, "LRP", Replayed)
    assert main(batch_args(model, tmp_path / "data", tmp_path / "replayed", *args)) == 0
    (lrp,) = made
    assert (lrp.replay.stats.captures, lrp.replay.stats.replays) == (1, 2)  # 6 cases, batches of 2
    eager, replayed = output_files(tmp_path / "eager"), output_files(tmp_path / "replayed")
    assert eager.keys() == replayed.keys() and any(k.endswith(".nii.gz") for k in eager)
    assert eager == replayed


def test_the_cuda_backend_protocol_with_a_stand_in_for_torch_cuda(monkeypatch):
    """The CUDA backend's steps, run on the CPU with torch.cuda's graph API stood in for.

    Warm-up on a side stream (the first under HostReads), one capture into the shared pool in
    thread-local error mode on a stream of its own, ended also when the pass fails, the graph reset
    when freed; the real API takes these arguments.
    """
    import contextlib
    import inspect

    from medlrp.lrp.replay import CudaGraphs

    params = inspect.signature(torch.cuda.CUDAGraph.capture_begin).parameters
    assert {"pool", "capture_error_mode"} <= set(params)
    log: list[object] = []
    streams: list[object] = []

    class Graph:
        def capture_begin(self, pool=None, capture_error_mode="global") -> None:
            log.append(("capture", pool, capture_error_mode, streams[-1]))

        def capture_end(self) -> None:
            log.append("end")

        def replay(self) -> None:
            log.append("replay")

        def reset(self) -> None:
            log.append("reset")

    class Stream:
        def wait_stream(self, other) -> None:
            pass

    @contextlib.contextmanager
    def stream(s):
        streams.append(s)
        try:
            yield
        finally:
            streams.pop()

    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: ("pool", len(log)))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    backend = CudaGraphs(warmup=3)
    fail = []

    def step():
        guarded = isinstance(torch.overrides._get_current_function_mode(), HostReads)
        log.append("step under HostReads" if guarded else "step")
        if fail and len(log) > 2 and isinstance(log[-2], tuple):
            raise RuntimeError("operation not permitted when stream is capturing")
        return (torch.ones(2), torch.ones(2), torch.zeros(2, dtype=torch.long), None)

    first = backend.capture(step, torch.device("cpu"))
    second = backend.capture(step, torch.device("cpu"))
    pool, side = log[3][1], log[3][3]
    assert pool is not None and isinstance(side, Stream)
    assert [e if isinstance(e, str) else e[:3] for e in log] == [
        "step under HostReads", "step", "step", ("capture", pool, "thread_local"), "step", "end",
        "step under HostReads", "step", "step", ("capture", pool, "thread_local"), "step", "end",
    ]  # fmt: skip
    assert log[9][3] is not side and first.outputs[0] is not second.outputs[0]
    assert first.replay() is first.outputs and log[-1] == "replay"  # the graph rewrites the static outputs
    first.free()
    assert log[-1] == "reset"
    fail.append(True)
    with pytest.raises(RuntimeError, match="capturing"):
        backend.capture(step, torch.device("cpu"))
    assert log[-1] == "end" and streams == []  # the capture ended, its stream no longer current
