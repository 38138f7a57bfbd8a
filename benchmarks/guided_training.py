"""Explanation-guided training against a shortcut: the confounded glioma phantom (2D; 3D for ``cnn3d``).

For each architecture (a small residual CNN ``cnn2d`` and a tiny ViT ``vit2d``), with the same
architecture, budget (cases, epochs, batch size, learning rate) and seed:

  (a) plain training on the confounded training split (corner token agrees with the class in 95%),
  (b) guided training (``GuidedLoss``: LRP relevance of the logit difference must lie inside the
      annotated region) on the same split,
  (c) plain training on the unconfounded training split,

each evaluated on the unconfounded test split (the test split of both datasets is the same; 2000 cases by
default, ``--test-cases``): accuracy, with the standard error the draw of test cases puts on the recovered
share of the gap (:func:`recovery_standard_error`: 3-5 % of the gap at 400 cases, 5-10 % for the digits'
smaller gap, as wide as the differences between recipes; about half that at 2000). On the first 400 of
them (``--explained-cases``): the relevance mass inside the tumour mask (positive LRP relevance of the
true class inside the tumour over all positive relevance, the model's default composite; 0 for a model
without positive relevance), and the share of |relevance| in the token corner; and whether the model reads
the token (accuracy where the token agrees with the class and where not, on all test cases; the token's
effect on the logit difference, measured on the test cases drawn with and without it, against the
relevance LRP puts in the token corner). Also the time of one training step of (b) relative to one of (a),
same model and batch, interleaved repeats, median (each sample the mean of the steps that hold one
explained case; ``benchmarks/guided_step_cost.py`` times the recipes alone).

The annotation (``--mask-kind``) is the *head* by default: the region that may matter (everything
inside the scalp outline, which a user draws or thresholds in seconds), so relevance on the background
(where scanners and hospitals put labels and markers: the token) costs. ``tumour`` guides with the tumour
masks instead (grown by ``--mask-margin``); see BENCHMARKS.md for why that does not work.

The shortcut (``--confound``): the corner token by default, or a side marker, burned-in digits or a
ruler (:mod:`medlrp.data.phantom.confounds`), with ``--confound-size``, ``--confound-position`` and
``--agreement`` as for ``medlrp phantom``; the "token corner" scores then read the confound's area of
each case. ``--archs cnn3d`` runs the 3D glioma phantom (``--size`` defaults to 32 there).

    .venv/bin/python benchmarks/guided_training.py            # writes benchmarks/results/guided.json
    .venv/bin/python benchmarks/guided_training.py --quick    # a smaller smoke run
    .venv/bin/python benchmarks/guided_training.py --archs cnn2d --confound ruler --out ruler.json
    .venv/bin/python benchmarks/guided_training.py --archs cnn3d --seeds 0,1,2 --out cnn3d.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

import medlrp
from medlrp.data.folder import Batch
from medlrp.data.phantom import PhantomSpec, glioma_case, iter_cases
from medlrp.data.phantom.confounds import CONFOUNDS
from medlrp.data.phantom.glioma import HIGH_GRADE
from medlrp.data.phantom.writer import KINDS, iter_split, split_sizes
from medlrp.metrics import relevance_mass_accuracy
from medlrp.models.preprocessing import Preprocessing
from medlrp.registry import ARCHITECTURES
from medlrp.train import TrainConfig, fit, predict
from medlrp.train.guided import GuidedLoss, grow_mask, guidance_composite, logit_difference, lrp_relevance
from medlrp.train.guided_losses import GuidanceLoss
from medlrp.train.losses import cross_entropy_loss
from medlrp.train.tensors import batches_per_epoch

RESULTS = Path(__file__).with_name("results")

#: Per-architecture budget and guidance (the same budget for its (a), (b) and (c)). The CNN explains with
#: alpha2-beta1 (which sees inhibitory evidence: under z+ rules a guided model hides its shortcut in
#: inhibition) from the first step; the ViT with the engine's default (attnlrp) from epoch 15 on
#: (``explain_start_epochs``; the reference term runs from the first step): penalising an untrained
#: ViT's relevance holds it at chance. Both explain every 32nd case (the cost limit). The ViT embeds its
#: 16-px patches after a two-layer convolutional stem, reads the mean of its patch tokens and trains
#: at lr 3e-4 on 1200 cases: without the stem it reaches 0.72 on the clean data, at lr 1e-3 it sits at
#: chance for 25 epochs (BENCHMARKS.md). The CNN trains 20 epochs (10 until session 7): at 10 the guided
#: CNN was still catching up with the clean one on some seeds (90 % of the gap on seed 4, 95 % at 20).
#: The ViT trains 60 epochs (40 until session 7; seed 3: 88 % of the gap at 40, 94 % at 60).
SETTINGS: dict[str, dict[str, Any]] = {
    "cnn2d": {
        "n": 400,
        "epochs": 20,
        "lr": 2e-3,
        "arch_kwargs": {},
        "composite": None,  # the default relevance (epsilon-alpha2-beta1-flat), bounded: "auto"
        "explain_every": "auto",
        "explain_start_epochs": 0,
        "weight": 0.3,
        "reference_weight": 3.0,
        "reference_every": 1,
    },
    "vit2d": {
        "n": 1200,
        "epochs": 60,
        "lr": 3e-4,
        "arch_kwargs": {"patch_size": 16, "stem": 2, "pool": "mean"},
        "composite": None,
        "explain_every": "auto",
        "explain_start_epochs": 15,
        "weight": 0.3,
        "reference_weight": 3.0,
        "reference_every": 1,
    },
}
#: The 3D CNN on the 3D glioma phantom (32^3 volumes), guided like the 2D CNN, 20 epochs: after 10 the
#: guided cnn3d still read the token (seed 0: 67 % of the gap recovered, token effect 0.44x the logit;
#: 20 epochs: (b) 0.90, token effect 0.04x; BENCHMARKS.md).
SETTINGS["cnn3d"] = {**SETTINGS["cnn2d"], "n": 400, "epochs": 20, "lr": 2e-3, "dims": 3, "size": 32}


#: ``(mean, std)`` of one fixed intensity map for a whole data set, or ``None``: each image z-scored on
#: its own (Preprocessing's default). Per-image z-scoring leaks the token into every pixel: a bright
#: patch raises the image's mean and std, so the whole head shifts with it (measured: guided models
#: then read the token from the head's intensities, where no mask can object). See BENCHMARKS.md.
Scale = tuple[float, float] | None


#: The phantom's template: its dimensionality and shortcut (``--confound``, ...); the benchmark fills in
#: ``confounded``, ``n``, ``seed`` and ``size``.
PLAIN = PhantomSpec("glioma", 2)


def _spec(options: PhantomSpec, confounded: bool, n: int, seed: int, size: int) -> PhantomSpec:
    return replace(options, confounded=confounded, n=n, seed=seed, size=size)


def _prep(scale: Scale, size: int, dims: int = 2) -> Any:
    prep = Preprocessing(
        dims=dims, channels=1, size=[size] * dims, intensity="zscore" if scale is None else "none"
    )
    if scale is None:
        return prep
    mean, std = scale
    return lambda image: (prep(image) - mean) / std


def fixed_scale(n: int, seed: int, size: int, options: PhantomSpec = PLAIN) -> tuple[float, float]:
    """Mean and std of the confounded training split's raw intensities (one map for every split)."""
    prep = Preprocessing(dims=options.dims, channels=1, size=[size] * options.dims, intensity="none")
    x = torch.stack(
        [
            prep(c.image[None])
            for split, _, c in iter_cases(_spec(options, True, n, seed, size))
            if split == "train"
        ]
    )
    return float(x.mean()), float(x.std())


def phantom(
    confounded: bool,
    n: int,
    seed: int,
    size: int,
    mask_kind: str = "tumour",
    scale: Scale = None,
    options: PhantomSpec = PLAIN,
    test_cases: int | None = None,
) -> dict[str, Batch]:
    """The glioma phantom (2D unless ``options`` say 3D) in memory, split into train/val/test batches.

    ``mask_kind``: ``"tumour"`` (the lesion masks) or ``"head"`` (each case's ``region``); ``scale``:
    see :data:`Scale`; ``test_cases``: draw this many test cases instead of the split's share of ``n``
    (the same distribution, unconfounded; the first cases are the same).
    """
    prep = _prep(scale, size, options.dims)
    cases: dict[str, list[Any]] = {}
    spec = _spec(options, confounded, n, seed, size)
    for split, case_id, case in iter_cases(spec):
        if not (split == "test" and test_cases):
            cases.setdefault(split, []).append((case_id, case))
    if test_cases:
        cases["test"] = list(iter_split(spec, "test", test_cases))
    out = {}
    for split, items in cases.items():
        x = torch.stack([prep(c.image[None]) for _, c in items])
        masks = [c.region if mask_kind == "head" else c.mask for _, c in items]
        mask = torch.stack([torch.as_tensor(m[None], dtype=torch.float32) for m in masks])
        out[split] = Batch(
            x=x,
            label=torch.tensor([c.label for _, c in items]),
            mask=mask,
            has_mask=torch.ones(len(items), dtype=torch.bool),
            case_id=[i for i, _ in items],
        )
    return out


def _test_split(n: int, seed: int, size: int, options: PhantomSpec, count: int | None) -> list[Any]:
    """The test cases (``count`` of them; ``None``: the split's share of ``n``), the same in both datasets."""
    spec = _spec(options, True, n, seed, size)
    return [c for _, c in iter_split(spec, "test", count or split_sizes(n)["test"])]


def test_tokens(
    n: int, seed: int, size: int, options: PhantomSpec = PLAIN, count: int | None = None
) -> torch.Tensor:
    """Whether each test case carries the corner token (the same in both datasets)."""
    return torch.tensor([c.token for c in _test_split(n, seed, size, options, count)])


def token_areas(
    n: int, seed: int, size: int, options: PhantomSpec = PLAIN, count: int | None = None
) -> torch.Tensor:
    """Each test case's confound area (``PhantomCase.token_area``, ``(N, 1, *spatial)``, bool)."""
    areas = [c.token_area for c in _test_split(n, seed, size, options, count)]
    return torch.stack([torch.as_tensor(a[None]) for a in areas])


def token_pairs(
    n: int,
    seed: int,
    size: int,
    scale: Scale = None,
    options: PhantomSpec = PLAIN,
    count: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every test case drawn with and without the token (nothing else differs), normalised."""
    prep = _prep(scale, size, options.dims)
    split_idx = list(split_sizes(n)).index("test")
    shape, confound = (size,) * options.dims, options.confound_spec()
    on, off = [], []
    for i in range(count or split_sizes(n)["test"]):
        case_seed = [seed, list(KINDS).index("glioma"), options.dims, split_idx, i]
        label = i % 2  # as iter_cases draws them
        for present, out in ((True, on), (False, off)):
            out.append(prep(glioma_case(case_seed, shape, label, present, confound=confound).image[None]))
    return torch.stack(on), torch.stack(off)


def _corner(x: torch.Tensor) -> torch.Tensor:
    """The default corner token's patch (every spatial axis) as a boolean map like ``x``."""
    edge = max(4, round(x.shape[-1] * 0.16)) + max(1, round(x.shape[-1] * 0.03))
    area = torch.zeros_like(x, dtype=torch.bool)
    area[(..., *(slice(0, edge) for _ in x.shape[2:]))] = True
    return area


def token_effect(
    model: torch.nn.Module, pairs: tuple[torch.Tensor, torch.Tensor], areas: torch.Tensor | None = None
) -> dict[str, float]:
    """What the token does to the decision, and how much of it LRP shows in the token corner.

    ``token_effect``: median change of the logit difference (token class minus the other) when the token
    is added to a case, over the median |logit difference|; ``token_corner_relevance``: median signed
    relevance (guidance composite) in the token corner over |logit difference|, on the cases with token.
    A model that reads the token has a large effect; a faithful explanation then shows it in the corner.
    ``areas``: each case's confound area (``None``: the default corner token's patch).
    """
    on, off = pairs
    model.eval()
    with torch.no_grad():
        d_on, d_off = (model(x) @ torch.tensor([1.0, -1.0]) for x in (on, off))  # HIGH_GRADE is class 0
    target = torch.full((len(on),), HIGH_GRADE)
    r, out, _ = medlrp.LRP(model, guidance_composite(model), start="logit-difference").attribute(on, target)
    area = _corner(on) if areas is None else areas
    corner = (r.detach() * area).flatten(1).sum(1)
    return {
        "token_effect": float((d_on - d_off).median() / d_on.abs().median()),
        "token_corner_relevance": float(
            (corner / logit_difference(out, target).sum(1).detach().abs()).median()
        ),
    }


def token_split(model: torch.nn.Module, test: Batch, tokens: torch.Tensor) -> dict[str, float]:
    """Test accuracy where the token agrees with the class (as in 95 % of training) and where not.

    A model that reads the tumour scores alike on both; a model that reads the token scores near 1 and 0.
    """
    agree = tokens == (test.label == HIGH_GRADE)  # the token goes with high grade in training
    right = predict(model, test).argmax(dim=1) == test.label
    return {
        "acc_token_agrees": float(right[agree].float().mean()),
        "acc_token_disagrees": float(right[~agree].float().mean()),
    }


def explanation_scores(
    model: torch.nn.Module, data: Batch, chunk: int = 32, areas: torch.Tensor | None = None
) -> dict[str, float]:
    """Relevance mass inside the tumour mask (see the module docstring) and the token corner's share.

    ``areas``: each case's confound area (``None``: the default corner token's patch).
    """
    model.eval()
    lrp = medlrp.LRP(model)
    areas = _corner(data.x) if areas is None else areas
    mass, corner = [], []
    for i in range(0, len(data.label), chunk):
        r = lrp.relevance(data.x[i : i + chunk], data.label[i : i + chunk]).detach()
        mass.append(relevance_mass_accuracy(r.clamp(min=0), data.mask[i : i + chunk]))
        total = r.abs().flatten(1).sum(1).clamp_min(1e-12)
        corner.append((r * areas[i : i + chunk]).abs().flatten(1).sum(1) / total)
    # no positive relevance at all (a constant model): no mass in the mask either
    return {
        "mass_inside_mask": float(torch.cat(mass).nan_to_num(0.0).mean()),
        "token_corner_share": float(torch.cat(corner).median()),
    }


def build(arch: str, size: int, seed: int, kwargs: dict[str, Any]) -> torch.nn.Module:
    """The architecture with the benchmark's seed (initial weights independent of the global state)."""
    if arch.startswith("vit"):
        kwargs = {"image_size": size, **kwargs}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES.get(arch)(in_channels=1, num_classes=2, **kwargs)


def timed_steps(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batch: Batch,
    loss_fn: Any,
    block: int = 1,
    clock: Any = time.perf_counter,
) -> float:
    """Mean time of ``block`` consecutive training steps (forward, backward, optimiser step)."""
    t0 = clock()
    for _ in range(block):
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model, batch)
        loss.backward()
        opt.step()
    return (clock() - t0) / block


def step_ratio(
    model: torch.nn.Module, batch: Batch, guided: Any, repeats: int, block: int = 1
) -> dict[str, float]:
    """Median time of a guided and of a plain training step (forward, backward, optimiser step).

    Each sample is the mean of ``block`` consecutive steps: where the explanation term runs in every
    ``block``-th step only (``explain_every`` beyond the batch), a median of single steps would miss it.
    """
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step(loss_fn: Any) -> float:
        return timed_steps(model, opt, batch, loss_fn, block)

    step(cross_entropy_loss), step(guided)  # warm-up
    plain, guide = [], []
    for _ in range(repeats):
        plain.append(step(cross_entropy_loss))
        guide.append(step(guided))
    p, g = statistics.median(plain), statistics.median(guide)
    return {"plain_step_s": p, "guided_step_s": g, "guided_over_plain": g / p}


def recipe_overrides(s: dict[str, Any], per_epoch: int) -> dict[str, Any]:
    """``GuidedLoss`` arguments set on the command line (``--guidance-bound`` ...); else its defaults."""
    out: dict[str, Any] = {}
    if s.get("guidance_bound") is not None:
        out["guidance_bound"] = None if s["guidance_bound"] < 0 else s["guidance_bound"]
    if s.get("explain_ramp_epochs") is not None:
        out["explain_ramp"] = s["explain_ramp_epochs"] * per_epoch
    if s.get("counterfactual_weight") is not None:
        out["counterfactual_weight"] = s["counterfactual_weight"]
    if s.get("guidance_epsilon") is not None:
        out["relevance_fn"] = lrp_relevance(s["composite"], epsilon=s["guidance_epsilon"])
    return out


def run_arch(arch: str, s: dict[str, Any], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """(a), (b), (c) and the step-time ratio for one architecture and seed."""
    options = phantom_options(args, s)
    size = args.size or s.get("size", 64)
    scale = fixed_scale(s["n"], seed, size, options) if args.normalise == "fixed" else None
    count = args.test_cases or None
    confounded = phantom(True, s["n"], seed, size, scale=scale, options=options, test_cases=count)
    guiding = phantom(True, s["n"], seed, size, args.mask_kind, scale=scale, options=options)["train"]
    clean = phantom(False, s["n"], seed, size, scale=scale, options=options, test_cases=count)
    test = confounded["test"]  # identical to clean["test"]: token independent of the class
    assert torch.equal(test.x, clean["test"].x)
    tokens = test_tokens(s["n"], seed, size, options, count)
    # the relevance scores (token effect, masses) on the first --explained-cases test cases: means of
    # per-case figures, precise on a few hundred cases, where accuracy needs thousands (its error)
    k = min(args.explained_cases, len(test.label)) if args.explained_cases else len(test.label)
    explained = Batch(*(t[:k] for t in test[:4]), test.case_id[:k])
    pairs = token_pairs(s["n"], seed, size, scale, options, k)
    areas = token_areas(s["n"], seed, size, options, k)
    on, off = tokens[:k], ~tokens[:k]
    assert torch.equal(pairs[0][on], explained.x[on]) and torch.equal(pairs[1][off], explained.x[off])
    guiding = guiding._replace(mask=grow_mask(guiding.mask, args.mask_margin))
    config = TrainConfig(epochs=s["epochs"], batch_size=args.batch_size, lr=s["lr"], seed=seed)
    per_epoch = batches_per_epoch(len(guiding.label), args.batch_size)
    guided = GuidedLoss(
        s["weight"],
        criterion=GuidanceLoss(tau=1.0),
        composite=s["composite"],
        explain_every=s["explain_every"],
        reference_weight=s["reference_weight"],
        reference_every=s["reference_every"],
        explain_start=s["explain_start_epochs"] * per_epoch,
        **recipe_overrides(s, per_epoch),
    )
    row: dict[str, Any] = {
        "settings": s,
        "seed": seed,
        "phantom": asdict(options),
        "test_cases": len(test.label),
        "explained_cases": k,
    }
    models, right = {}, {}
    for name, train, loss_fn in (
        ("a_plain_confounded", confounded["train"], cross_entropy_loss),
        ("b_guided_confounded", guiding, guided.loss_fn()),
        ("c_plain_clean", clean["train"], cross_entropy_loss),
    ):
        t0 = time.perf_counter()
        model = build(arch, size, seed, s["arch_kwargs"])
        fit(model, train, config, loss_fn=loss_fn)
        models[name] = model
        right[name] = predict(model, test).argmax(dim=1) == test.label
        row[name] = {
            "test_accuracy": float(right[name].float().mean()),
            **token_split(model, test, tokens),
            **token_effect(model, pairs, areas),
            **explanation_scores(model, explained, areas=areas),
            "train_seconds": time.perf_counter() - t0,
        }
        print(f"{arch} seed {seed} {name}: {row[name]}", flush=True)
    a, b, c = (row[k]["test_accuracy"] for k in models)
    gap = c - a
    row["shortcut_gap_points"] = 100 * gap
    row["gap_recovered"] = (b - a) / gap if gap > 0 else float("nan")
    row["gap_recovered_se"] = recovery_standard_error(*right.values())
    if args.repeats > 0:
        batch = Batch(*(t[: args.batch_size] for t in guiding[:4]), guiding.case_id)
        # after training, guided.steps is past explain_start: the guided steps timed include the LRP term
        block = math.ceil(guided.explain_every_for(models["a_plain_confounded"]) / args.batch_size)
        timed = step_ratio(models["a_plain_confounded"], batch, guided.loss_fn(), args.repeats, block)
        row["step_time"] = timed
    return row


def recovery_standard_error(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> float:
    """Standard error of the recovered share ``(b - a) / (c - a)`` from the test set's finite size.

    ``a``, ``b``, ``c``: whether each model classified each test case right (the same cases). The
    delta method on the paired cases: the share's influence per case is
    ``((b_i - a_i) - r (c_i - a_i)) / (c - a)``; its standard deviation over sqrt(n) is the error the
    draw of test cases alone puts on one run's recovery (the models held fixed). With 400 cases and a
    gap of 20 points it is about 5 % of the gap: as wide as the recipes' differences (BENCHMARKS.md).
    """
    a, b, c = (t.double() for t in (a, b, c))
    gap = float((c - a).mean())
    if gap <= 0:
        return float("nan")
    share = float((b - a).mean()) / gap
    influence = ((b - a) - share * (c - a)) / gap
    return float(influence.std(unbiased=True) / math.sqrt(len(a)))


def phantom_options(args: argparse.Namespace, settings: dict[str, Any]) -> PhantomSpec:
    """The phantom template of the command line, in the architecture's dimensionality."""
    return replace(
        PLAIN,
        dims=settings.get("dims", 2),
        confound=args.confound,
        confound_size=args.confound_size,
        confound_position=args.confound_position,
        agreement=tuple(float(v) for v in args.agreement.split(",")),
    )


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of the accuracies, masses, gap and recovery (recovery of the mean accuracies)."""
    keys = ("a_plain_confounded", "b_guided_confounded", "c_plain_clean")
    out: dict[str, Any] = {
        k: {m: statistics.fmean(r[k][m] for r in rows) for m in ("test_accuracy", "mass_inside_mask")}
        for k in keys
    }
    a, b, c = (out[k]["test_accuracy"] for k in keys)
    out["shortcut_gap_points"] = 100 * (c - a)
    out["gap_recovered"] = (b - a) / (c - a) if c > a else float("nan")
    ratios = [r["step_time"]["guided_over_plain"] for r in rows if "step_time" in r]
    out["guided_over_plain"] = statistics.median(ratios) if ratios else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="cnn2d,vit2d")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (data, weights, batch order)")
    parser.add_argument("--size", type=int, default=None, help="edge length (default 64; 32 for cnn3d)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--normalise",
        choices=("fixed", "image"),
        default="fixed",
        help="fixed: one intensity map for the data set; image: each image z-scored (leaks the token)",
    )
    parser.add_argument("--mask-kind", choices=("head", "tumour"), default="head")
    parser.add_argument("--confound", choices=CONFOUNDS, default="corner-token", help="the shortcut")
    parser.add_argument("--confound-size", type=float, default=1.0, help="factor on its default size")
    parser.add_argument("--confound-position", default=None, help="as medlrp phantom --confound-position")
    parser.add_argument("--agreement", default="0.95", help="train/val agreement: one rate or one per class")
    parser.add_argument("--mask-margin", type=int, default=0, help="grow the guidance masks (pixels)")
    parser.add_argument("--guidance-weight", type=float, default=None, help="override every arch's")
    parser.add_argument("--cnn-composite", default=None, help="override the CNN's guidance composite")
    parser.add_argument("--explain-every", type=int, default=None, help="override every arch's")
    parser.add_argument("--explain-start-epochs", type=int, default=None, help="override every arch's")
    parser.add_argument("--reference-weight", type=float, default=None, help="override every arch's")
    parser.add_argument("--reference-every", type=int, default=None, help="override every arch's")
    parser.add_argument(
        "--guidance-bound", type=float, default=None, help="GuidedLoss(guidance_bound=); < 0: unbounded"
    )
    parser.add_argument("--explain-ramp-epochs", type=int, default=None, help="GuidedLoss(explain_ramp=)")
    parser.add_argument("--guidance-epsilon", type=float, default=None, help="epsilon of the guidance LRP")
    parser.add_argument(
        "--counterfactual-weight", type=float, default=None, help="GuidedLoss(counterfactual_weight=)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="override every arch's (all of a, b, c)")
    parser.add_argument(
        "--test-cases",
        type=int,
        default=2000,
        help="test cases every model's accuracy is measured on (0: the split's share of the cases, 20%%)",
    )
    parser.add_argument(
        "--explained-cases",
        type=int,
        default=400,
        help="the first test cases the relevance scores are measured on (0: all test cases)",
    )
    parser.add_argument("--repeats", type=int, default=10, help="step-time repeats (0: skip)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer cases and epochs: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "guided.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = {arch: dict(SETTINGS[arch]) for arch in args.archs.split(",")}
    # command-line overrides of every architecture's setting (setting name: argument)
    overrides = {
        "weight": args.guidance_weight,
        "explain_every": args.explain_every,
        "reference_weight": args.reference_weight,
        "reference_every": args.reference_every,
        "explain_start_epochs": args.explain_start_epochs,
        "guidance_bound": args.guidance_bound,
        "explain_ramp_epochs": args.explain_ramp_epochs,
        "guidance_epsilon": args.guidance_epsilon,
        "counterfactual_weight": args.counterfactual_weight,
        "epochs": args.epochs,
    }
    for s in settings.values():
        s.update({k: v for k, v in overrides.items() if v is not None})
        if args.quick:
            s["n"], s["epochs"] = 120, 2
            s["explain_start_epochs"] = min(s["explain_start_epochs"], 1)
    if args.cnn_composite is not None and "cnn2d" in settings:
        settings["cnn2d"]["composite"] = args.cnn_composite
    if args.quick:
        args.repeats, args.test_cases = min(args.repeats, 2), min(args.test_cases, 40)
        args.explained_cases = min(args.explained_cases, 20)
    t0 = time.perf_counter()
    info: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "results": {},
    }

    def save() -> None:
        info["total_seconds"] = time.perf_counter() - t0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(info, indent=2) + "\n")

    for arch, s in settings.items():
        rows = []
        for seed in (int(v) for v in args.seeds.split(",")):
            rows.append(run_arch(arch, s, seed, args))
            info["results"][arch] = {"runs": rows, "mean": summary(rows)}
            save()  # partial results survive an interrupted run

    keys = ("a_plain_confounded", "b_guided_confounded", "c_plain_clean")

    def abc(r: dict[str, Any], metric: str) -> str:
        return "/".join(f"{r[k].get(metric, math.nan):.2f}" for k in keys)

    print(f"\n{'arch':6} {'seed':>4} {'(a)':>6} {'(b)':>6} {'(c)':>6} {'gap':>5} {'recov':>6}  mass a/b/c")
    print(f"{'':12} corner a/b/c, token effect a/b/c, corner relevance a/b/c, agrees/disagrees a/b/c, step")
    for arch, res in info["results"].items():
        for r in res["runs"]:
            acc = " ".join(f"{r[k]['test_accuracy']:6.3f}" for k in keys)
            print(
                f"{arch:6} {r['seed']:>4} {acc} {r['shortcut_gap_points']:5.1f} {r['gap_recovered']:6.2f}  "
                f"{abc(r, 'mass_inside_mask')}"
            )
            split = " ".join(
                f"{r[k]['acc_token_agrees']:.2f}/{r[k]['acc_token_disagrees']:.2f}" for k in keys
            )
            step = r.get("step_time", {}).get("guided_over_plain", math.nan)
            print(
                f"{'':12} {abc(r, 'token_corner_share')}, {abc(r, 'token_effect')}, "
                f"{abc(r, 'token_corner_relevance')}, {split}, {step:.2f}x"
            )
        m = res["mean"]
        print(
            f"{arch:6} mean: (a) {m[keys[0]]['test_accuracy']:.3f} (b) {m[keys[1]]['test_accuracy']:.3f} "
            f"(c) {m[keys[2]]['test_accuracy']:.3f} gap {m['shortcut_gap_points']:.1f} points, "
            f"recovered {m['gap_recovered']:.2f}, step {m['guided_over_plain']:.2f}x"
        )
    print(f"wrote {args.out} ({info['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
