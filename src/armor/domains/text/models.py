"""Text classifiers trained from scratch: a word-CNN (Kim 2014) and a BiLSTM.

Both split into ``embed(ids)`` and ``classify(embedded, mask)`` so that embedding-space training (PGD /
FreeLB) and gradient word importance (A2T) work on the embedded sentence; ``forward(ids, mask)`` is the two
together. Padding positions are masked out (max-pooling sees -inf there, the LSTM packs), so a sentence's
logits do not depend on how long the other sentences of its batch are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class WordCNN(nn.Module):
    def __init__(self, vocab_size: int, dim: int = 64, channels: int = 64, widths: tuple = (3, 4, 5),
                 classes: int = 2, dropout: float = 0.5):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(dim, channels, w, padding=w - 1) for w in widths)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(channels * len(widths), classes)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)

    def classify(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = (emb * mask.unsqueeze(-1)).transpose(1, 2)
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))  # (B, C, L + w - 1): output t sees inputs t-w+1..t
            w = conv.kernel_size[0]
            # an output is valid when its window overlaps a real token: t - w + 1 < length
            length = mask.sum(1, keepdim=True)
            t = torch.arange(h.shape[-1], device=h.device).unsqueeze(0)
            valid = (t - w + 1 < length).unsqueeze(1)
            pooled.append(h.masked_fill(~valid, float("-inf")).amax(-1))
        return self.head(self.drop(torch.cat(pooled, 1)))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(ids), mask)


class BiLSTM(nn.Module):
    def __init__(self, vocab_size: int, dim: int = 64, hidden: int = 64, classes: int = 2, dropout: float = 0.5):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, classes)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)

    def classify(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=emb.shape[1])
        out = out.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        return self.head(self.drop(out))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(ids), mask)


ARCHS = {"cnn": (WordCNN, "word-CNN (Kim 2014): 64-d embeddings, widths 3/4/5 x 64 channels, max-pool"),
         "bilstm": (BiLSTM, "bidirectional LSTM, 64 units each way, max-pool over time")}


def build(arch: str, vocab_size: int, **kwargs: Any) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown text model {arch!r}: choose one of {', '.join(ARCHS)}")
    return ARCHS[arch][0](vocab_size, **kwargs)
