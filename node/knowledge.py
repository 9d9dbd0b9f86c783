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
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kefu.errors import ConfigError

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

LANGS = ("zh", "en")
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
# Data


@dataclass(frozen=True)
class KBEntry:
    """One knowledge-base entry: question variants and answers per language ("zh", "en")."""

    id: str
    scopes: tuple[str, ...]
    questions: dict[str, list[str]]
    answers: dict[str, str]
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"entry {self.id!r}: "
        if not isinstance(self.id, str) or not self.id.strip():
            raise ConfigError("a knowledge-base entry needs a non-empty id", field="id")
        for name, mapping in (("questions", self.questions), ("answers", self.answers)):
            bad = sorted(set(mapping) - set(LANGS))
            if bad:
                raise ConfigError(f"{where}unknown language {bad[0]!r} (use zh or en)", field=name)
        if not any(q.strip() for qs in self.questions.values() for q in qs):
            raise ConfigError(f"{where}needs at least one question", field="questions")
        if not any(a.strip() for a in self.answers.values()):
            raise ConfigError(f"{where}needs an answer in zh or en", field="answers")
        if isinstance(self.scopes, str):
            raise ConfigError(f"{where}scopes must be a list, not a string", field="scopes")

    # Dict fields are unhashable; the id is unique within a knowledge base.
    def __hash__(self) -> int:
        return hash(self.id)

    def answer_in(self, lang: str) -> tuple[str, str]:
        """``(answer, its language)``: ``lang`` if present, else the other language."""
        text = self.answers.get(lang, "").strip()
        if text:
            return text, lang
        for other in LANGS:
            if self.answers.get(other, "").strip():
                return self.answers[other].strip(), other
        raise AssertionError("unreachable: __post_init__ requires an answer")

    def question_in(self, lang: str) -> str:
        """The first question variant in ``lang`` (else any), for "did you mean …?" prompts."""
        for lg in (lang, *LANGS):
            for q in self.questions.get(lg, []):
                if q.strip():
                    return q.strip()
        raise AssertionError("unreachable: __post_init__ requires a question")


def entries_from_dicts(
    rows: Iterable[Mapping[str, Any]], *, path: str | Path | None = None
) -> list[KBEntry]:
    """Entries from parsed YAML/JSON rows; a malformed row is a ConfigError naming its field."""
    out: list[KBEntry] = []
    for i, row in enumerate(rows):
        pre = f"entries[{i}]"
        try:
            out.append(
                KBEntry(
                    id=str(row["id"]),
                    scopes=tuple(str(s) for s in row.get("scopes", ())),
                    questions={str(k): [str(q) for q in v] for k, v in row["questions"].items()},
                    answers={str(k): str(v) for k, v in row["answers"].items()},
                    tags=tuple(str(t) for t in row.get("tags", ())),
                )
            )
        except ConfigError as exc:
            raise ConfigError(exc.reason, path=path, field=f"{pre}.{exc.field}") from exc
        except KeyError as exc:
            raise ConfigError("missing key", path=path, field=f"{pre}.{exc.args[0]}") from exc
        except (AttributeError, TypeError) as exc:
            raise ConfigError(f"malformed entry: {exc}", path=path, field=pre) from exc
    return out


@dataclass(frozen=True, kw_only=True)
class Hit:
    """One retrieved entry. ``score`` is the confidence in [0, 1] (see the module docstring)."""

    entry: KBEntry
    score: float
    relevance: float  # fused, normalised relevance in [0, 1] that the confidence is built on
    lexical_score: float  # BM25 / query self-score, in [0, 1]
    dense_score: float | None  # raw cosine of the matched variant; None without ``embed``
    matched_question: str
    matched_lang: str


@dataclass(frozen=True, kw_only=True)
class KBAnswer:
    """A confident answer, in the customer's language unless ``fallback`` says otherwise."""

    entry: KBEntry
    text: str
    lang: str  # the language of ``text``
    requested_lang: str
    fallback: bool  # True when the entry has no answer in ``requested_lang``
    confidence: float
    hit: Hit


_PROMPTS = {
    "zh": {
        "ask": "抱歉，我不太确定您的问题。您是想问：",
        "none": "抱歉，这个问题我暂时无法回答。您可以换个说法再问一次。",
        "human": "如需帮助，也可以回复“人工”转接人工客服。",
    },
    "en": {
        "ask": "Sorry, I'm not sure I understood. Did you mean:",
        "none": "Sorry, I can't answer that yet. Could you rephrase the question?",
        "human": 'You can also reply "agent" to talk to a person.',
    },
}


@dataclass(frozen=True, kw_only=True)
class Clarification:
    """No confident answer: ask "did you mean …?" from ``candidates``, or offer a human.

    ``reason``: ``empty`` (no usable text), ``no_match`` (nothing in scope matches at all),
    ``ambiguous`` (two or more candidates are close), ``low_confidence`` (one weak candidate).
    """

    query: str
    lang: str
    reason: Literal["empty", "no_match", "ambiguous", "low_confidence"]
    candidates: tuple[Hit, ...] = ()

    def prompt(self, lang: str | None = None, *, offer_human: bool = True) -> str:
        """A user-facing reply in ``lang`` (default: the customer's language)."""
        words = _PROMPTS.get(lang or self.lang, _PROMPTS["en"])
        lg = lang or self.lang
        if self.candidates:
            lines = [words["ask"]]
            lines += [f"{i}. {h.entry.question_in(lg)}" for i, h in enumerate(self.candidates, 1)]
        else:
            lines = [words["none"]]
        if offer_human:
            lines.append(words["human"])
        return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class RetrievalConfig:
    """Ranking knobs. Defaults suit short FAQ-style question variants."""

    k1: float = 1.2
    b: float = 0.6  # gentler than the usual 0.75: variants are short and of similar length
    lexical_weight: float = 0.5  # weighted-sum fusion; only used when ``embed`` is given
    dense_weight: float = 0.5
    dense_floor: float = 0.2  # cosine that counts as "unrelated" for the encoder in use
    sharpness: float = 10.0  # softmax inverse temperature over relevances in [0, 1]
    null_relevance: float = 0.45  # relevance of "none of these"; below it, confidence < 0.5
    pool: int = 8  # entries the softmax runs over (keeps confidence independent of KB size)

    def __post_init__(self) -> None:
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ConfigError("need k1 >= 0 and 0 <= b <= 1", field="k1")
        if self.lexical_weight < 0 or self.dense_weight < 0:
            raise ConfigError("fusion weights must be >= 0", field="lexical_weight")
        if self.lexical_weight + self.dense_weight <= 0:
            raise ConfigError("at least one fusion weight must be > 0", field="lexical_weight")
        if not 0 <= self.dense_floor < 1:
            raise ConfigError("dense_floor must be in [0, 1)", field="dense_floor")
        if self.pool < 1 or self.sharpness <= 0:
            raise ConfigError("pool must be >= 1 and sharpness > 0", field="pool")


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
