"""Captions to token ids, with open_clip's tokenizer (CLIP's BPE vocabulary)."""

from __future__ import annotations

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


def tokenize_captions(captions: list[list[str]], context_length: int) -> Tensor:
    """N lists of captions -> (N, C, context_length) int64, C the longest list.

    Shorter lists are cycled to C entries, so a uniformly drawn column is a uniformly
    drawn caption of that image only when every list has C captions (the usual case).
    """
    count = max(len(c) for c in captions)
    flat = [c[i % len(c)] for c in captions for i in range(count)]
    return tokenize(flat, context_length).view(len(captions), count, context_length)
