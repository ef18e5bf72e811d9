"""Sample sequence networks: a grey image read as a sequence of its rows.

A transformer classifier (a linear embedding of each row, a learned positional embedding,
transformer encoder layers, the mean over rows, a linear head) and an LSTM classifier (the rows in
order, a head on the last step's output). On the chip the embeddings, the attention projections,
the feed-forward layers and the LSTM's gate matrices are crossbar layers; attention scores,
softmax, layer norm and the gates are digital (see ``rramc.frontend.sequence_modules``).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class RowTransformer(nn.Module):
    """Rows as tokens: embedding, positions, ``layers`` pre-norm encoder layers, mean over rows, head."""

    def __init__(self, rows: int, width: int, dim: int = 32, heads: int = 4, layers: int = 1, feed_forward: int = 64,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.image_shape = (1, rows, width)  # what the training script checks a data set against
        self.embed = nn.Linear(width, dim)
        self.position = nn.Parameter(torch.zeros(rows, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, feed_forward, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        tokens = self.embed(x.flatten(1, 2)) + self.position  # [batch, 1, rows, width] → [batch, rows, dim]
        return self.head(self.encoder(tokens).mean(1))


class RowLSTM(nn.Module):
    """Rows in order through an LSTM; a linear head on the last step's output."""

    def __init__(self, rows: int, width: int, hidden: int = 32, layers: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.image_shape = (1, rows, width)  # what the training script checks a data set against
        self.lstm = nn.LSTM(width, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        out, _ = self.lstm(x.flatten(1, 2))
        return self.head(out[:, -1])


def digits_transformer() -> RowTransformer:
    """8×8 digits as 8 tokens of 8 pixels: one encoder layer of width 32, 4 heads."""
    return RowTransformer(8, 8)


def digits_lstm() -> RowLSTM:
    """8×8 digits as 8 steps of 8 pixels: an LSTM of 32 hidden units."""
    return RowLSTM(8, 8)


def fashion_transformer() -> RowTransformer:
    """28×28 images as 28 tokens of 28 pixels: two encoder layers of width 48, 4 heads."""
    return RowTransformer(28, 28, dim=48, layers=2, feed_forward=96)


def fashion_lstm() -> RowLSTM:
    """28×28 images as 28 steps of 28 pixels: an LSTM of 64 hidden units."""
    return RowLSTM(28, 28, hidden=64)
