"""Knowledge-base records: an entry (question variants and answers in Chinese and English,
with the scopes that may see it), a retrieved hit, a confident answer, a "did you mean …?"
clarification with its bilingual prompt, and the retrieval knobs.

The index that produces them is :class:`kefu.node.dialog.knowledge.KnowledgeBase`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kefu.errors import ConfigError

__all__ = [
    "LANGS",
    "Clarification",
    "Hit",
    "KBAnswer",
    "KBEntry",
    "RetrievalConfig",
    "entries_from_dicts",
]

LANGS = ("zh", "en")


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
