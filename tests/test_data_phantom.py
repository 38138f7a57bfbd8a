import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from medlrp.data.phantom import PhantomSpec, chest_case, glioma_case, iter_cases, write_phantom
from medlrp.data.phantom.shapes import corner_token
from medlrp.data.phantom.writer import CONFOUND_AGREEMENT, KINDS
from medlrp.errors import InputError
from medlrp.io import read_image


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "spec",
    [
        PhantomSpec(kind="glioma", dims=2, n=10, seed=3),
        PhantomSpec(kind="chest", dims=2, n=10, seed=3, confounded=True),
        PhantomSpec(kind="glioma", dims=3, n=10, seed=3, size=16),
    ],
    ids=["glioma2d", "chest2d-confounded", "glioma3d"],
)
def test_same_seed_same_bytes(tmp_path, spec):
    write_phantom(tmp_path / "a", spec)
    write_phantom(tmp_path / "b", spec)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    ext = ".png" if spec.dims == 2 else ".nii.gz"
    assert len([k for k in a if k.endswith(ext)]) == 2 * spec.n  # every case has its mask
    assert a == b
    other = PhantomSpec(spec.kind, spec.dims, spec.n, spec.confounded, spec.seed + 1, spec.size)
    write_phantom(tmp_path / "c", other)
    c = _digest(tmp_path / "c")
    assert set(c) == set(a)
    assert all(c[k] != a[k] for k in a if k.endswith(ext) and "_mask" not in k)


@pytest.mark.parametrize("make", [glioma_case, chest_case], ids=["glioma", "chest"])
@pytest.mark.parametrize("shape", [(64, 64), (24, 24, 24)], ids=["2d", "3d"])
def test_mask_covers_the_lesion(make, shape):
    for i in range(6):
        label = i % 2
        case = make([11, i], shape, label, token=bool(i % 3))
        plain = make([11, i], shape, label, token=bool(i % 3), with_lesion=False)
        changed = np.abs(case.image - plain.image) > 0
        mask = case.mask.astype(bool)
        assert mask.any()
        assert not (changed & ~mask).any(), "the lesion changes voxels outside its mask"
        assert not ((case.lesion > 0) & ~mask).any()
        if make is glioma_case or label == 1:  # every glioma has a tumour; chest class 1 an opacity
            assert changed.sum() >= 0.3 * (case.lesion > 0).sum() > 0
        else:
            assert not changed.any()
    if make is glioma_case:  # the tumour mask is the tumour: exactly where it is drawn
        assert np.array_equal(case.mask.astype(bool), case.lesion > 0)


def test_written_masks_match_cases(tmp_path):
    spec = PhantomSpec(kind="glioma", dims=2, n=10, seed=5)
    write_phantom(tmp_path, spec)
    classes = KINDS["glioma"][1]
    for split, case_id, case in iter_cases(spec):
        folder = tmp_path / split / classes[case.label]
        mask = read_image(folder / f"{case_id}_mask.png").array[0]
        image = read_image(folder / f"{case_id}.png").array[0]
        assert np.array_equal(mask > 0, case.mask.astype(bool))
        assert np.allclose(image / 30000.0, case.image, atol=1e-4)


def test_confounding_plan_and_identical_test_split(tmp_path):
    spec = PhantomSpec(kind="glioma", dims=2, n=80, seed=1, confounded=True, size=16)
    token_class = KINDS["glioma"][2]
    agree: dict[str, list[bool]] = {}
    for split, _, case in iter_cases(spec):
        agree.setdefault(split, []).append(case.token == (case.label == token_class))
    assert abs(np.mean(agree["train"]) - CONFOUND_AGREEMENT) < 0.03
    assert abs(np.mean(agree["val"]) - CONFOUND_AGREEMENT) < 0.07
    assert np.mean(agree["test"]) == 0.5
    plain = PhantomSpec(kind="glioma", dims=2, n=80, seed=1, confounded=False, size=16)
    for split, _, case in iter_cases(plain):
        agree.setdefault(f"plain-{split}", []).append(case.token == (case.label == token_class))
    assert np.mean(agree["plain-train"]) == 0.5
    small_c = PhantomSpec(kind="glioma", dims=2, n=10, seed=2, confounded=True)
    small_p = PhantomSpec(kind="glioma", dims=2, n=10, seed=2, confounded=False)
    write_phantom(tmp_path / "c", small_c)
    write_phantom(tmp_path / "p", small_p)
    assert _digest(tmp_path / "c" / "test") == _digest(tmp_path / "p" / "test")
    assert _digest(tmp_path / "c" / "train") != _digest(tmp_path / "p" / "train")
    info = json.loads((tmp_path / "c" / "dataset.json").read_text())
    assert info["confounded"] is True and info["kind"] == "glioma" and info["dims"] == 2
    assert info["n"] == {"train": 6, "val": 2, "test": 2} and info["size"] == [64, 64]
    assert info["classes"] == ["high_grade", "low_grade"] and info["seed"] == 2


def test_token_absence_is_visible_not_zero():
    on, region = corner_token((64, 64), True)
    off, region_off = corner_token((64, 64), False)
    assert np.array_equal(region, region_off)
    assert (off[region] > 0).all()  # the absent token is a mid-grey patch, not zeros
    assert (on[region] >= off[region]).all() and (on[region] > off[region]).sum() >= 16
    case = glioma_case([0, 1], (64, 64), 0, token=False)
    assert case.image[region].mean() > 0.3


def test_glioma_classes_differ_but_overlap_in_size():
    high = [glioma_case([4, i], (32, 32), 0, False).meta for i in range(20)]
    low = [glioma_case([4, i], (32, 32), 1, False).meta for i in range(20)]
    assert all(m["rim"] > m["core"] for m in high)
    assert max(m["radius"] for m in low) > min(m["radius"] for m in high)


@pytest.mark.parametrize(
    "spec, message",
    [
        (PhantomSpec(kind="brain"), "kind"),
        (PhantomSpec(dims=4), "dims"),
        (PhantomSpec(n=5), "--n"),
        (PhantomSpec(size=8), "--size"),
    ],
)
def test_bad_spec(tmp_path, spec, message):
    with pytest.raises(InputError, match=message):
        write_phantom(tmp_path / "x", spec)


def test_refuses_foreign_folder_and_overwrites_own(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        write_phantom(tmp_path, PhantomSpec(n=10, size=16))
    with pytest.raises(InputError, match="not a phantom"):
        write_phantom(tmp_path, PhantomSpec(n=10, size=16), overwrite=True)
    out = tmp_path / "ds"
    write_phantom(out, PhantomSpec(n=12, size=16))
    write_phantom(out, PhantomSpec(n=10, size=16), overwrite=True)
    assert len(list(out.rglob("*_mask.png"))) == 10
