"""Tokenised GLUE examples and the batches of an epoch: :class:`Encoded` (dynamic right padding) and
:func:`make_batches` (plain shuffled or length-grouped), for :mod:`tokenuni.finetune.train`."""
from __future__ import annotations

import numpy as np


class Encoded:
    """Tokenised examples (no padding): ``input_ids``, optional ``token_type_ids``, ``special_tokens_mask``
    (1 = a special token such as [CLS] / [SEP]), ``lengths``, ``labels``."""

    def __init__(self, tokenizer, texts_a, texts_b, labels, max_length: int):
        if texts_b is not None and len(texts_b) != len(texts_a):
            raise ValueError(f"{len(texts_a)} first sentences but {len(texts_b)} second sentences")
        if labels is not None and len(labels) != len(texts_a):
            raise ValueError(f"{len(texts_a)} examples but {len(labels)} labels")
        if not len(texts_a):
            raise ValueError("no examples")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token (tokenuni.embed.load_model sets one)")
        args = (list(texts_a),) if texts_b is None else (list(texts_a), list(texts_b))
        features = tokenizer(*args, truncation=True, max_length=max_length, return_special_tokens_mask=True)
        self.input_ids: list[list[int]] = features["input_ids"]
        self.token_type_ids: list[list[int]] | None = features.get("token_type_ids")
        self.special_tokens_mask: list[list[int]] | None = features.get("special_tokens_mask")
        self.lengths = np.asarray([len(ids) for ids in self.input_ids], dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels)
        self.pad_id = int(tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, index, device) -> dict:
        """Right-padded tensors of rows ``index`` on ``device``: model inputs, plus ``labels`` when known."""
        import torch

        index = [int(i) for i in index]
        width = int(self.lengths[index].max())
        ids = torch.full((len(index), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        types = torch.zeros((len(index), width), dtype=torch.long) if self.token_type_ids is not None else None
        for row, i in enumerate(index):
            n = int(self.lengths[i])
            ids[row, :n] = torch.as_tensor(self.input_ids[i])
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = torch.as_tensor(self.token_type_ids[i])
        out = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if types is not None:
            out["token_type_ids"] = types.to(device)
        if self.labels is not None:
            out["labels"] = torch.as_tensor(self.labels[index]).to(device)
        return out


def make_batches(lengths, batch_size: int, rng: np.random.Generator, group_by_length: bool = False,
                 mega: int = 50) -> list[np.ndarray]:
    """Indices of one epoch in batches of ``batch_size`` (the last may be short).

    Plain: a random permutation cut into batches. Length-grouped: the permutation cut into chunks of
    ``mega`` batches, each chunk sorted by length (longest first) and cut, then the batches shuffled.
    """
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    for start in range(0, len(order), batch_size * mega):
        chunk = order[start:start + batch_size * mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}
