"""Measuring explanations: faithfulness, localisation, complexity, randomisation, conservation.

Tensors in, one value or curve per sample out; 2D images and 3D volumes alike. ``relevance`` and
``mask`` have the input's shape, or a channel dimension of 1 (CAM maps are ``(N, 1, *spatial)``)::

    from medlrp import metrics
    curves = metrics.pixel_flipping(model, x, e.relevance, e.target, features_per_step=64)
    metrics.aopc(curves)                                  # (N,)
    metrics.relevance_mass_accuracy(e.relevance, mask)    # (N,)

Segmentation (``e = medlrp.explain(unet, x, target=1, region="predicted")``)::

    metrics.region_relevance_share(e.relevance, e.region, margin=3)          # (N,)
    metrics.pixel_flipping(unet, x, e.relevance, 1, region=e.region)         # the region's logit sum

Each module's docstring gives the exact Quantus 0.6.0 settings that compute the same numbers.
"""

from medlrp.metrics.baselines import blur, gaussian_blur, make_baseline, noise
from medlrp.metrics.complexity import entropy, sparseness
from medlrp.metrics.conservation import conservation_error
from medlrp.metrics.correlation import faithfulness_correlation
from medlrp.metrics.curves import aopc, area_between, auc
from medlrp.metrics.localisation import (
    attribution_localisation,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from medlrp.metrics.perturbation import deletion, insertion, pixel_flipping, region_perturbation
from medlrp.metrics.randomisation import randomization_check
from medlrp.metrics.segmentation import region_relevance_share
from medlrp.metrics.similarity import pearson, spearman, ssim

__all__ = [
    "aopc",
    "area_between",
    "attribution_localisation",
    "auc",
    "blur",
    "conservation_error",
    "deletion",
    "entropy",
    "faithfulness_correlation",
    "gaussian_blur",
    "insertion",
    "make_baseline",
    "noise",
    "pearson",
    "pixel_flipping",
    "pointing_game",
    "randomization_check",
    "region_perturbation",
    "region_relevance_share",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "sparseness",
    "spearman",
    "ssim",
]
