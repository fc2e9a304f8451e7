"""Captions to token ids, with open_clip's tokenizer (CLIP's BPE vocabulary)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from torch import Tensor


@lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize(texts: list[str], context_length: int) -> Tensor:
    """(N,) strings -> (N, context_length) int64: <start> tokens <end> 0-padding.

    Longer texts are truncated (their last token is still <end>, which the text tower
    pools at).
    """
    return _tokenizer()(texts, context_length=context_length)


def tokenize_captions(captions: list[list[str]], tokenize: Callable[[list[str]], Tensor]) -> Tensor:
    """N lists of captions -> (N, C, L) int64 token ids, C the longest list, with a text
    method's tokenizer (strings -> (n, L)).

    Shorter lists are cycled to C entries, so a uniformly drawn column is a uniformly
    drawn caption of that image only when every list has C captions (the usual case).
    """
    count = max(len(c) for c in captions)
    flat = [c[i % len(c)] for c in captions for i in range(count)]
    tokens = tokenize(flat)  # (N * C, L)
    return tokens.view(len(captions), count, tokens.shape[-1])
