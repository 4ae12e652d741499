"""The book's BPE, written plainly: the reference the fast trainer and encoder are tested against.

After every merge the plain trainer recounts every adjacent pair over every unique word, exactly
as Ch.22 presents the algorithm: easy to read and check, and 50-80x slower than
:mod:`mygpt.tokenizers.trainer` on 5 MB of text. ``scripts/bench_bpe.py`` times the two.
"""

from __future__ import annotations

import re
from collections import Counter

from mygpt.tokenizers.bpe import BOOK_PATTERN

BOOK_PRETOKEN = re.compile(BOOK_PATTERN)


def plain_merges(words: dict, num_merges: int, count_duplicates: bool = True) -> list[tuple]:
    """``words``: {tuple of symbol values: count}, in first-appearance order. Symbols are values."""
    splits = {w: list(w) for w in words}
    merges: list[tuple] = []
    known = {v for w in words for v in w}
    done = 0
    while done < num_merges:
        pairs: Counter = Counter()
        for w, f in words.items():
            s = splits[w]
            for i in range(len(s) - 1):
                pairs[s[i], s[i + 1]] += f
        if not pairs:
            break
        best = max(pairs, key=pairs.get)  # first maximal pair in Counter (insertion) order
        a, b = best
        ab = a + b
        if ab not in known or count_duplicates:
            merges.append(best)
            done += 1
        known.add(ab)
        for w in words:
            s, out, i = splits[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(ab)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out
    return merges


def plain_book_train(text: str, num_merges: int) -> tuple[list[str], list[tuple[str, str]]]:
    words = Counter(BOOK_PRETOKEN.findall(text))
    return sorted(set(text)), plain_merges({tuple(w): c for w, c in words.items()}, num_merges)


def plain_book_encode(text: str, chars: list[str], merges: list[tuple[str, str]]) -> list[int]:
    """The book's corpus encoder: per pre-token, drop unknown chars, apply merges by rank."""
    vocab = chars + [a + b for a, b in merges]
    stoi = {t: i for i, t in enumerate(vocab)}
    ranks = {m: i for i, m in reversed(list(enumerate(merges)))}
    out: list[int] = []
    for word in BOOK_PRETOKEN.findall(text):
        out.extend(_book_word(word, stoi, ranks))
    return out


def cached_book_encode(text: str, chars: list[str], merges: list[tuple[str, str]]) -> list[int]:
    """The book's Ch.28 corpus encoder as it runs: the same per-word merges, each distinct
    pre-token encoded once (a per-word cache). The baseline ``scripts/bench_bpe.py`` times."""
    vocab = chars + [a + b for a, b in merges]
    stoi = {t: i for i, t in enumerate(vocab)}
    ranks = {m: i for i, m in reversed(list(enumerate(merges)))}
    cache: dict[str, list[int]] = {}
    out: list[int] = []
    for word in BOOK_PRETOKEN.findall(text):
        ids = cache.get(word)
        if ids is None:
            ids = cache[word] = _book_word(word, stoi, ranks)
        out.extend(ids)
    return out


def _book_word(word: str, stoi: dict, ranks: dict) -> list[int]:
    """One pre-token: drop unknown characters, then merge the lowest-rank pair until none."""
    toks = [c for c in word if c in stoi]
    while len(toks) > 1:
        best = min(zip(toks, toks[1:]), key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        new, i = [], 0
        while i < len(toks):
            if i + 1 < len(toks) and (toks[i], toks[i + 1]) == best:
                new.append(best[0] + best[1])
                i += 2
            else:
                new.append(toks[i])
                i += 1
        toks = new
    return [stoi[t] for t in toks]
