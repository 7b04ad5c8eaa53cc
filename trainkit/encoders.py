"""Character-level word encoders: a function of a word's characters, not a table.

A word-embedding table of 1M words x 300 dims needs about 1 GB and knows nothing of
words it has not seen. The encoders here map each word's characters to one vector, so
they need few parameters and also embed unseen words ("beers", "awesomeness").

- :class:`CharVocab` (:mod:`trainkit.char_vocab`, re-exported here) maps
  characters to ids (0 = padding, 1 = unknown), optionally with begin- and
  end-of-word marker ids around each word.
- :class:`CharCNNEncoder` is Kim et al.'s convolutional encoder (max over time, then
  highway layers).
- :class:`CharGRUEncoder` runs one packed GRU call over all words of a batch and keeps
  each word's last real state.

Both encoders take ``ids`` alone (lengths follow from the trailing padding) or
``(ids, lengths)``, take ``(N, L)`` or ``(B, S, L)`` input, give a zero vector for an
all-padding row (an empty word slot), and with ``dedup=True`` encode each distinct word
of a batch once and scatter the result back.

Shape letters: ``N`` words, ``L`` characters per word (the padded ``max_len``), ``B``
batch, ``S`` words per sequence, ``C`` character embedding dim, ``D`` output dim
(``out_dim``), ``F`` filters of one width, ``H`` GRU hidden size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from trainkit import _validate
from trainkit.char_vocab import CharVocab

__all__ = ["CharCNNEncoder", "CharGRUEncoder", "CharVocab"]

# Kim et al. (2016), "small" model: char_dim 15, widths 1-6 with 25 * w filters.
_KIM_SMALL_FILTERS = ((1, 25), (2, 50), (3, 75), (4, 100), (5, 125), (6, 150))
# Transform-gate bias at init: sigmoid(-2) = 0.12, so the first evaluations mostly
# carry the input through (Kim et al. 2016; Srivastava et al. 2015 use -1 to -3).
_HIGHWAY_GATE_BIAS = -2.0


def _check_embedding_args(n_chars: int, char_dim: int, padding_idx: int) -> None:
    if not n_chars >= 1:
        raise ValueError(f"Invalid n_chars: {n_chars}")
    if not char_dim >= 1:
        raise ValueError(f"Invalid char_dim: {char_dim}")
    if not 0 <= padding_idx < n_chars:
        raise ValueError(f"Invalid padding_idx: {padding_idx} (n_chars={n_chars})")


class _CharWordEncoder(nn.Module):
    """Shared front end: input shapes, lengths, empty words, dedup.

    Subclasses set ``embedding``, ``padding_idx``, ``out_dim`` and implement
    ``_encode(ids (N, L), lengths (N,) on the CPU, all >= 1, L = max) -> (N, D)``.
    """

    embedding: nn.Embedding
    padding_idx: int
    out_dim: int
    dedup: bool

    def _encode(self, ids: Tensor, lengths: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(
        self, ids: Tensor, lengths: Tensor | Sequence[int] | None = None
    ) -> Tensor:
        """Encodes each row of character ids to one vector.

        Args:
            ids: character ids in ``[0, n_chars)``, right-padded with
                ``padding_idx``.
            lengths: characters per word; by default, the non-padding ids of each
                row. Ids past a word's length are ignored (but must be valid ids).

        Returns:
            One vector per word; zeros for a word of length 0.

        Raises:
            TypeError: if ``ids`` is not an int64/int32 tensor, or ``lengths`` not
                integers (bool and floating-point ones are refused).
            ValueError: on a bad shape, an id outside ``[0, n_chars)``, a length
                outside ``[0, L]``, or (without ``lengths``) a padding id before a
                word's last character.

        Shape:
            - ids: ``(N, L)`` or ``(B, S, L)``, int64 or int32.
            - lengths: ``(N,)`` or ``(B, S)``, integer.
            - output: ``(N, D)`` or ``(B, S, D)``, float.
        """
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32):
            got = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
            raise TypeError(f"ids must be an int64 or int32 tensor, got {got}")
        if ids.dim() not in (2, 3):
            raise ValueError(f"ids must be (N, L) or (B, S, L), got {tuple(ids.shape)}")
        lead_shape, L = ids.shape[:-1], ids.shape[-1]
        N = lead_shape.numel()
        ids = ids.reshape(N, L)  # (N, L)
        positions = torch.arange(L, device=ids.device)
        # The id range, the padding check and the lengths reach the host in one copy:
        # on CUDA each read of a device value waits for the device (one sync).
        if ids.numel():
            id_range = torch.stack(torch.aminmax(ids)).long()  # (2,): min, max
        else:
            id_range = ids.new_zeros(2, dtype=torch.int64)
        if lengths is None:
            real = ids != self.padding_idx  # (N, L)
            lengths_dev = real.sum(dim=1)  # (N,)
            misplaced = (real != (positions < lengths_dev[:, None])).any()  # ()
            host = torch.cat([id_range, misplaced.long()[None], lengths_dev]).cpu()
            lo, hi, n_misplaced = host[:3].tolist()
            lengths_cpu = host[3:]  # (N,)
        else:
            lengths = torch.as_tensor(lengths)
            _validate.check_integer_tensor("lengths", lengths)
            if lengths.shape != lead_shape:
                raise ValueError(
                    f"lengths must have shape {tuple(lead_shape)}, got "
                    f"{tuple(lengths.shape)}"
                )
            lengths = lengths.reshape(N)
            if lengths.device == ids.device:
                host = torch.cat([id_range, lengths.long()]).cpu()
                id_range, lengths_cpu = host[:2], host[2:]
                lengths_dev = lengths
            else:
                lengths_cpu = lengths.to("cpu", torch.int64)
                lengths_dev = None  # copied to ids' device only if dedup needs it
            lo, hi = id_range.tolist()
            n_misplaced = 0
        n_chars = self.embedding.num_embeddings
        if lo < 0 or hi >= n_chars:
            raise ValueError(
                f"Invalid character id {lo if lo < 0 else hi}: ids must lie in "
                f"[0, {n_chars - 1}] for n_chars={n_chars}"
            )
        if n_misplaced:
            raise ValueError(
                f"ids has padding id {self.padding_idx} before a word's last "
                "character; pad on the right or pass lengths"
            )
        if lengths is not None:
            if N and not (0 <= lengths_cpu.min() and lengths_cpu.max() <= L):
                raise ValueError(
                    f"lengths must lie in [0, {L}], got "
                    f"[{int(lengths_cpu.min())}, {int(lengths_cpu.max())}]"
                )
            if self.dedup:
                if lengths_dev is None:
                    lengths_dev = lengths_cpu.to(ids.device)
                # Ids past a word's end are ignored, so blank them to compare words.
                past_end = positions >= lengths_dev[:, None]  # (N, L)
                ids = ids.masked_fill(past_end, self.padding_idx)

        if self.dedup and N > 1:
            # One row per distinct (characters, length); lengths join the key because
            # explicit lengths may end a word early.
            key = torch.cat([ids, lengths_dev.to(ids)[:, None]], dim=1)  # (N, L + 1)
            uniq, inverse = torch.unique(key, dim=0, return_inverse=True)  # (U, L+1)
            out = self._encode_rows(uniq[:, :-1], uniq[:, -1].to("cpu", torch.int64))
            out = out.index_select(0, inverse)  # (N, D)
        else:
            out = self._encode_rows(ids, lengths_cpu)  # (N, D)
        return out.reshape(*lead_shape, self.out_dim)

    def _encode_rows(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Runs ``_encode`` on the non-empty rows only; empty rows get zeros."""
        N = ids.shape[0]
        nonempty = lengths > 0  # (N,)
        n_real = int(nonempty.sum())
        if n_real == 0:
            return self.embedding.weight.new_zeros(N, self.out_dim)
        max_len = int(lengths.max())
        if n_real == N:
            return self._encode(ids[:, :max_len], lengths)
        # pack_padded_sequence rejects zero lengths (pytorch#4582), and a zero-length
        # word has no window to max over, so such rows skip the encoder.
        rows = nonempty.nonzero().squeeze(1)  # (n_real,)
        rows_dev = rows.to(ids.device)
        enc = self._encode(ids[rows_dev, :max_len], lengths[rows])  # (n_real, D)
        return enc.new_zeros(N, self.out_dim).index_copy(0, rows_dev, enc)


class _Highway(nn.Module):
    """Highway layers: ``y = t * relu(W_H x + b_H) + (1 - t) * x``.

    The transform gate is ``t = sigmoid(W_T x + b_T)``; ``b_T`` starts at
    ``gate_bias`` < 0, so at init the layers mostly carry ``x``.
    """

    def __init__(self, dim: int, num_layers: int, gate_bias: float) -> None:
        super().__init__()
        self.transform = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))
        self.gate = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))
        for gate in self.gate:
            nn.init.constant_(gate.bias, gate_bias)

    def forward(self, x: Tensor) -> Tensor:
        for transform, gate in zip(self.transform, self.gate):
            # lerp(x, h, t) = x + t * (h - x) = t * h + (1 - t) * x, in one kernel.
            x = torch.lerp(x, F.relu(transform(x)), torch.sigmoid(gate(x)))  # (N, D)
        return x


class CharCNNEncoder(_CharWordEncoder):
    """Kim et al.'s character CNN word encoder: convolutions, max over time, highway.

    Each filter width ``w`` convolves the character embeddings; the max over time runs
    over the windows that start at the word's real characters only. A window may run
    past the word's end into zeros, so a word shorter than the widest filter still
    has one window per character, and a word's vector does not depend on how much
    padding its batch has. ``tanh`` follows the max (same result as before it, since
    tanh is increasing, and cheaper), then ``highway_layers`` highway layers with a
    negative initial gate bias.

    Parameters: ``n_chars * char_dim + sum_w (w * char_dim * F_w + F_w)
    + highway_layers * 2 * (D * D + D)`` with ``D = sum_w F_w``.

    Args:
        n_chars: size of the character vocabulary (``len(CharVocab)``).
        char_dim: character embedding size ``C``.
        filters: ``(width, count)`` pairs; ``out_dim`` is the sum of the counts.
            The default is Kim et al.'s small model (525 filters).
        highway_layers: number of highway layers (Kim et al.: 1 small, 2 large).
        padding_idx: the padding id.
        dedup: encode each distinct word of a batch once and scatter back. Same
            result; faster when words repeat, as in running text.

    Shape:
        - ids: ``(N, L)`` or ``(B, S, L)``, int64.
        - lengths (optional): ``(N,)`` or ``(B, S)``.
        - output: ``(N, D)`` or ``(B, S, D)``, ``D = out_dim``.

    References:
        Kim, Jernite, Sontag, Rush (2016), "Character-Aware Neural Language Models",
        arXiv:1508.06615.

    Examples:
        >>> vocab = CharVocab.from_text("beer is awesome")
        >>> ids, lengths = vocab.encode(["beers", "awesomeness", "i"])
        >>> enc = CharCNNEncoder(len(vocab))
        >>> enc(ids).shape
        torch.Size([3, 525])
        >>> enc(ids.view(1, 3, -1)).shape  # (B, S, L)
        torch.Size([1, 3, 525])
    """

    def __init__(
        self,
        n_chars: int,
        char_dim: int = 15,
        filters: Sequence[tuple[int, int]] = _KIM_SMALL_FILTERS,
        highway_layers: int = 1,
        padding_idx: int = 0,
        *,
        dedup: bool = False,
    ) -> None:
        super().__init__()
        _check_embedding_args(n_chars, char_dim, padding_idx)
        filters = tuple((int(w), int(n)) for w, n in filters)
        if not filters or any(not (w >= 1 and n >= 1) for w, n in filters):
            raise ValueError(f"Invalid filters: {filters} (need (width, count) >= 1)")
        if not highway_layers >= 0:
            raise ValueError(f"Invalid highway_layers: {highway_layers}")
        self.padding_idx = padding_idx
        self.filters = filters
        self.max_width = max(w for w, _ in filters)
        self.out_dim = sum(n for _, n in filters)
        self.dedup = dedup
        self.embedding = nn.Embedding(n_chars, char_dim, padding_idx=padding_idx)
        self.convs = nn.ModuleList(nn.Conv1d(char_dim, n, w) for w, n in filters)
        self.highway = _Highway(self.out_dim, highway_layers, _HIGHWAY_GATE_BIAS)

    def _encode(self, ids: Tensor, lengths: Tensor) -> Tensor:
        N, L = ids.shape
        real = torch.arange(L, device=ids.device) < lengths.to(ids.device)[:, None]
        # Zero past each word's end even if the padding row's weight is not zero.
        x = self.embedding(ids) * real[:, :, None]  # (N, L, C)
        x = x.transpose(1, 2)  # (N, C, L)
        x = F.pad(x, (0, self.max_width - 1))  # (N, C, L + W - 1): a window per start
        pooled = []
        for conv in self.convs:
            y = conv(x)[:, :, :L]  # (N, F, L), windows starting at t = 0 .. L - 1
            y = y.masked_fill(~real[:, None, :], float("-inf"))
            pooled.append(y.amax(dim=2))  # (N, F)
        h = torch.tanh(torch.cat(pooled, dim=1))  # (N, D)
        return self.highway(h)


class CharGRUEncoder(_CharWordEncoder):
    """Packed character GRU word encoder: each word's last real GRU state.

    All words of a batch run in one ``pack_padded_sequence(..., enforce_sorted=False)``
    call, so no hand-made sort and unsort, and the GRU never reads padding. The GRU
    returns its final states in the batch's own order. Dropout acts on the character
    embeddings (the GRU's own ``dropout`` would act only between layers).

    With ``bidirectional=True`` the output concatenates the forward direction's state
    after the last character and the backward direction's state after the first.
    ``reverse=True`` reads each word right to left within its own length (``"cat"``
    is read as ``"tac"``, padding still last); it helps when words share stems and
    differ in endings, since the final state then sits nearest the stem.

    Args:
        n_chars: size of the character vocabulary (``len(CharVocab)``).
        char_dim: character embedding size ``C``.
        hidden_size: GRU hidden size ``H``.
        num_layers: stacked GRU layers.
        bidirectional: also run a right-to-left GRU; ``out_dim = 2 * H``.
        reverse: read each word's characters right to left.
        dropout: dropout probability on the character embeddings.
        padding_idx: the padding id.
        dedup: encode each distinct word of a batch once and scatter back. Same
            result in eval mode; in training mode, copies of a word share one
            dropout mask.

    Shape:
        - ids: ``(N, L)`` or ``(B, S, L)``, int64.
        - lengths (optional): ``(N,)`` or ``(B, S)``.
        - output: ``(N, D)`` or ``(B, S, D)``, ``D = out_dim = H * (2 if
          bidirectional else 1)``.

    Examples:
        >>> vocab = CharVocab.from_text("beer is awesome")
        >>> ids, lengths = vocab.encode(["beers", "", "is"])
        >>> enc = CharGRUEncoder(len(vocab), 8, 16, reverse=True)
        >>> out = enc(ids)
        >>> out.shape
        torch.Size([3, 16])
        >>> out[1].abs().sum().item()  # the empty word
        0.0
    """

    def __init__(
        self,
        n_chars: int,
        char_dim: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        reverse: bool = False,
        dropout: float = 0.1,
        padding_idx: int = 0,
        dedup: bool = False,
    ) -> None:
        super().__init__()
        _check_embedding_args(n_chars, char_dim, padding_idx)
        if not hidden_size >= 1:
            raise ValueError(f"Invalid hidden_size: {hidden_size}")
        if not num_layers >= 1:
            raise ValueError(f"Invalid num_layers: {num_layers}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"Invalid dropout: {dropout}")
        self.padding_idx = padding_idx
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.reverse = reverse
        self.out_dim = hidden_size * self.num_directions
        self.dedup = dedup
        self.embedding = nn.Embedding(n_chars, char_dim, padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(
            char_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
        )

    def _encode(self, ids: Tensor, lengths: Tensor) -> Tensor:
        N, L = ids.shape
        if self.reverse:
            ids = _reverse_within(ids, lengths.to(ids.device))  # (N, L)
        x = self.dropout(self.embedding(ids))  # (N, L, C)
        packed = pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        _, h_n = self.gru(packed)  # (layers * dirs, N, H), rows in the input's order
        if self.num_directions == 1:
            return h_n[-1]  # (N, H)
        h_n = h_n.view(self.num_layers, 2, N, self.hidden_size)[-1]  # (2, N, H)
        return h_n.transpose(0, 1).reshape(N, self.out_dim)  # (N, 2 * H)


def _reverse_within(ids: Tensor, lengths: Tensor) -> Tensor:
    """Reverses each row's first ``lengths[i]`` entries, leaving the padding in place.

    The gather index is ``len - 1 - t`` for ``t < len`` and ``t`` after it, as in
    ``tf.reverse_sequence``; ``torch.flip`` on the padded rows would put padding first.
    """
    N, L = ids.shape
    t = torch.arange(L, device=ids.device).expand(N, L)  # (N, L)
    n = lengths[:, None]  # (N, 1)
    return ids.gather(1, torch.where(t < n, n - 1 - t, t))  # (N, L)
