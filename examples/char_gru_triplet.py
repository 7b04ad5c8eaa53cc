"""Train a character GRU so that words with the same stem map close together.

A cosine triplet loss (``trainkit.losses.cosine_triplet_loss``, margin 0.3) pulls two
forms of one stem together ("walked", "rewalking") and pushes a form of another stem
away. The words are generated: made-up stems with English prefixes and suffixes. The
stems come in families that share their first letters, and half the negatives come
from the anchor's family or carry the anchor's own prefix and suffix, so neither the
affixes nor the first letters suffice. The encoder reads each word right to left
(``reverse=True``, the blog post's trick) with dropout 0.1 on the character
embeddings; a linear layer follows the GRU.

Half of the families are held out of training. The script prints the held-out
nearest-neighbour accuracy (is a word's nearest other word a form of the same stem?)
at init and after training, and the nearest neighbours of a few real English words
the model never saw.

Run: ``python examples/char_gru_triplet.py`` (about 12 s on one CPU core).
"""

from __future__ import annotations

import argparse
import random
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainkit.encoders import CharGRUEncoder, CharVocab
from trainkit.losses import cosine_triplet_loss

PREFIXES = ("", "un", "re", "dis", "pre", "over")
SUFFIXES = ("", "s", "ed", "ing", "er", "ers", "ly", "ness", "able", "ful")
# Never trained on; the neighbours of some of their forms are printed at the end.
# Pairs share a start (pain/paint, play/plan) or an end (walk/talk).
REAL_STEMS = ("walk", "talk", "pain", "paint", "play", "plan", "kind", "dark")
FAMILY_SIZE = 3  # generated stems come in families that share their first 3 letters
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def _syllables(n: int, rng: random.Random) -> str:
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(n))


def make_stems(n_families: int, rng: random.Random) -> list[list[str]]:
    """Families of ``FAMILY_SIZE`` made-up stems that share their first 3 letters.

    Sharing a start makes the task hard for an untrained encoder: words with the same
    prefix start out close (the blog post's observation).
    """
    seen = set(REAL_STEMS)
    families = []
    while len(families) < n_families:
        root = _syllables(1, rng) + rng.choice(_CONSONANTS)  # e.g. "dap"
        family = {root + _syllables(rng.randint(1, 2), rng) for _ in range(FAMILY_SIZE)}
        if len(family) == FAMILY_SIZE and not family & seen:
            seen |= family
            families.append(sorted(family))
    return families


def form(stem: str, rng: random.Random) -> str:
    """A random prefix + ``stem`` + a random suffix (spelling rules ignored)."""
    return rng.choice(PREFIXES) + stem + rng.choice(SUFFIXES)


@dataclass
class Result:
    """What :func:`train` measured."""

    losses: list[float]  # per step
    accuracy_before: float  # held-out nearest-neighbour accuracy at init
    accuracy_after: float
    neighbours: dict[str, list[str]]  # real word -> its nearest other words
    n_test_words: int
    seconds: float


def nearest_neighbour_accuracy(
    model: nn.Module, vocab: CharVocab, words: Sequence[str], stems: Sequence[str]
) -> float:
    """Fraction of words whose nearest other word (cosine) has the same stem."""
    with torch.no_grad():
        z = F.normalize(model(vocab.encode(words)[0]), dim=-1)  # (N, D)
    sim = z @ z.T  # (N, N)
    sim.fill_diagonal_(float("-inf"))
    nearest = sim.argmax(dim=1).tolist()
    return sum(stems[i] == stems[j] for i, j in enumerate(nearest)) / len(words)


def train(
    *,
    n_families: int = 200,
    steps: int = 500,
    batch_size: int = 128,
    char_dim: int = 16,
    hidden_size: int = 64,
    forms_per_stem: int = 5,
    lr: float = 3e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Result:
    """Trains on half of ``n_families`` generated stem families; see the module doc."""
    start = time.perf_counter()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    families = make_stems(n_families, rng)
    train_families = families[: n_families // 2]
    train_stems = [stem for family in train_families for stem in family]
    test_stems = [stem for family in families[n_families // 2 :] for stem in family]
    vocab = CharVocab.from_text(string.ascii_lowercase)
    model = nn.Sequential(
        CharGRUEncoder(len(vocab), char_dim, hidden_size, reverse=True, dropout=0.1),
        nn.Linear(hidden_size, hidden_size),  # unbounded outputs, as in the blog post
    )
    test_words, test_labels = [], []
    for stem in test_stems:
        words = {form(stem, rng) for _ in range(forms_per_stem * 3)}
        test_words += sorted(words)[:forms_per_stem]
        test_labels += [stem] * min(forms_per_stem, len(words))
    model.eval()
    accuracy_before = nearest_neighbour_accuracy(model, vocab, test_words, test_labels)

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for step in range(steps):
        anchors, positives, negatives = [], [], []
        for _ in range(batch_size):
            family = rng.choice(train_families)
            stem = rng.choice(family)
            anchor = form(stem, rng)
            positive = anchor
            while positive == anchor:
                positive = form(stem, rng)
            # Hard negatives: half from the anchor's family (same first letters),
            # half with the anchor's own prefix and suffix.
            pool = family if rng.random() < 0.5 else train_stems
            other = stem
            while other == stem:
                other = rng.choice(pool)
            if rng.random() < 0.5:
                prefix = anchor[: anchor.index(stem)]
                negative = prefix + other + anchor[len(prefix) + len(stem) :]
            else:
                negative = form(other, rng)
            anchors.append(anchor)
            positives.append(positive)
            negatives.append(negative)
        ids, _ = vocab.encode(anchors + positives + negatives)  # (3 * B, L)
        a, p, n = model(ids).split(batch_size)  # 3 x (B, D), one packed GRU call
        loss = cosine_triplet_loss(a, p, n, margin=0.3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            log(f"step {step:4d}  triplet loss {loss.item():.4f}")

    model.eval()
    accuracy_after = nearest_neighbour_accuracy(model, vocab, test_words, test_labels)
    # Neighbours of unseen real words among all forms of the real stems.
    pool = sorted({p + s + x for s in REAL_STEMS for p in PREFIXES for x in SUFFIXES})
    with torch.no_grad():
        z = F.normalize(model(vocab.encode(pool)[0]), dim=-1)  # (P, D)
    neighbours = {}
    for query in ("walking", "repainted", "player", "unkindness"):
        q = pool.index(query)
        sim = z @ z[q]  # (P,)
        sim[q] = float("-inf")
        neighbours[query] = [pool[i] for i in sim.topk(5).indices.tolist()]
    return Result(
        losses=losses,
        accuracy_before=accuracy_before,
        accuracy_after=accuracy_after,
        neighbours=neighbours,
        n_test_words=len(test_words),
        seconds=time.perf_counter() - start,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", type=int, default=200, help="stem families")
    parser.add_argument("--steps", type=int, default=500, help="training steps")
    parser.add_argument("--seed", type=int, default=0)
    # One thread: these matmuls are small, and on a shared CPU OpenMP threads spend
    # their time waiting for each other (10x slower here with 2 threads under load).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = train(n_families=args.families, steps=args.steps, seed=args.seed)
    print(
        f"held-out nearest-neighbour accuracy (same stem, {result.n_test_words} "
        f"words of unseen stems): {result.accuracy_before:.1%} at init -> "
        f"{result.accuracy_after:.1%}"
    )
    print("nearest neighbours among forms of real stems never seen in training:")
    for query, near in result.neighbours.items():
        print(f"  {query:>10}: {', '.join(near)}")
    print(f"took {result.seconds:.1f} s")


if __name__ == "__main__":
    main()
