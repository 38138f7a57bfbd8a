"""A recurrent classifier for signals (``lstm1d``): ``(N, leads, samples) -> (N, classes)``.

Average pooling over time (a factor ``pool``: ECGs sampled at 500 Hz carry their morphology at lower
rates too), an ``nn.LSTM`` over the pooled samples, the mean of its outputs over time, a linear head.
Every operation has an LRP rule (:mod:`medlrp.lrp.recurrent`: the LSTM's rules of Arras et al.).
"""

from __future__ import annotations

import torch
from torch import nn

from medlrp.registry import ARCHITECTURES


class LSTMNet(nn.Module):
    """Pool, LSTM, mean over time, linear head.

    Args:
        in_channels: Leads.
        num_classes: Output classes.
        hidden: LSTM hidden size (per direction).
        layers: Stacked LSTM layers.
        bidirectional: Read the signal in both directions.
        pool: Average-pooling factor over time before the LSTM (1: none).
    """

    def __init__(
        self,
        in_channels: int = 12,
        num_classes: int = 2,
        hidden: int = 32,
        layers: int = 1,
        bidirectional: bool = False,
        pool: int = 4,
    ) -> None:
        super().__init__()
        self.pool = nn.AvgPool1d(pool) if pool > 1 else nn.Identity()
        self.lstm = nn.LSTM(in_channels, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        out, _ = self.lstm(self.pool(x).transpose(1, 2))
        return self.head(out.mean(dim=1))


#: An LSTM classifier for signals (about 6k parameters at the defaults, 12 leads).
ARCHITECTURES.add("lstm1d", LSTMNet)
