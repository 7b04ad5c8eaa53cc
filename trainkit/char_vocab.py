"""Characters to ids for the character-level word encoders
(:mod:`trainkit.encoders`): 0 is padding, 1 is unknown, real characters from 2,
with optional begin- and end-of-word marker ids; saved and loaded as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["CharVocab"]

_FORMAT = "trainkit.CharVocab"
_FORMAT_VERSION = 2  # 2: word_markers


class CharVocab:
    """Maps characters to ids: 0 is padding, 1 is unknown, real characters from 2.

    With ``word_markers=True``, two more ids follow the characters' ids: every
    non-empty word is encoded as ``word_begin_id``, its characters,
    ``word_end_id``, as Kim et al.'s character model marks a word's edges (so a
    width-``w`` filter sees "starts with" and "ends with"). Being ids of their own,
    the markers never collide with a character of the text.

    Args:
        chars: distinct single characters, in id order (the first gets id 2).
        word_markers: add begin- and end-of-word ids around every non-empty word.

    Raises:
        ValueError: if an entry is not a single character or appears twice.

    Examples:
        >>> vocab = CharVocab.from_text("beer is awesome")
        >>> len(vocab)  # 9 characters + padding + unknown
        11
        >>> ids, lengths = vocab.encode(["beers", "is", "z"])
        >>> ids
        tensor([[3, 4, 4, 8, 9],
                [5, 9, 0, 0, 0],
                [1, 0, 0, 0, 0]])
        >>> lengths
        tensor([5, 2, 1])
        >>> marked = CharVocab.from_text("beer is awesome", word_markers=True)
        >>> marked.word_begin_id, marked.word_end_id, len(marked)
        (11, 12, 13)
        >>> marked.encode(["is", ""])
        (tensor([[11,  5,  9, 12],
                [ 0,  0,  0,  0]]), tensor([4, 0]))
    """

    padding_id = 0
    unknown_id = 1

    def __init__(self, chars: Iterable[str], *, word_markers: bool = False) -> None:
        chars = tuple(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"Invalid character: {c!r} (need a 1-character str)")
        if len(set(chars)) != len(chars):
            dupes = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"Duplicate characters: {dupes!r}")
        if not isinstance(word_markers, bool):
            raise TypeError(f"Invalid word_markers: {word_markers!r} (need a bool)")
        self._chars = chars
        self._ids = {c: i for i, c in enumerate(chars, start=2)}
        self._word_markers = word_markers

    @classmethod
    def from_text(cls, text: str, *, word_markers: bool = False) -> CharVocab:
        """Builds a vocabulary of the distinct non-whitespace characters of ``text``.

        Ids follow sorted code-point order, so the same text always gives the same ids.
        Whitespace separates words and is left out. ``word_markers`` as in the class.
        """
        return cls(
            sorted({c for c in text if not c.isspace()}), word_markers=word_markers
        )

    @property
    def chars(self) -> tuple[str, ...]:
        """The real characters in id order (id of ``chars[i]`` is ``i + 2``)."""
        return self._chars

    @property
    def word_markers(self) -> bool:
        """Whether :meth:`encode` marks the begin and end of every word."""
        return self._word_markers

    @property
    def word_begin_id(self) -> int | None:
        """The begin-of-word id (``len(chars) + 2``), or None without markers."""
        return len(self._chars) + 2 if self._word_markers else None

    @property
    def word_end_id(self) -> int | None:
        """The end-of-word id (``len(chars) + 3``), or None without markers."""
        return len(self._chars) + 3 if self._word_markers else None

    def __len__(self) -> int:
        """The ``n_chars`` the encoders take: characters + padding + unknown (+ the
        two word markers)."""
        return len(self._chars) + (4 if self._word_markers else 2)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CharVocab):
            return NotImplemented
        return (self._chars, self._word_markers) == (other._chars, other._word_markers)

    def __hash__(self) -> int:
        return hash((self._chars, self._word_markers))

    def __repr__(self) -> str:
        markers = ", word_markers=True" if self._word_markers else ""
        return f"CharVocab(n_chars={len(self)}{markers})"

    def encode(
        self, words: Sequence[str], *, max_len: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encodes words as right-padded id rows.

        Args:
            words: the words. An empty string gives an all-padding row (length 0),
                also with word markers (an empty word slot, as ``encode_batch``
                pads with).
            max_len: pad (and truncate longer words) to this many ids; by default,
                to the longest word. With word markers a truncated word keeps its
                begin marker and loses its end marker first.

        Returns:
            ``(ids, lengths)``: ids ``(N, L)`` int64, characters not in the vocabulary
            as ``unknown_id``, then ``padding_id``; lengths ``(N,)`` int64, counting
            the word markers.

        Raises:
            TypeError: if ``words`` is a single ``str`` (pass ``text.split()``).
            ValueError: if ``max_len`` < 1.
        """
        if isinstance(words, str):
            raise TypeError(
                "encode() takes a sequence of words, not a str; pass text.split()"
            )
        if max_len is not None and not max_len >= 1:
            raise ValueError(f"Invalid max_len: {max_len}")
        rows = [[self._ids.get(c, self.unknown_id) for c in w] for w in words]
        if self._word_markers:
            begin, end = self.word_begin_id, self.word_end_id
            rows = [[begin, *r, end] if r else r for r in rows]
        if max_len is None:
            max_len = max((len(r) for r in rows), default=0)
        ids = np.zeros((len(rows), max_len), dtype=np.int64)  # padding_id is 0
        lengths = np.zeros(len(rows), dtype=np.int64)
        for i, r in enumerate(rows):
            r = r[:max_len]
            ids[i, : len(r)] = r
            lengths[i] = len(r)
        return torch.from_numpy(ids), torch.from_numpy(lengths)

    def encode_batch(
        self, sentences: Sequence[Sequence[str]], *, max_len: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encodes sequences of words; shorter sequences are padded with empty words.

        Args:
            sentences: ``B`` sequences of words (e.g. ``[line.split() for line in
                lines]``).
            max_len: as in :meth:`encode`.

        Returns:
            ``(ids, lengths)``: ids ``(B, S, L)`` int64, lengths ``(B, S)`` int64, where
            ``S`` is the longest sequence; missing word slots are all padding, length 0.
        """
        if isinstance(sentences, str):
            raise TypeError("encode_batch() takes a sequence of word sequences")
        n_seq = max((len(s) for s in sentences), default=0)
        flat = [w for s in sentences for w in [*s, *[""] * (n_seq - len(s))]]
        ids, lengths = self.encode(flat, max_len=max_len)
        return ids.view(len(sentences), n_seq, -1), lengths.view(len(sentences), n_seq)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the vocabulary as UTF-8 JSON."""
        # version 1 (no markers) where it says all: older readers still load it
        payload = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION if self._word_markers else 1,
            "chars": list(self._chars),
        }
        if self._word_markers:
            payload["word_markers"] = True
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CharVocab:
        """Reads a vocabulary written by :meth:`save`.

        Raises:
            ValueError: if the file is not a CharVocab file or has a newer version.
        """
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"Not a {_FORMAT} file: {os.fspath(path)!r}")
        version = payload.get("version")
        if not isinstance(version, int) or version > _FORMAT_VERSION:
            raise ValueError(
                f"Unsupported {_FORMAT} version {version!r} in {os.fspath(path)!r} "
                f"(this trainkit reads up to {_FORMAT_VERSION})"
            )
        word_markers = payload.get("word_markers", False)
        if not isinstance(word_markers, bool):
            raise ValueError(
                f"Invalid word_markers {word_markers!r} in {os.fspath(path)!r} "
                "(need true or false)"
            )
        return cls(payload["chars"], word_markers=word_markers)
