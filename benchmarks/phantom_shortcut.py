"""Does plain training take the phantom's shortcut?

Trains the same architecture with the same settings on an unconfounded phantom and on a confounded one
(corner token agrees with the class in 95% of train/val cases) and scores both on the same, unconfounded
test split. Also splits the confounded model's test accuracy by whether the token agrees with the class.

    .venv/bin/python benchmarks/phantom_shortcut.py [--kind glioma] [--seeds 0,1] [--epochs 8] [--n 400]

Prints a table and writes benchmarks/results/phantom_shortcut_<kind><dims>d.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from medlrp.data.phantom import PhantomSpec, iter_cases, write_phantom
from medlrp.data.phantom.writer import KINDS
from medlrp.train import TrainConfig, load_splits, predict, train_on_splits


def run(kind: str, dims: int, n: int, seed: int, epochs: int, arch: str | None, root: Path) -> dict:
    row: dict = {"kind": kind, "dims": dims, "n": n, "seed": seed, "epochs": epochs}
    token_class = KINDS[kind][2]
    for confounded in (False, True):
        spec = PhantomSpec(kind=kind, dims=dims, n=n, seed=seed, confounded=confounded)
        folder = root / f"{kind}{dims}d-s{seed}-{'conf' if confounded else 'plain'}"
        write_phantom(folder, spec, overwrite=True)
        splits = load_splits(folder)
        start = time.process_time()
        result = train_on_splits(splits, None, arch, TrainConfig(epochs=epochs, batch_size=16, seed=seed))
        name = "confounded" if confounded else "plain"
        row[f"{name}_test"] = result.accuracy["test"]
        row[f"{name}_val"] = result.accuracy["val"]
        row[f"{name}_cpu_s"] = time.process_time() - start
        if confounded:
            # Test cases in file order: the folder dataset sorts by class, then case id.
            tokens = {cid: case.token for split, cid, case in iter_cases(spec) if split == "test"}
            assert splits.test is not None
            pred = predict(result.model, splits.test).argmax(1)
            correct = (pred == splits.test.label).tolist()
            labels = splits.test.label.tolist()
            agree = [
                tokens[c] == (lbl == token_class) for c, lbl in zip(splits.test.case_id, labels, strict=True)
            ]
            hits = [c for c, a in zip(correct, agree, strict=True) if a]
            misses = [c for c, a in zip(correct, agree, strict=True) if not a]
            row["confounded_test_token_agrees"] = sum(hits) / max(1, len(hits))
            row["confounded_test_token_disagrees"] = sum(misses) / max(1, len(misses))
    row["drop_points"] = 100 * (row["plain_test"] - row["confounded_test"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="glioma", choices=list(KINDS))
    parser.add_argument("--dims", type=int, default=2)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--arch", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            rows.append(run(args.kind, args.dims, args.n, seed, args.epochs, args.arch, Path(tmp)))
            r = rows[-1]
            print(
                f"seed {seed}: plain test {r['plain_test']:.3f}  confounded test {r['confounded_test']:.3f}  "
                f"drop {r['drop_points']:.1f} points  (confounded model: token agrees "
                f"{r['confounded_test_token_agrees']:.3f}, "
                f"disagrees {r['confounded_test_token_disagrees']:.3f}; "
                f"cpu {r['plain_cpu_s']:.0f}+{r['confounded_cpu_s']:.0f} s)",
                flush=True,
            )
    print(
        "\n| seed | plain test acc | confounded test acc | drop (points) | token agrees | token disagrees |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['plain_test']:.3f} | {r['confounded_test']:.3f} | {r['drop_points']:.1f} | "
            f"{r['confounded_test_token_agrees']:.3f} | {r['confounded_test_token_disagrees']:.3f} |"
        )
    out = Path(__file__).parent / "results" / f"phantom_shortcut_{args.kind}{args.dims}d.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "args": vars(args),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
