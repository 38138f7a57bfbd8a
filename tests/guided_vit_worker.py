"""The tiny ViT trained plain, with the LRP term and with both guided terms; prints one JSON line.

``python guided_vit_worker.py [plain] [lrp] [both]`` (default: all three). Run by
``test_guided_training.py`` in a subprocess under fixed CPU kernels (see ``FIXED_KERNELS`` there), and
by ``test_guided_recipe.py`` under each of ``ATEN_CPU_CAPABILITY=default``, ``avx2`` and the machine's
own kernels (with the guidance recipe's defaults the outcome must not depend on them).
"""

import json
import sys

import torch

from medlrp.models.vit import vit2d
from medlrp.train.guided import GUIDANCE_BOUND, GuidedLoss, lrp_relevance


def main() -> None:
    g = torch.Generator().manual_seed(0)
    n, size = 32, 16
    y = torch.arange(n) % 2
    sign = (y.float() * 2 - 1)[:, None, None, None]
    x = 0.5 * torch.randn(n, 1, size, size, generator=g)
    x[:, :, 6:10, 6:10] += 0.6 * sign  # weak signal inside the mask
    x[:, :, 0:3, 0:3] += 3.0 * sign  # strong token outside it
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, 4:12, 4:12] = 1
    shuffled = x.clone()
    shuffled[:, :, 0:3, 0:3] = x[:, :, 0:3, 0:3].flip(0)  # every token now names the other class

    def train(weight: float, reference: float, bound: float | None) -> dict[str, float]:
        torch.manual_seed(0)
        model = vit2d(image_size=size, patch_size=4, dim=16, depth=1, heads=2, mlp_ratio=1.0)
        crit = GuidedLoss(
            weight,
            explain_every=1,
            reference_weight=reference,
            reference_every=1,
            explain_start=20,
            guidance_bound=bound,
        )
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(60):
            loss, _ = crit(model.train(), x, y, mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        r, out = lrp_relevance(None)(model, x, y, crit.start)
        r = r.detach().abs()
        with torch.no_grad():
            read = float((model(shuffled).argmax(1) == y).float().mean())
        return {
            "outside": float((r * (1 - mask)).sum() / r.sum()),
            "accuracy": float((out.argmax(1) == y).float().mean()),
            "shuffled": read,
        }

    # the LRP term alone, unbounded (bounded relative to a cross-entropy that the token drives to ~0,
    # it moves nothing); both terms with the recipe's defaults (bounded)
    runs = {"plain": (0.0, 0.0, None), "lrp": (0.3, 0.0, None), "both": (0.3, 3.0, GUIDANCE_BOUND)}
    names = sys.argv[1:] or list(runs)
    print(json.dumps({name: train(*runs[name]) for name in names}))


if __name__ == "__main__":
    main()
