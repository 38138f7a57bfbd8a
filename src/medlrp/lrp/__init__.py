"""Layer-wise Relevance Propagation: rules, composites, canonization and the engine."""

from __future__ import annotations

from typing import Any

import torch


class LRP:  # placeholder until the engine lands (issue 3)
    """Reusable LRP explainer (the engine replaces this placeholder)."""

    def __init__(self, model: torch.nn.Module, composite: str | None = None, **options: Any) -> None:
        raise NotImplementedError("the LRP engine is not built yet")
