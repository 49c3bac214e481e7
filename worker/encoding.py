"""Prompt encoding written by the project, A1111-style.

* CLIP skip applied the same way to prompt and negative prompt (A1111's
  convention: 1 = last layer, 2 = penultimate layer plus the final layer norm).
  diffusers' own ``clip_skip`` skips the negative prompt and crashes with
  transformers 5, so it is never used.
* Prompts of any length: 75-token chunks, each wrapped in its own start and end
  tokens, encoded separately and concatenated along the sequence axis. A chunk
  that would split a phrase breaks at a comma within its last 20 tokens.
* Emphasis: ``(word:1.3)``, ``(word)``, ``[word]`` scale the token embeddings,
  and the chunk's mean is restored afterwards, as A1111 does, except that the
  correction is bounded (:func:`restore_mean`): weights whose scaled mean is near
  zero never blow the embedding up (A1111 divides by it and draws black images).
* ``BREAK`` (the word, in capitals) ends the current chunk: what follows starts
  a new one, as in A1111.
* Textual-inversion embeddings: where a loaded embedding's name appears as a
  word, its vectors' token ids stand in for it (other words are tokenized as
  usual, so an unknown name stays plain text).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ponybot.networks import split_embeddings
from ponybot.prompt_syntax import BREAK, parse_emphasis

CHUNK_TOKENS = 75
COMMA_LOOKBACK = 20
#: The mean correction after emphasis is kept within [1 / MAX_MEAN_RATIO, MAX_MEAN_RATIO].
MAX_MEAN_RATIO = 4.0


def restore_mean(weighted: torch.Tensor, original_mean: torch.Tensor) -> torch.Tensor:
    """``weighted`` rescaled so its mean is ``original_mean`` again, as A1111 does, within bounds.

    A1111 multiplies by ``original_mean / weighted.mean()``; when the weights make that mean
    (near) zero the factor is huge or infinite, the embedding explodes and the images come out
    black. Here a ratio that is not finite or not positive is not applied at all, and any other
    is clamped to ``[1/MAX_MEAN_RATIO, MAX_MEAN_RATIO]``; ordinary prompts (ratios near 1) are unchanged.
    """
    ratio = float(original_mean) / float(weighted.mean()) if float(weighted.mean()) != 0.0 else float("inf")
    if not math.isfinite(ratio) or ratio <= 0:
        return weighted
    return weighted * min(max(ratio, 1 / MAX_MEAN_RATIO), MAX_MEAN_RATIO)


@dataclass(frozen=True)
class TokenChunk:
    ids: list[int]
    weights: list[float]


class PromptEncoder:
    """Turns prompts into the ``prompt_embeds`` a diffusers UNet takes."""

    def __init__(self, tokenizer: Any, text_encoder: Any, embeddings: dict[str, list[int]] | None = None) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        #: embedding name -> its token ids (rows added to the text encoder's table)
        self.embeddings: dict[str, list[int]] = {} if embeddings is None else embeddings
        self.bos = int(tokenizer.bos_token_id)
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos)
        self.comma = tokenizer.convert_tokens_to_ids(",</w>")
        # transformers 5 dropped the ``text_model`` wrapper; 4.x still has it.
        self.final_layer_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm

    def chunks(self, prompt: str) -> list[TokenChunk]:
        """Tokenize with emphasis into chunks of at most 75 tokens (never truncated); BREAK starts a new one."""
        segments: list[tuple[list[int], list[float]]] = [([], [])]
        for text, weight in parse_emphasis(prompt):
            if (text, weight) == BREAK:
                segments.append(([], []))
            elif text:
                tokens = self.tokenize(text)
                segments[-1][0].extend(tokens)
                segments[-1][1].extend([weight] * len(tokens))
        chunks = [chunk for ids, weights in segments if ids for chunk in self._split(ids, weights)]
        return chunks or [TokenChunk([], [])]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of plain text, with the ids of any loaded embedding named in it."""
        ids: list[int] = []
        for piece, embedding in split_embeddings(text, list(self.embeddings)):
            if embedding is not None:
                ids.extend(self.embeddings[embedding])
            else:
                ids.extend(self.tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False).input_ids)
        return ids

    def _split(self, ids: list[int], weights: list[float]) -> list[TokenChunk]:
        """At most 75 tokens a chunk, cut after a comma within a chunk's last 20 tokens where there is one."""
        chunks: list[TokenChunk] = []
        while len(ids) > CHUNK_TOKENS:
            cut = CHUNK_TOKENS
            window = ids[CHUNK_TOKENS - COMMA_LOOKBACK : CHUNK_TOKENS]
            if self.comma in window:
                cut = CHUNK_TOKENS - COMMA_LOOKBACK + max(i for i, t in enumerate(window) if t == self.comma) + 1
            chunks.append(TokenChunk(ids[:cut], weights[:cut]))
            ids, weights = ids[cut:], weights[cut:]
        chunks.append(TokenChunk(ids, weights))
        return chunks

    def encode(self, prompt: str, clip_skip: int) -> torch.Tensor:
        """``(1, 77 * chunks, dim)`` embeddings of one prompt."""
        return self.encode_chunks(self.chunks(prompt), clip_skip)

    def encode_chunks(self, chunks: list[TokenChunk], clip_skip: int, *, min_chunks: int = 1) -> torch.Tensor:
        """Encode token chunks, padded with empty chunks to ``min_chunks``."""
        return self.encode_many([chunks], clip_skip, min_chunks=min_chunks)[0]

    @torch.no_grad()
    def encode_many(self, prompts: list[list[TokenChunk]], clip_skip: int, *, min_chunks: int = 1
                    ) -> list[torch.Tensor]:
        """Several prompts' chunks through CLIP in one pass, each padded to the same number of chunks.

        Returns one ``(1, 77 * chunks, dim)`` tensor per prompt. Every row of the batch is a chunk
        encoded on its own (CLIP attends within a row), so the result is each prompt's alone.
        """
        count = max([min_chunks, *(len(chunks) for chunks in prompts)])
        padded = [chunks + [TokenChunk([], [])] * (count - len(chunks)) for chunks in prompts]
        flat = [chunk for chunks in padded for chunk in chunks]
        rows = [[self.bos, *c.ids, self.eos] + [self.pad] * (CHUNK_TOKENS - len(c.ids)) for c in flat]
        device = self.text_encoder.device
        input_ids = torch.tensor(rows, dtype=torch.long, device=device)
        hidden: torch.Tensor
        if clip_skip == 1:
            hidden = self.text_encoder(input_ids).last_hidden_state
        else:
            states = self.text_encoder(input_ids, output_hidden_states=True).hidden_states
            hidden = self.final_layer_norm(states[-clip_skip])
        for row, chunk in enumerate(flat):
            if any(weight != 1.0 for weight in chunk.weights):
                scale = torch.tensor([1.0, *chunk.weights, 1.0] + [1.0] * (CHUNK_TOKENS - len(chunk.ids)))
                original_mean = hidden[row].mean()
                hidden[row] = hidden[row] * scale.to(hidden)[:, None]
                hidden[row] = restore_mean(hidden[row], original_mean)
        return [part.reshape(1, -1, hidden.shape[-1]) for part in hidden.split(count)]  # type: ignore[no-untyped-call, unused-ignore]

    def encode_pair(self, prompt: str, negative: str, clip_skip: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt and negative prompt, the same way, to the same length (for CFG) and in one pass."""
        positive, negative_embeds = self.encode_many([self.chunks(prompt), self.chunks(negative)], clip_skip)
        return positive, negative_embeds
