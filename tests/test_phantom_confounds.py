"""The phantom's kinds of shortcut (``medlrp phantom --confound``) and guided training in 3D."""

import json

import numpy as np
import pytest
import torch

from medlrp.cli import main
from medlrp.commands.phantom import CONFOUND_HELP, POSITION_HELP
from medlrp.data.phantom import PhantomSpec, chest_case, glioma_case, iter_cases, write_phantom
from medlrp.data.phantom.confounds import CONFOUNDS, POSITIONS, Confound, draw, font_scale
from medlrp.data.phantom.writer import KINDS, iter_split
from medlrp.errors import InputError
from medlrp.registry import ARCHITECTURES
from medlrp.train.guided import GuidedLoss

SHAPES = {"2d": (64, 64), "3d": (24, 24, 24)}


def _pair(make, seed, shape, label, confound):
    on = make(seed, shape, label, True, confound=confound)
    off = make(seed, shape, label, False, confound=confound)
    return on, off


@pytest.mark.parametrize("kind", CONFOUNDS)
@pytest.mark.parametrize("make", [glioma_case, chest_case], ids=["glioma", "chest"])
@pytest.mark.parametrize("dims", list(SHAPES))
def test_confound_is_drawn_outside_the_region_and_nothing_else_changes(kind, make, dims):
    confound = Confound(kind)
    for i in range(4):
        on, off = _pair(make, [21, i], SHAPES[dims], i % 2, confound)
        region = on.region.astype(bool)
        assert on.token and not off.token
        assert on.token_area.shape == region.shape and np.array_equal(on.token_area, off.token_area)
        assert on.token_area.any() and not (on.token_area & region).any()
        changed = on.image != off.image
        assert changed.any(), "the confound is not drawn"
        assert not (changed & ~on.token_area).any(), "the confound changes pixels outside its area"
        assert np.array_equal(on.mask, off.mask) and np.array_equal(on.lesion, off.lesion)
        if kind != "corner-token":  # absent means not drawn (the corner token's grey patch stays)
            plain = make([21, i], SHAPES[dims], i % 2, False)
            outside = ~plain.token_area
            assert np.array_equal(off.image[outside], plain.image[outside])


@pytest.mark.parametrize("kind", CONFOUNDS)
def test_confound_is_deterministic_per_seed_and_varies_between_seeds(kind):
    confound = Confound(kind)
    a = glioma_case([3, 1], (64, 64), 0, True, confound=confound)
    b = glioma_case([3, 1], (64, 64), 0, True, confound=confound)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.token_area, b.token_area)
    if kind != "corner-token":  # a random place (and letter, digits) per case
        places = {
            glioma_case([3, i], (64, 64), 0, True, confound=confound).token_area.tobytes() for i in range(6)
        }
        assert len(places) > 1


@pytest.mark.parametrize("kind", [k for k in CONFOUNDS if k != "corner-token"])
def test_default_size_fits_clear_of_the_head_in_2d(kind):
    """At 64 px and size 1 a glyph confound is whole (its area a full box) and a pixel clear of the head."""
    for i in range(6):
        case = glioma_case([8, i], (64, 64), i % 2, True, confound=Confound(kind))
        rows, cols = np.nonzero(case.token_area)
        box = np.zeros_like(case.token_area)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert np.array_equal(box, case.token_area)
        grown = np.zeros_like(box)
        grown[max(0, rows.min() - 1) : rows.max() + 2, max(0, cols.min() - 1) : cols.max() + 2] = True
        assert not (grown & case.region.astype(bool)).any()


def _bbox(area):
    idx = np.argwhere(area)
    return idx.min(axis=0), idx.max(axis=0)


def test_positions_put_the_confound_where_named():
    shape = (64, 64)
    region = glioma_case([1, 0], shape, 0, False).region
    rng = np.random.default_rng(0)
    for corner in POSITIONS["corner-token"]:
        _, _, area = draw(Confound("corner-token", position=corner), shape, region, True, rng)
        low, high = _bbox(area)
        assert (high[0] < 20) == corner.startswith("top") and (low[0] > 44) == corner.startswith("bottom")
        assert (high[1] < 20) == corner.endswith("left") and (low[1] > 44) == corner.endswith("right")
    near = {"top": lambda lo, hi: hi[0] < 16, "bottom": lambda lo, hi: lo[0] > 47}
    near |= {"left": lambda lo, hi: hi[1] < 16, "right": lambda lo, hi: lo[1] > 47}
    for kind in ("border-marker", "digits", "ruler"):
        for edge in POSITIONS[kind]:
            if edge == "any":
                continue
            for seed in range(3):
                _, _, area = draw(
                    Confound(kind, position=edge), shape, region, True, np.random.default_rng(seed)
                )
                assert area.any() and near[edge](*_bbox(area)), (kind, edge)


@pytest.mark.parametrize("kind", CONFOUNDS)
def test_size_scales_the_confound(kind):
    shape = (128, 128)
    region = np.zeros(shape, dtype=bool)  # room for every size
    areas = [
        draw(Confound(kind, size), shape, region, True, np.random.default_rng(0))[2].sum()
        for size in (1.0, 1.5)
    ]
    assert areas[1] > 1.5 * areas[0]
    assert font_scale((32, 32), 1.0) == 1.0 and font_scale((128, 128), 1.5) == 3.0


def test_an_oversized_confound_is_cut_at_the_region():
    shape = (64, 64)
    region = glioma_case([1, 0], shape, 0, False).region.astype(bool)
    for kind in CONFOUNDS:
        value, paste, area = draw(Confound(kind, 4.0), shape, region, True, np.random.default_rng(0))
        assert paste.any() and not (paste & region).any() and not (area & region).any()


@pytest.mark.parametrize(
    "agreement, dims", [((0.9,), 2), ((0.8, 0.6), 2), ((1.0, 0.0), 2), ((0.75,), 3)], ids=str
)
def test_agreement_per_class_in_train_val_and_half_in_test(agreement, dims):
    spec = PhantomSpec("glioma", dims, 100, True, 4, 16, confound="ruler", agreement=agreement)
    token_class = KINDS["glioma"][2]
    seen: dict[tuple[str, int], list[bool]] = {}
    for split, _, case in iter_cases(spec):
        seen.setdefault((split, case.label), []).append(case.token == (case.label == token_class))
    for (split, label), agrees in seen.items():
        rate = 0.5 if split == "test" else (agreement[label] if len(agreement) > 1 else agreement[0])
        expected = 1 - round(len(agrees) * (1 - rate)) / len(agrees)
        assert np.mean(agrees) == pytest.approx(expected), (split, label)
        if split != "test":
            assert abs(np.mean(agrees) - rate) <= 1 / len(agrees) + 1e-9


def test_test_split_is_the_same_in_confounded_and_clean_data():
    specs = [
        PhantomSpec("glioma", 2, 20, confounded, 2, 32, confound="digits") for confounded in (True, False)
    ]
    tests = [[c.image for split, _, c in iter_cases(s) if split == "test"] for s in specs]
    assert all(np.array_equal(a, b) for a, b in zip(*tests, strict=True))


def test_a_larger_test_split_draws_more_of_the_same_cases():
    spec = PhantomSpec("glioma", 2, 20, True, 2, 32, confound="digits")
    test = [(i, c) for split, i, c in iter_cases(spec) if split == "test"]  # 4 cases
    more = list(iter_split(spec, "test", 24))
    assert [i for i, _ in more[: len(test)]] == [i for i, _ in test]
    for (_, a), (_, b) in zip(test, more, strict=False):
        assert a.label == b.label and np.array_equal(a.region, b.region) and np.array_equal(a.mask, b.mask)
        if a.token == b.token:
            assert np.array_equal(a.image, b.image)
    # the shortcut is independent of the class in the larger split too: half of each class carries it
    for label in (0, 1):
        assert sum(c.token for _, c in more if c.label == label) == 6
    assert len({i for i, _ in more}) == 24


def test_default_spec_is_the_corner_token(tmp_path):
    default = PhantomSpec("glioma", 2, 10, True, 1, 32)
    named = PhantomSpec("glioma", 2, 10, True, 1, 32, confound="corner-token", confound_position="top-left")
    for (_, _, a), (_, _, b) in zip(iter_cases(default), iter_cases(named), strict=True):
        assert np.array_equal(a.image, b.image)
    info = write_phantom(tmp_path, default)
    assert set(info["token"]) == {"class", "agreement_train_val", "agreement_test", "where"}  # as before


def test_cli_writes_a_confound_dataset(tmp_path, capsys):
    out = tmp_path / "d"
    args = [
        "phantom",
        "--out",
        str(out),
        "--n",
        "10",
        "--size",
        "32",
        "--quiet",
        "--confound",
        "border-marker",
    ]
    assert main([*args, "--confound-position", "left", "--agreement", "0.9,0.7"]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["confounded"] is True
    token = info["token"]
    assert token["kind"] == "border-marker" and token["position"] == "left" and token["size"] == 1.0
    assert token["agreement_train_val"] == {"high_grade": 0.9, "low_grade": 0.7}
    again = tmp_path / "e"
    assert (
        main([*args[:2], str(again), *args[3:], "--confound-position", "left", "--agreement", "0.9,0.7"]) == 0
    )
    files = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert files and all((out / f).read_bytes() == (again / f).read_bytes() for f in files)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--confound", "sticker"], "--confound must be one of"),
        (["--confound-size", "9"], "--confound-size"),
        (["--confound", "ruler", "--confound-position", "any"], "--confound-position for ruler"),
        (["--agreement", "0.9,x"], "--agreement"),
        (["--agreement", "0.9,0.8,0.7"], "--agreement"),
        (["--agreement", "1.5"], "--agreement"),
        (["--agreement", ","], "--agreement"),
        (["--kind", "ecg", "--confound", "digits"], "--confound"),
    ],
)
def test_bad_confound_options_one_line_exit_2(tmp_path, capsys, extra, message):
    out = tmp_path / "x"
    assert main(["phantom", "--out", str(out), "--n", "10", "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medlrp: error:") and message in err
    assert not out.exists() or not any(out.iterdir())


def test_ecg_records_its_agreement(tmp_path):
    info = write_phantom(tmp_path, PhantomSpec("ecg", n=10, confounded=True, size=200, agreement=(0.8,)))
    assert info["token"]["agreement_train_val"] == 0.8 and "kind" not in info["token"]


def test_spec_checks_raise_input_error():
    with pytest.raises(InputError, match="--confound-position"):
        PhantomSpec(confound="digits", confound_position="left").checked()
    assert PhantomSpec(confound="digits").checked().confound_position == "bottom"


def test_help_lists_every_confound_and_position():
    assert all(kind in CONFOUND_HELP for kind in CONFOUNDS)
    for kind, places in POSITIONS.items():
        assert f"{kind}: {', '.join(places)}" in POSITION_HELP


def test_guided_cnn3d_step_on_the_3d_phantom_has_a_gradient():
    spec = PhantomSpec("glioma", 3, 10, True, 0, 16, confound="border-marker")
    cases = [c for split, _, c in iter_cases(spec) if split == "train"][:4]
    x = torch.stack([torch.as_tensor(c.image[None]) for c in cases])
    x = (x - x.mean()) / x.std()
    y = torch.tensor([c.label for c in cases])
    mask = torch.stack([torch.as_tensor(c.region[None], dtype=torch.float32) for c in cases])
    torch.manual_seed(0)
    model = ARCHITECTURES.get("cnn3d")(in_channels=1, num_classes=2).train()
    grads = {}
    for weight in (0.0, 1.0):
        kwargs = {"composite": "epsilon-alpha2-beta1-flat", "explain_every": 1, "reference_weight": 0.0}
        loss, parts = GuidedLoss(weight, **kwargs)(model, x, y, mask)
        model.zero_grad()
        loss.backward()
        grads[weight] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert torch.isfinite(grads[weight]).all()
    assert float(parts["guidance"]) > 0
    assert not torch.allclose(grads[0.0], grads[1.0])  # the guidance term adds its own gradient


def test_cli_guided_cnn3d_on_a_confounded_3d_phantom(tmp_path, capsys):
    data = tmp_path / "ph"
    phantom = ["phantom", "--out", str(data), "--dims", "3", "--n", "10", "--size", "16", "--quiet"]
    assert main([*phantom, "--confound", "border-marker"]) == 0
    args = ["train", "--data", str(data), "--arch", "cnn3d", "--epochs", "1", "--batch-size", "3", "--quiet"]
    out = tmp_path / "m.pt"
    assert main([*args, "--guided", "--guidance-weight", "0.5", "--out", str(out)]) == 0
    extra = torch.load(out, weights_only=True)["extra"]
    assert extra["guided"] is True and extra["history"][0]["guidance"] > 0
