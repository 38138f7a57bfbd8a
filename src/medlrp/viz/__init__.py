"""Pictures of relevance: diverging colours centred on zero, oriented slices, overlays."""

from medlrp.viz.colors import blend, diverging_rgba, relevance_peak, symmetric_limit
from medlrp.viz.orient import oriented_mip, oriented_slice, plane_name, slice_axis
from medlrp.viz.overlay import overlay_png, write_overlay

__all__ = [
    "blend",
    "diverging_rgba",
    "oriented_mip",
    "oriented_slice",
    "overlay_png",
    "plane_name",
    "relevance_peak",
    "slice_axis",
    "symmetric_limit",
    "write_overlay",
]
