"""Text classifiers: a word-CNN (Kim 2014) and a BiLSTM trained from scratch, and the pretrained option, a
frozen MiniLM-L6 sentence encoder with a linear head.

All three split into ``embed(ids)`` and ``classify(embedded, mask)`` so that embedding-space training (PGD /
FreeLB) and gradient word importance (A2T) work on the embedded sentence; ``forward(ids, mask)`` is the two
together. Padding positions are masked out (max-pooling sees -inf there, the LSTM packs), so a sentence's
logits do not depend on how long the other sentences of its batch are.

The MiniLM classifier tokenises for itself (word pieces; :func:`batch_inputs` returns which word each piece
belongs to, so that a gradient word importance is per word), its ``embed`` is the frozen word-piece embedding
table and ``classify`` runs the frozen transformer on the (possibly perturbed) embeddings, mean-pools and
normalises as sentence-transformers does, then applies the head: embedding-space PGD / FreeLB perturb the
token embeddings the transformer reads, and only the head trains. Its weights file holds the head alone.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

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


class MiniLMHead(nn.Module):
    """MiniLM-L6 (frozen, shared with the similarity constraint) + a linear head on its normalised mean-pooled
    sentence vector. ``remember(token_lists)`` keeps the sentence vectors of fixed sentences (the training set),
    so that training the head on them costs one encoder pass per sentence for all epochs; every other sentence
    (every attack query) goes through the encoder."""

    DIM = 384
    MAX_PIECES = 256  # MiniLM's max_seq_length

    def __init__(self, vocab_size: int = 0, classes: int = 2):
        super().__init__()
        from .encoder import minilm

        # not a submodule: the encoder is neither trained nor saved, and one copy serves the whole process
        self.__dict__["st"] = minilm("the pretrained text classifier (--arch minilm)")
        self.head = nn.Linear(self.DIM, classes)
        self.__dict__["_memory"] = {}

    @property
    def encoder(self) -> nn.Module:
        return self.st[0].auto_model

    @property
    def embedding(self) -> nn.Embedding:
        return self.encoder.embeddings.word_embeddings

    def pieces(self, token_lists: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Word-piece ids, their mask, and the word each piece belongs to (-1: [CLS], [SEP], padding)."""
        enc = self.st.tokenizer([list(t) for t in token_lists], is_split_into_words=True, padding=True,
                                truncation=True, max_length=self.MAX_PIECES, return_tensors="pt")
        words = torch.tensor([[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(token_lists))],
                             dtype=torch.long).reshape(enc["input_ids"].shape)
        return enc["input_ids"], enc["attention_mask"].bool(), words

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)

    def sentence_vectors(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(inputs_embeds=emb, attention_mask=mask.long()).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)

    def classify(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.sentence_vectors(emb, mask))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(ids), mask)

    @torch.no_grad()
    def _vectors(self, token_lists: Sequence[Sequence[str]], batch: int = 64) -> torch.Tensor:
        """Sentence vectors, in batches of similar length (less padding); a sentence's vector does not depend
        on its batch beyond float rounding (~1e-7)."""
        order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
        out = torch.empty(len(token_lists), self.DIM)
        for b in range(0, len(order), batch):
            idx = order[b:b + batch]
            ids, mask, _ = self.pieces([token_lists[i] for i in idx])
            out[idx] = self.sentence_vectors(self.embed(ids), mask)
        return out

    def remember(self, token_lists: Sequence[Sequence[str]]) -> None:
        """Keep the sentence vectors of these sentences (computed in a fixed order: the same every run)."""
        todo = list(dict.fromkeys(tuple(t) for t in token_lists if tuple(t) not in self._memory))
        for b in range(0, len(todo), 1024):
            for t, v in zip(todo[b:b + 1024], self._vectors(todo[b:b + 1024])):
                self._memory[t] = v

    def logits_tokens(self, token_lists: Sequence[Sequence[str]]) -> torch.Tensor:
        """The head on the sentence vectors: remembered ones looked up, the others encoded in one call."""
        keys = [tuple(t) for t in token_lists]
        new = list(dict.fromkeys(k for k in keys if k not in self._memory))
        fresh = dict(zip(new, self._vectors(new))) if new else {}
        return self.head(torch.stack([self._memory[k] if k in self._memory else fresh[k] for k in keys]))


ARCHS = {"cnn": (WordCNN, "word-CNN (Kim 2014): 64-d embeddings, widths 3/4/5 x 64 channels, max-pool"),
         "bilstm": (BiLSTM, "bidirectional LSTM, 64 units each way, max-pool over time"),
         "minilm": (MiniLMHead, "pretrained: frozen MiniLM-L6 sentence encoder (all-MiniLM-L6-v2) + linear head")}


def build(arch: str, vocab_size: int, **kwargs: Any) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown text model {arch!r}: choose one of {', '.join(ARCHS)}")
    return ARCHS[arch][0](vocab_size, **kwargs)


def batch_inputs(model: nn.Module, vocab: Any, token_lists: Sequence[Sequence[str]]
                 ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The model's input ids and mask for these sentences, padded to the longest, and for a word-piece model
    the word of each piece (None: one id per word)."""
    if isinstance(model, MiniLMHead):
        return model.pieces(token_lists)
    from .data import pad_batch

    return (*pad_batch(vocab, token_lists), None)


def per_word(grad: torch.Tensor, words: Optional[torch.Tensor], n_words: int) -> torch.Tensor:
    """(B, words) l2 norms of an embedding gradient (B, positions, dim): a word's pieces pooled together."""
    if words is None:
        return grad.norm(dim=-1)
    sq = grad.pow(2).sum(-1)
    out = torch.zeros(grad.shape[0], n_words + 1, dtype=sq.dtype)
    out.scatter_add_(1, torch.where(words < 0, n_words, words), sq)
    return out[:, :n_words].sqrt()
