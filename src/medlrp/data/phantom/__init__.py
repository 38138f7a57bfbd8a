"""Synthetic medical images with known lesions: glioma MRI (2D/3D) and chest X-ray phantoms.

``write_phantom(out, PhantomSpec(kind="glioma", dims=2, n=400, confounded=False, seed=0))`` writes a
dataset folder (see :mod:`medlrp.data.phantom.writer`); ``glioma_case`` / ``chest_case`` draw single
cases in memory.
"""

from medlrp.data.phantom.case import PhantomCase
from medlrp.data.phantom.chest import chest_case
from medlrp.data.phantom.glioma import glioma_case
from medlrp.data.phantom.writer import KINDS, PhantomSpec, dataset_info, iter_cases, write_phantom

__all__ = [
    "KINDS",
    "PhantomCase",
    "PhantomSpec",
    "chest_case",
    "dataset_info",
    "glioma_case",
    "iter_cases",
    "write_phantom",
]
