"""Tests for trainkit.encoders against independent references.

References: a naive per-word, per-window float64 CNN + highway; nn.GRU run on each
word alone (no packing); the encoder on string-reversed words; the same batch without
dedup. Generic invariants run over a registry of encoder configurations.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from trainkit.encoders import CharCNNEncoder, CharGRUEncoder, CharVocab

VOCAB = CharVocab.from_text("abcdefghijklmnopqrstuvwxyz")
SHORT = ["a", "ab", "cat", "beer"]  # shorter than the "cnn" config's widest filter
LONG = ["internationalisation", "awesomenessawesomeness", "x" * 40]
# name -> factory; the generic tests run on each, in eval mode (so without dropout).
ENCODERS = {
    "cnn": lambda: CharCNNEncoder(len(VOCAB), 6, ((1, 4), (2, 5), (3, 6), (5, 7)), 2),
    "cnn_no_highway": lambda: CharCNNEncoder(len(VOCAB), 4, ((2, 3), (4, 5)), 0),
    "gru": lambda: CharGRUEncoder(len(VOCAB), 6, 8, dropout=0.0),
    "gru_reverse": lambda: CharGRUEncoder(len(VOCAB), 6, 8, reverse=True),
    "gru_bi_2layers": lambda: CharGRUEncoder(
        len(VOCAB), 6, 8, num_layers=2, bidirectional=True
    ),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tensors here are tiny: extra threads only add hand-offs, and on a busy
    # shared CPU they wait for each other (10-50x slower per call with 2 threads).
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


@pytest.fixture(params=sorted(ENCODERS))
def encoder(request) -> nn.Module:
    return ENCODERS[request.param]().eval()


def _encode(words: list[str], **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    return VOCAB.encode(words, **kwargs)


# --- CharVocab ---


def test_vocab_reserves_padding_and_unknown_and_sorts_characters():
    vocab = CharVocab.from_text("ba ab\tc\n")
    assert vocab.chars == ("a", "b", "c")  # whitespace left out
    assert len(vocab) == 5
    ids, lengths = vocab.encode(["cab", "", "a?"])
    assert ids.dtype == torch.int64 and lengths.dtype == torch.int64
    assert ids.tolist() == [[4, 2, 3], [0, 0, 0], [2, 1, 0]]
    assert lengths.tolist() == [3, 0, 2]


def test_vocab_encode_max_len_pads_and_truncates():
    ids, lengths = VOCAB.encode(["abcdef", "ab"], max_len=4)
    assert ids.tolist() == [[2, 3, 4, 5], [2, 3, 0, 0]]
    assert lengths.tolist() == [4, 2]
    ids, lengths = VOCAB.encode([])
    assert ids.shape == (0, 0) and lengths.shape == (0,)


def test_vocab_encode_rejects_a_str_and_bad_max_len():
    with pytest.raises(TypeError, match="split"):
        VOCAB.encode("beer")
    with pytest.raises(ValueError, match="max_len: 0"):
        VOCAB.encode(["beer"], max_len=0)


def test_vocab_encode_batch_pads_sequences_with_empty_words():
    ids, lengths = VOCAB.encode_batch([["beer", "is"], ["awesome"]])
    assert ids.shape == (2, 2, 7)
    assert lengths.tolist() == [[4, 2], [7, 0]]
    assert ids[1, 1].eq(0).all()
    flat_ids, _ = VOCAB.encode(["beer", "is", "awesome", ""])
    assert torch.equal(ids.view(4, 7), flat_ids)


def test_vocab_rejects_duplicates_and_multichar_entries():
    with pytest.raises(ValueError, match="Duplicate"):
        CharVocab(["a", "b", "a"])
    with pytest.raises(ValueError, match="'ab'"):
        CharVocab(["ab"])


def test_vocab_save_load_round_trips_unicode(tmp_path):
    vocab = CharVocab.from_text("naïve café 🍺 Straße")
    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = CharVocab.load(path)
    assert loaded == vocab and loaded.chars == vocab.chars
    words = ["café", "🍺s", "naïveté"]
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.encode(words), vocab.encode(words))
    )


def test_vocab_load_rejects_other_files_and_newer_versions(tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"chars": ["a"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="Not a trainkit.CharVocab file"):
        CharVocab.load(path)
    payload = {"format": "trainkit.CharVocab", "version": 99, "chars": ["a"]}
    path.write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(ValueError, match="version 99"):
        CharVocab.load(path)


def test_word_markers_wrap_every_word_with_two_ids_of_their_own():
    # "{" and "}" are Kim et al.'s markers: here they are characters of the text
    vocab = CharVocab.from_text("{a} b", word_markers=True)
    assert vocab.chars == ("a", "b", "{", "}") and len(vocab) == 8
    begin, end = vocab.word_begin_id, vocab.word_end_id
    assert (begin, end) == (6, 7)
    assert {begin, end}.isdisjoint({vocab.padding_id, vocab.unknown_id, 2, 3, 4, 5})
    ids, lengths = vocab.encode(["{a}", "", "b?"])
    assert ids.tolist() == [[6, 4, 2, 5, 7], [0, 0, 0, 0, 0], [6, 3, 1, 7, 0]]
    assert lengths.tolist() == [5, 0, 4]  # markers counted; an empty slot stays 0
    plain = CharVocab.from_text("{a} b")
    assert plain.word_begin_id is None and plain.word_end_id is None
    assert plain != vocab and len(plain) == 6
    assert plain.encode(["{a}"])[0].tolist() == [[4, 2, 5]]  # same character ids


def test_word_markers_truncate_the_end_marker_first_and_pad_batches():
    vocab = CharVocab(["a", "b", "c"], word_markers=True)
    ids, lengths = vocab.encode(["abc", "a"], max_len=3)
    assert ids.tolist() == [[5, 2, 3], [5, 2, 6]]
    assert lengths.tolist() == [3, 3]
    ids, lengths = vocab.encode_batch([["ab"], ["c", "ba"]])
    assert ids.shape == (2, 2, 4)
    assert lengths.tolist() == [[4, 0], [3, 4]]
    assert ids[0, 1].eq(0).all()


def test_word_markers_feed_the_encoders():
    vocab = CharVocab.from_text("beer is awesome", word_markers=True)
    ids, lengths = vocab.encode(["beers", "is", ""])
    for encoder in (
        CharCNNEncoder(len(vocab), char_dim=4, filters=((2, 3),), highway_layers=1),
        CharGRUEncoder(len(vocab), char_dim=4, hidden_size=5).eval(),
    ):
        out = encoder(ids, lengths)
        assert torch.isfinite(out).all() and out[2].eq(0).all()
        torch.testing.assert_close(encoder(ids), out)  # lengths from the padding


def test_word_markers_save_and_load(tmp_path):
    path = tmp_path / "vocab.json"
    vocab = CharVocab.from_text("naïve café", word_markers=True)
    vocab.save(path)
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["version"] == 2 and payload["word_markers"] is True
    loaded = CharVocab.load(path)
    assert loaded == vocab and loaded.word_markers
    assert torch.equal(loaded.encode(["café"])[0], vocab.encode(["café"])[0])
    # without markers the file stays the version every reader knows
    CharVocab.from_text("naïve café").save(path)
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["version"] == 1 and "word_markers" not in payload
    assert not CharVocab.load(path).word_markers
    payload.update(word_markers="yes")
    path.write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(ValueError, match="Invalid word_markers 'yes'"):
        CharVocab.load(path)
    with pytest.raises(TypeError, match="Invalid word_markers: 1"):
        CharVocab(["a"], word_markers=1)


# --- invariants shared by both encoders ---


def test_a_word_encodes_the_same_alone_and_among_much_longer_words(encoder):
    for word in SHORT + LONG[:1]:
        alone = encoder(_encode([word])[0])  # L = len(word): no padding at all
        ids, _ = _encode([*LONG, word, *SHORT], max_len=60)  # lots of padding
        in_batch = encoder(ids)[len(LONG)]
        torch.testing.assert_close(in_batch, alone[0], atol=1e-6, rtol=0)


def test_explicit_lengths_match_inferred_and_ignore_ids_past_the_end(encoder):
    ids, lengths = _encode(SHORT + LONG)
    expected = encoder(ids)
    torch.testing.assert_close(encoder(ids, lengths), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        encoder(ids, lengths.tolist()), expected, atol=1e-6, rtol=0
    )
    past_end = torch.arange(ids.shape[1]) >= lengths[:, None]
    garbage = ids.masked_fill(past_end, 7)  # a real character id
    torch.testing.assert_close(encoder(garbage, lengths), expected, atol=1e-6, rtol=0)


def test_three_dim_input_matches_flat_and_empty_slots_are_zero(encoder):
    sentences = [["beer", "is", "awesome"], ["cat"], []]
    ids, lengths = VOCAB.encode_batch(sentences)  # (3, 3, 7)
    out = encoder(ids)
    assert out.shape == (3, 3, encoder.out_dim)
    flat = encoder(ids.view(9, -1))
    torch.testing.assert_close(out.view(9, -1), flat, atol=1e-6, rtol=0)
    empty = lengths == 0
    assert empty.sum() == 5
    assert out[empty].eq(0).all()
    assert out[~empty].abs().sum(dim=-1).gt(0).all()
    torch.testing.assert_close(encoder(ids, lengths), out, atol=1e-6, rtol=0)


def test_empty_words_and_empty_batches_do_not_crash(encoder):
    out = encoder(torch.zeros(4, 6, dtype=torch.long))
    assert out.shape == (4, encoder.out_dim) and out.eq(0).all()
    assert encoder(torch.zeros(0, 6, dtype=torch.long)).shape == (0, encoder.out_dim)
    assert encoder(torch.zeros(2, 0, 5, dtype=torch.long)).shape == (
        2,
        0,
        encoder.out_dim,
    )
    assert encoder(torch.zeros(3, 0, dtype=torch.long)).eq(0).all()


def test_gradients_flow_with_empty_words_in_the_batch(encoder):
    encoder.train()
    ids, _ = _encode(["beer", "", "is", ""])
    encoder(ids).square().sum().backward()
    grads = [p.grad for p in encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert encoder.embedding.weight.grad[VOCAB.chars.index("b") + 2].abs().sum() > 0


def test_dedup_gives_the_same_values_and_gradients(encoder):
    torch.manual_seed(1)
    encoder = encoder.double()
    words = ["the", "cat", "the", "", "a", "cat", "the", "catalogue", "", "a"]
    ids, lengths = _encode(words)
    past_end = torch.arange(ids.shape[1]) >= lengths[:, None]
    garbage = ids.masked_fill(past_end, 5)  # dedup must compare only real chars
    weights = torch.randn(len(words), encoder.out_dim, dtype=torch.float64)
    results = []
    for dedup, args in [
        (False, (ids,)),
        (True, (ids,)),
        (True, (garbage, lengths)),
        (True, (ids.view(2, 5, -1),)),
    ]:
        encoder.dedup = dedup
        encoder.zero_grad()
        out = encoder(*args).reshape(len(words), -1)
        (out * weights).sum().backward()
        results.append((out, [p.grad.clone() for p in encoder.parameters()]))
    ref_out, ref_grads = results[0]
    for out, grads in results[1:]:
        torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
        for g, ref in zip(grads, ref_grads):
            torch.testing.assert_close(g, ref, atol=1e-12, rtol=1e-10)


def test_dedup_encodes_each_distinct_nonempty_word_once(encoder):
    words = ["the", "cat", "the", "", "a", "cat", "the", "", "a", "the"]
    ids, lengths = _encode(words)
    past_end = torch.arange(ids.shape[1]) >= lengths[:, None]
    garbage = torch.where(past_end, torch.randint(2, len(VOCAB), ids.shape), ids)
    rows_seen = []
    encoder.embedding.register_forward_hook(
        lambda module, args, out: rows_seen.append(args[0].shape[0])
    )
    encoder.dedup = True
    encoder(ids)
    encoder(garbage, lengths)  # ids past the end differ per copy; still one row each
    encoder.dedup = False
    encoder(ids)
    assert rows_seen == [3, 3, 8]


def test_unseen_words_encode_to_distinct_finite_vectors(encoder):
    vocab = CharVocab.from_text("beer is awesome")
    enc = type(encoder)(len(vocab), 5, **_small_kwargs(encoder)).eval()
    ids, _ = vocab.encode(["beers", "awesomeness", "is", "beer"])  # 'n' is unknown
    assert ids[1].eq(CharVocab.unknown_id).any()
    out = enc(ids)
    assert torch.isfinite(out).all() and out.abs().sum(dim=1).gt(0).all()
    assert torch.cdist(out, out).add(torch.eye(4)).gt(1e-4).all()


def _small_kwargs(encoder: nn.Module) -> dict:
    if isinstance(encoder, CharGRUEncoder):
        return {"hidden_size": 6}
    return {"filters": ((1, 3), (3, 4)), "highway_layers": 1}


def test_bad_inputs_raise_with_the_offending_value(encoder):
    ids, lengths = _encode(["beer", "is"])
    with pytest.raises(TypeError, match="int64 or int32 tensor, got torch.float32"):
        encoder(ids.float())
    with pytest.raises(TypeError, match="got list"):
        encoder(ids.tolist())
    with pytest.raises(ValueError, match=r"\(4,\)"):
        encoder(ids[0])
    with pytest.raises(ValueError, match="padding id 0 before"):
        encoder(torch.tensor([[2, 0, 3]]))
    with pytest.raises(ValueError, match=r"\[0, 4\], got \[2, 5\]"):
        encoder(ids, torch.tensor([5, 2]))
    with pytest.raises(ValueError, match="shape"):
        encoder(ids, lengths[:1])
    torch.testing.assert_close(encoder(ids.int()), encoder(ids))


def test_out_of_range_ids_and_non_integer_lengths_raise_naming_them(encoder):
    n_chars = len(VOCAB)
    ids, lengths = _encode(["beer", "is"])
    for bad in (n_chars, n_chars + 5, -1):
        bad_ids = ids.clone()
        bad_ids[1, 1] = bad
        match = rf"Invalid character id {bad}: ids must lie in \[0, {n_chars - 1}\] "
        match += f"for n_chars={n_chars}"
        for args in ((bad_ids,), (bad_ids, lengths), (bad_ids.view(1, 2, -1),)):
            with pytest.raises(ValueError, match=match):
                encoder(*args)
    edge = ids.clone()
    edge[0, 0] = n_chars - 1  # the largest valid id
    assert torch.isfinite(encoder(edge)).all()

    for bad_lengths in (lengths.bool(), [True, True], lengths.float()):
        dtype = torch.as_tensor(bad_lengths).dtype
        with pytest.raises(TypeError, match=f"lengths must be an integer .*{dtype}"):
            encoder(ids, bad_lengths)


def test_ids_past_a_words_length_must_be_valid_ids(encoder):
    # Explicit lengths still ignore what lies past a word's end, but the embedding
    # reads those positions, so -1 padding is refused.
    ids, lengths = _encode(["beer", "is"])
    reference = encoder(ids, lengths)
    other_padding = ids.clone()
    other_padding[1, 2:] = 5
    torch.testing.assert_close(encoder(other_padding, lengths), reference)
    minus_one = ids.clone()
    minus_one[1, 2:] = -1
    with pytest.raises(ValueError, match="Invalid character id -1"):
        encoder(minus_one, lengths)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dedup", [False, True])
@pytest.mark.parametrize("explicit_lengths", [False, True])
def test_the_input_checks_and_lengths_reach_the_host_in_one_sync(
    encoder, explicit_lengths, dedup, monkeypatch
):
    encoder.cuda()
    encoder.dedup = dedup
    ids, lengths = _encode(["beer", "is", "awesome", "is"])
    args = (ids.cuda(), lengths.cuda()) if explicit_lengths else (ids.cuda(),)
    D = encoder.out_dim
    # The front end only: the encoders themselves send lengths back to the device.
    encoder._encode_rows = lambda ids, lengths: ids.new_zeros(len(ids), D).float()
    if dedup:
        # torch.unique waits for the device to size its output; without it, dedup
        # adds one wait (the distinct words' lengths to the host), and the lengths
        # it masks and keys by are those already on the device (no copy back).
        def unique(key, dim, return_inverse):
            return key, torch.arange(len(key), device=key.device)

        monkeypatch.setattr(torch, "unique", unique)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            encoder(*args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchronizing CUDA operation" in str(w.message)]
    assert len(syncs) == 1 + dedup, [str(w.message) for w in caught]


# --- CharCNNEncoder ---


def _naive_cnn(enc: CharCNNEncoder, word_ids: list[int]) -> torch.Tensor:
    """Per word, per filter, per start position; highway written out by hand."""
    emb = enc.embedding.weight
    n, C = len(word_ids), emb.shape[1]
    pooled = []
    for conv in enc.convs:
        n_filters, _, width = conv.weight.shape
        best = torch.full((n_filters,), -math.inf, dtype=emb.dtype)
        for start in range(n):  # windows start at real characters only
            window = torch.zeros(C, width, dtype=emb.dtype)  # zeros past the end
            for k in range(width):
                if start + k < n:
                    window[:, k] = emb[word_ids[start + k]]
            value = (conv.weight * window).sum(dim=(1, 2)) + conv.bias
            best = torch.maximum(best, value)
        pooled.append(torch.tanh(best))
    y = torch.cat(pooled)
    for transform, gate in zip(enc.highway.transform, enc.highway.gate):
        t = torch.sigmoid(gate.weight @ y + gate.bias)
        y = t * torch.relu(transform.weight @ y + transform.bias) + (1 - t) * y
    return y


def test_cnn_matches_a_naive_per_window_reference_in_float64():
    enc = CharCNNEncoder(len(VOCAB), 5, ((1, 3), (2, 4), (4, 5), (6, 2)), 2)
    enc = enc.double().eval()
    with torch.no_grad():  # a non-zero padding row must still read as zeros
        enc.embedding.weight[0].normal_()
    words = ["a", "cat", "beer", "encoder", "highway"]
    ids, _ = _encode(words, max_len=12)
    out = enc(ids)
    for i, word in enumerate(words):
        ref = _naive_cnn(enc, ids[i, : len(word)].tolist())
        torch.testing.assert_close(out[i], ref, atol=1e-12, rtol=0)


def test_cnn_highway_gate_bias_is_negative_at_init():
    enc = CharCNNEncoder(len(VOCAB), highway_layers=2)
    assert len(enc.highway.gate) == 2
    for gate in enc.highway.gate:
        assert gate.bias.lt(0).all()
        assert torch.sigmoid(gate.bias).max() < 0.5  # the carry path dominates


@pytest.mark.parametrize(
    ("filters", "highway_layers", "out_dim"),
    [
        # Kim et al. small: widths 1-6, 25 * w filters, one highway layer.
        (tuple((w, 25 * w) for w in range(1, 7)), 1, 525),
        # Kim et al. large: widths 1-7, min(200, 50 * w) filters, two highway layers.
        (tuple((w, min(200, 50 * w)) for w in range(1, 8)), 2, 1100),
    ],
)
def test_cnn_kim_configurations_give_the_closed_form_size(
    filters, highway_layers, out_dim
):
    n_chars, char_dim = 51, 15
    enc = CharCNNEncoder(n_chars, char_dim, filters, highway_layers)
    D = sum(n for _, n in filters)
    expected = (
        n_chars * char_dim
        + sum(w * char_dim * n + n for w, n in filters)
        + highway_layers * 2 * (D * D + D)
    )
    assert enc.out_dim == D == out_dim
    assert sum(p.numel() for p in enc.parameters()) == expected
    ids = torch.randint(2, n_chars, (3, 4))
    assert enc(ids).shape == (3, out_dim)


def test_cnn_default_is_kim_small():
    enc = CharCNNEncoder(51)
    assert enc.out_dim == 525 and enc.embedding.embedding_dim == 15
    assert [c.kernel_size[0] for c in enc.convs] == [1, 2, 3, 4, 5, 6]
    assert [c.out_channels for c in enc.convs] == [25, 50, 75, 100, 125, 150]
    assert len(enc.highway.gate) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_chars": 0}, "n_chars: 0"),
        ({"char_dim": 0}, "char_dim: 0"),
        ({"filters": ()}, "filters"),
        ({"filters": ((0, 3),)}, "filters"),
        ({"highway_layers": -1}, "highway_layers: -1"),
        ({"padding_idx": 30}, "padding_idx: 30"),
    ],
)
def test_cnn_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CharCNNEncoder(**{"n_chars": 28, **kwargs})


# --- CharGRUEncoder ---


def _gru_alone(enc: CharGRUEncoder, word_ids: list[int]) -> torch.Tensor:
    """Runs enc's embedding + nn.GRU on one word, unpacked, and takes the last layer."""
    x = enc.embedding(torch.tensor([word_ids]))  # (1, n, C)
    _, h_n = enc.gru(x)  # (layers * dirs, 1, H)
    if enc.num_directions == 1:
        return h_n[-1, 0]
    return torch.cat([h_n[-2, 0], h_n[-1, 0]])  # forward then backward, last layer


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_gru_packed_equals_a_per_word_loop(bidirectional, num_layers):
    enc = CharGRUEncoder(
        len(VOCAB), 6, 8, num_layers=num_layers, bidirectional=bidirectional
    ).eval()
    words = ["internationalisation", "a", "beer", "", "cat", "awesome"]
    ids, lengths = _encode(words)
    out = enc(ids)
    with torch.no_grad():
        for i, word in enumerate(words):
            if not word:
                assert out[i].eq(0).all()
                continue
            ref = _gru_alone(enc, ids[i, : len(word)].tolist())
            torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_reverse_equals_running_on_reversed_characters(bidirectional):
    enc = CharGRUEncoder(len(VOCAB), 6, 8, reverse=True, bidirectional=bidirectional)
    enc.eval()
    words = ["beer", "a", "awesomeness", "", "stressed"]
    out = enc(_encode(words)[0])
    enc.reverse = False
    reference = enc(_encode([w[::-1] for w in words])[0])
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)
    # Not a no-op: reading left to right gives other vectors for non-palindromes.
    forward = enc(_encode(words)[0])
    assert (forward[0] - out[0]).abs().max() > 1e-3


def test_gru_dropout_acts_on_the_character_embeddings():
    enc = CharGRUEncoder(len(VOCAB), 6, 8, dropout=1.0)
    ids, _ = _encode(["beer", "is", "awesome"])
    dropped = enc.train()(ids)  # p = 1: the GRU reads all-zero inputs
    with torch.no_grad():
        enc.embedding.weight.zero_()
    reference = enc.eval()(ids)
    torch.testing.assert_close(dropped, reference, atol=1e-6, rtol=0)
    assert dropped.abs().sum() > 0  # the GRU still ran (its biases move the state)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden_size": 0}, "hidden_size: 0"),
        ({"num_layers": 0}, "num_layers: 0"),
        ({"dropout": 1.5}, "dropout: 1.5"),
        ({"dropout": math.nan}, "dropout: nan"),
        ({"padding_idx": -1}, "padding_idx: -1"),
    ],
)
def test_gru_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CharGRUEncoder(**{"n_chars": 28, "char_dim": 4, "hidden_size": 8, **kwargs})


# --- the example ---


def test_the_triplet_example_runs_and_learns_in_a_tiny_configuration(monkeypatch):
    path = Path(__file__).parents[2] / "examples" / "char_gru_triplet.py"
    spec = importlib.util.spec_from_file_location("char_gru_triplet", path)
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # dataclasses look it up
    spec.loader.exec_module(example)
    lines = []
    result = example.train(
        n_families=12, steps=80, batch_size=32, hidden_size=16, log=lines.append
    )
    assert lines and all(math.isfinite(x) for x in result.losses)
    first, last = result.losses[:10], result.losses[-10:]
    assert sum(last) < 0.7 * sum(first)  # 0.35 -> 0.17 with seed 0
    assert 0 <= result.accuracy_before <= 1 and 0 <= result.accuracy_after <= 1
    assert result.n_test_words == 6 * 3 * 5
    assert set(result.neighbours) == {"walking", "repainted", "player", "unkindness"}
    assert all(len(v) == 5 for v in result.neighbours.values())
