"""Knowledge-base retrieval for the node: BM25 over Chinese + English, optional dense fusion.

A tenant's knowledge base (KB) is a list of :class:`KBEntry` — question variants and answers in
Chinese and English, tagged with the scopes (business lines / scenarios) that may see them.
:class:`KnowledgeBase` builds an immutable index once and answers in tens of microseconds.

Lexical index
    :func:`tokenize` turns text into index terms. CJK runs become character unigrams plus
    bigrams, so two-character words such as 退款 or 发票 match without a word segmenter (the
    reason SQLite FTS5's trigram tokenizer is not used: it cannot match them). Latin runs
    become lower-cased words with a light suffix stemmer (plurals, -ing, -ed, final -e,
    doubled consonants), digit runs collapse to ``0`` (order numbers carry no meaning here),
    and very common function words are dropped. Mixed text (我的order到哪了) splits into runs.

    Each question variant, in both languages, is one BM25 document. An entry scores as its
    **best-matching variant** (max, not sum: an entry with many variants must not win just
    by having more of them).

Normalised scores
    ``lexical_score`` = BM25(query, variant) / BM25(query, query): the variant's score divided
    by the score a variant identical to the query would get (the query's *self-score*, with
    query words unknown to the KB counted at the highest IDF). It reads as "how much of the
    query's information this variant matches", clipped to [0, 1].

    With ``embed`` given, ``dense_score`` is the cosine between query and variant embeddings,
    rescaled as ``(cos - dense_floor) / (1 - dense_floor)`` and clipped to [0, 1]. The two are
    fused by a **normalised weighted sum** (``lexical_weight``, ``dense_weight``), not by
    reciprocal-rank fusion: RRF throws away the absolute level of the scores, and the absolute
    level is what tells a good answer from "nothing fits".

Confidence (``Hit.score``)
    A softmax over the best ``pool`` entries in scope plus a *null hypothesis* ("none of
    them"), whose relevance is ``null_relevance``::

        score_i = exp(s * r_i) / (exp(s * r_null) + sum_j exp(s * r_j))

    This combines the absolute match (a top hit whose relevance is below the null's loses to
    "none of them") with the margin to the runner-up (two equally good entries split the
    probability, so neither is confident). It reads as "the probability that this entry is
    what the customer means"; the pool bound keeps it independent of KB size.

The records (:class:`KBEntry`, :class:`KBAnswer`, :class:`Clarification`, …) live in
:mod:`kefu.node.dialog.kb_entries` and are re-exported here.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Literal

import numpy as np

from kefu.errors import ConfigError
from kefu.node.dialog.kb_entries import (
    LANGS,
    Clarification,
    Hit,
    KBAnswer,
    KBEntry,
    RetrievalConfig,
    entries_from_dicts,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "LANGS",
    "WILDCARD_SCOPE",
    "Clarification",
    "Embed",
    "Hit",
    "KBAnswer",
    "KBEntry",
    "KnowledgeBase",
    "RetrievalConfig",
    "entries_from_dicts",
    "guess_lang",
    "tokenize",
]

#: An entry carrying this scope is visible whatever scopes the caller asks for.
WILDCARD_SCOPE = "*"
DEFAULT_THRESHOLD = 0.5

#: ``embed(texts) -> array [len(texts), dim]``; rows need not be normalised.
Embed = Callable[[Sequence[str]], np.ndarray]

# ---------------------------------------------------------------------------------------------
# Tokenisation

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_RUNS = re.compile(rf"([{_CJK}]+)|(\d+)|([^\W\d_{_CJK}]+)")
# Function characters: dropped as unigrams only; bigrams such as 怎么 / 什么 keep them.
_CJK_STOP = frozenset("的了吗呢吧啊呀哦嘛么呗哈嗯")
# Function words that would otherwise match nearly every English variant. Question words
# (how, when, where, why, what) stay: "how long" and "how much" are different questions.
_EN_STOP_WORDS = (
    "a an the is are am was were be been being do does did i me my mine we us our you your "
    "it its this that these those to of in on at for with by from and or but so if as can could "
    "would should will shall may might must please hi hello hey there any some just"
)
_EN_STOP = frozenset(_EN_STOP_WORDS.split())
_IRREGULAR = {
    "paid": "pay",
    "bought": "buy",
    "sent": "send",
    "took": "take",
    "taken": "take",
    "got": "get",
    "gotten": "get",
    "went": "go",
    "gone": "go",
    "made": "make",
    "left": "leave",
    "lost": "lose",
    "forgot": "forget",
    "forgotten": "forget",
}
_VOWELS = frozenset("aeiouy")


def _stem(word: str) -> str:
    """A light English stemmer: enough to equate refunds/refunded/refunding and ship/shipped.

    Not Porter: only the inflections customers vary (plural, -ing, -ed), then a final ``e``
    and a doubled final consonant are dropped so that arrive/arrived/arriving and
    ship/shipping/shipped meet. Both sides of a match go through it, so the odd stem
    (``charg``) is harmless.
    """
    w = _IRREGULAR.get(word, word)
    if len(w) <= 3:
        return w
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith(("sses", "ches", "shes", "xes", "zes")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if w.endswith("ing") and len(w) >= 6 and _VOWELS.intersection(w[:-3]):
        w = w[:-3]
    elif w.endswith("ied") and len(w) > 4:
        w = w[:-3] + "y"
    elif (
        w.endswith("ed") and len(w) >= 5 and not w.endswith("eed") and _VOWELS.intersection(w[:-2])
    ):
        w = w[:-2]
    if len(w) >= 4 and w.endswith("e") and not w.endswith("ee"):
        w = w[:-1]
    if len(w) >= 4 and w[-1] == w[-2] and w[-1] not in _VOWELS:
        w = w[:-1]
    return w


def _normalise(text: str) -> str:
    # NFKC folds full-width letters, digits and punctuation (？，ＡＢＣ１２) to their ASCII forms.
    return unicodedata.normalize("NFKC", text).lower().replace("'", "").replace("’", "")


def tokenize(text: str) -> list[str]:
    """Index terms of ``text``: CJK unigrams + bigrams, stemmed English words, ``0`` for numbers.

    >>> tokenize("退款多久到账")[:4]
    ['退', '款', '多', '久']
    >>> tokenize("Refunds were shipped!")
    ['refund', 'ship']
    """
    out: list[str] = []
    for m in _RUNS.finditer(_normalise(text)):
        cjk, digits, word = m.groups()
        if cjk:
            out.extend(c for c in cjk if c not in _CJK_STOP)
            out.extend(cjk[i : i + 2] for i in range(len(cjk) - 1))
        elif digits:
            out.append("0")
        elif word and word not in _EN_STOP:
            out.append(_stem(word))
    return out


def guess_lang(text: str) -> str:
    """``"zh"`` when CJK characters are at least as many as Latin words, else ``"en"``."""
    cjk = latin = 0
    for m in _RUNS.finditer(_normalise(text)):
        if m.group(1):
            cjk += len(m.group(1))
        elif m.group(3):
            latin += 1
    return "zh" if cjk and cjk >= latin else "en"


# ---------------------------------------------------------------------------------------------
# Index


class KnowledgeBase:
    """An immutable, scope-aware index over ``entries``; build once, query from any thread."""

    def __init__(
        self,
        entries: Iterable[KBEntry],
        *,
        embed: Embed | None = None,
        config: RetrievalConfig | None = None,
    ):
        self.config = config or RetrievalConfig()
        self._entries: tuple[KBEntry, ...] = tuple(entries)
        self._by_id: dict[str, int] = {}
        for i, e in enumerate(self._entries):
            if e.id in self._by_id:
                raise ConfigError(f"duplicate knowledge-base entry id {e.id!r}", field="id")
            self._by_id[e.id] = i

        # Variants, grouped contiguously by entry so np.maximum.reduceat gives per-entry maxima.
        texts: list[str] = []
        langs: list[str] = []
        owner: list[int] = []
        starts: list[int] = []
        for i, e in enumerate(self._entries):
            starts.append(len(texts))
            for lg in LANGS:
                for q in e.questions.get(lg, []):
                    if q.strip():
                        texts.append(q.strip())
                        langs.append(lg)
                        owner.append(i)
        self._texts = tuple(texts)
        self._langs = tuple(langs)
        self._owner = np.asarray(owner, dtype=np.int64)
        self._starts = np.asarray(starts, dtype=np.int64)
        self._ends = np.append(self._starts[1:], len(texts)) if starts else self._starts

        self._build_lexical([tokenize(t) for t in texts])
        self._scope_masks: dict[str, np.ndarray] = {}
        for i, e in enumerate(self._entries):
            for s in e.scopes:
                mask = self._scope_masks.setdefault(s, np.zeros(len(self._entries), dtype=bool))
                mask[i] = True

        self._embed = embed
        self._vectors: np.ndarray | None = None
        if embed is not None and texts:
            self._vectors = _unit_rows(embed(list(texts)), expect=len(texts))

    def _build_lexical(self, docs: list[list[str]]) -> None:
        k1, b = self.config.k1, self.config.b
        lengths = np.asarray([len(d) for d in docs], dtype=np.float64)
        self._avgdl = float(lengths.mean()) if lengths.sum() > 0 else 1.0
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for j, doc in enumerate(docs):
            norm = k1 * (1 - b + b * len(doc) / self._avgdl)
            for term, tf in Counter(doc).items():
                ids, ws = postings.setdefault(term, ([], []))
                ids.append(j)
                ws.append(tf * (k1 + 1) / (tf + norm))
        # Document frequency counts *entries*, not variants: a word repeated across one entry's
        # own variants (track, tracking, tracked) is specific to it, not common.
        n_entries = len(self._entries)
        self._idf: dict[str, float] = {}
        # Postings carry the full per-document BM25 weight (idf included): a query is then a
        # handful of vectorised scatter-adds.
        self._postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term, (ids, ws) in postings.items():
            df = len(set(self._owner[ids].tolist()))
            idf = math.log(1 + (n_entries - df + 0.5) / (df + 0.5))
            self._idf[term] = idf
            self._postings[term] = (
                np.asarray(ids, dtype=np.int64),
                np.asarray(ws, dtype=np.float64) * idf,
            )
        self._idf_unknown = math.log(1 + (n_entries + 0.5) / 0.5)

    # -- read-only views ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> tuple[KBEntry, ...]:
        return self._entries

    @property
    def has_dense(self) -> bool:
        return self._vectors is not None

    def get(self, entry_id: str) -> KBEntry | None:
        i = self._by_id.get(entry_id)
        return None if i is None else self._entries[i]

    # -- scoring --------------------------------------------------------------------------------

    def _lexical(self, terms: list[str]) -> np.ndarray:
        """BM25 of every variant divided by the query's self-score, clipped to [0, 1]."""
        scores = np.zeros(len(self._texts))
        if not terms:
            return scores
        k1, b = self.config.k1, self.config.b
        self_norm = k1 * (1 - b + b * len(terms) / self._avgdl)
        self_score = 0.0
        for term, tf in Counter(terms).items():
            self_score += self._idf.get(term, self._idf_unknown) * tf * (k1 + 1) / (tf + self_norm)
            posting = self._postings.get(term)
            if posting is not None:
                # Query term frequency is not multiplied in: repeats in a short query are noise.
                scores[posting[0]] += posting[1]
        return np.minimum(scores / self_score, 1.0) if self_score > 0 else scores

    def _scope_mask(self, scopes: Collection[str] | None) -> np.ndarray | None:
        if scopes is None:
            return None
        mask = np.zeros(len(self._entries), dtype=bool)
        for s in (*scopes, WILDCARD_SCOPE):
            m = self._scope_masks.get(s)
            if m is not None:
                mask |= m
        return mask

    def search(
        self,
        text: str,
        *,
        scopes: Collection[str] | None = None,
        lang: str | None = None,
        top_k: int = 5,
    ) -> list[Hit]:
        """The best ``top_k`` entries for ``text``, most relevant first; only entries that match.

        ``scopes``: only entries sharing one of these scopes (or carrying ``"*"``); None = all.
        ``lang``: the customer's language; among an entry's equally good variants, one in this
        language is reported as ``matched_question``. Ranking is otherwise language-blind.
        Ties keep the knowledge base's order, so results are deterministic.
        """
        if isinstance(scopes, str):
            scopes = (scopes,)
        if top_k <= 0 or not text.strip() or not self._texts:
            return []
        cfg = self.config
        lexical = self._lexical(tokenize(text))
        cosine: np.ndarray | None = None
        if self._vectors is not None and self._embed is not None:
            q = _unit_rows(self._embed([text]), expect=1)[0]
            cosine = self._vectors @ q
            dense = np.clip((cosine - cfg.dense_floor) / (1 - cfg.dense_floor), 0.0, 1.0)
            wl, wd = cfg.lexical_weight, cfg.dense_weight
            relevance = (wl * lexical + wd * dense) / (wl + wd)
        else:
            relevance = lexical

        per_entry = np.maximum.reduceat(relevance, self._starts)
        mask = self._scope_mask(scopes)
        if mask is not None:
            per_entry = np.where(mask, per_entry, 0.0)
        live = np.flatnonzero(per_entry > 1e-9)
        if live.size == 0:
            return []
        order = live[np.argsort(-per_entry[live], kind="stable")]
        pool = order[: max(cfg.pool, top_k)]

        # Softmax over the pool plus the null hypothesis; shift by the max for stability.
        rel = per_entry[pool]
        top = max(float(rel[0]), cfg.null_relevance)
        weights = np.exp(cfg.sharpness * (rel - top))
        total = float(weights.sum()) + math.exp(cfg.sharpness * (cfg.null_relevance - top))
        hits: list[Hit] = []
        for rank, i in enumerate(pool[:top_k]):
            j = self._best_variant(int(i), relevance, lang)
            hits.append(
                Hit(
                    entry=self._entries[i],
                    score=float(weights[rank]) / total,
                    relevance=float(rel[rank]),
                    lexical_score=float(lexical[j]),
                    dense_score=None if cosine is None else float(cosine[j]),
                    matched_question=self._texts[j],
                    matched_lang=self._langs[j],
                )
            )
        return hits

    def _best_variant(self, entry: int, relevance: np.ndarray, lang: str | None) -> int:
        lo, hi = int(self._starts[entry]), int(self._ends[entry])
        block = relevance[lo:hi]
        best = float(block.max())
        ties = [lo + k for k in np.flatnonzero(block >= best - 1e-12)]
        for j in ties:
            if self._langs[j] == lang:
                return int(j)
        return int(ties[0])

    def answer(
        self,
        text: str,
        *,
        lang: str | None = None,
        scopes: Collection[str] | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        candidates: int = 3,
    ) -> KBAnswer | Clarification:
        """The top entry's answer if its confidence reaches ``threshold``, else a Clarification.

        ``lang``: the customer's language (None: guessed from ``text``). The answer is in that
        language; only if the entry lacks it is the other language used, with ``fallback``
        set. Below the threshold the best ``candidates`` hits come back for a "did you mean"
        prompt — never a guess.
        """
        want = lang if lang in LANGS else guess_lang(text)
        if not tokenize(text) and not (self.has_dense and text.strip()):
            return Clarification(query=text, lang=want, reason="empty")
        hits = self.search(text, scopes=scopes, lang=want, top_k=max(candidates, 2))
        if not hits:
            return Clarification(query=text, lang=want, reason="no_match")
        best = hits[0]
        if best.score >= threshold:
            body, got = best.entry.answer_in(want)
            return KBAnswer(
                entry=best.entry,
                text=body,
                lang=got,
                requested_lang=want,
                fallback=got != want,
                confidence=best.score,
                hit=best,
            )
        # Candidates that are themselves hopeless would only confuse the customer.
        shown = tuple(h for h in hits[:candidates] if h.relevance >= self.config.null_relevance / 2)
        close = len(hits) > 1 and hits[1].relevance >= hits[0].relevance - 0.1
        reason: Literal["ambiguous", "low_confidence", "no_match"]
        if not shown:
            reason = "no_match"
        elif close and len(shown) > 1:
            reason = "ambiguous"
        else:
            reason = "low_confidence"
        return Clarification(query=text, lang=want, reason=reason, candidates=shown)


def _unit_rows(vectors: Any, *, expect: int) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != expect:
        raise ValueError(f"embed returned shape {arr.shape}, expected ({expect}, dim)")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norms > 0, norms, 1.0)
