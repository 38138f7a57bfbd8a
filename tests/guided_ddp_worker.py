"""One guided training step on a fixed batch; run alone or under torchrun (see test_guided_ddp.py).

Writes the parameter gradients and the reported loss parts of rank 0 to the file given as argv[1];
argv[2] is ``GuidedLoss(guidance_bound=)`` (``none``: unbounded).
"""

import sys

import torch

from medlrp.data.folder import Batch
from medlrp.models.vit import vit2d
from medlrp.train.guided import GuidedLoss
from medlrp.train.guided_dist import guided_loss_fn, init_distributed


def main(out: str, bound: float | None) -> None:
    info = init_distributed()
    torch.manual_seed(0)
    model = vit2d(image_size=16, patch_size=4, dim=16, depth=1, heads=2, mlp_ratio=1.0).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1, 16, 16, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    mask = torch.zeros(5, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    has_mask = torch.tensor([True, True, False, True, True])
    batch = Batch(x, y, mask, has_mask, [str(i) for i in range(5)])
    crit = GuidedLoss(1.0, explain_every=2, reference_weight=1.0, reference_every=1, guidance_bound=bound)
    loss_fn = guided_loss_fn(crit, info)
    loss, parts = loss_fn(model, batch)
    loss.backward()
    if info is None or info.is_main:
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        torch.save({"grads": grads, "parts": {k: float(v) for k, v in parts.items()}}, out)


if __name__ == "__main__":
    main(sys.argv[1], None if sys.argv[2] == "none" else float(sys.argv[2]))
