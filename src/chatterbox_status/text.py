"""Text normalisation and chunking for text-to-speech.

TTS models read best from clean, plain text and can only take a bounded
amount of it per generation, so input goes through :func:`normalize` once
and is then cut by :func:`split_chunks` into pieces that are generated one
by one.

Choices made here:

* Dashes: an en or em dash used as punctuation becomes a spaced ASCII
  hyphen, `` - ``, which TTS models read as a short pause and
  :func:`split_chunks` treats as a clause boundary.  An en dash directly
  between digits is a range (``1990–2000``) and becomes a plain ``-``.
* Ellipses: NFKC turns ``…`` into ``...``.  Either spelling ends a sentence
  when the next word starts with anything but a lowercase letter
  (``Wait... Then``), and continues it otherwise (``Well... maybe``).
* Paragraphs: every line break is kept as a single ``\\n`` and is always a
  sentence boundary; sentences from consecutive paragraphs may still share
  a chunk, since fewer, fuller chunks give faster and steadier speech.
"""

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

_STRAIGHTEN = str.maketrans(
    {
        "\u2018": "'",  # left single quotation mark
        "\u2019": "'",  # right single quotation mark / apostrophe
        "\u201a": "'",  # single low-9 quotation mark
        "\u201b": "'",  # single high-reversed-9 quotation mark
        "\u201c": '"',  # left double quotation mark
        "\u201d": '"',  # right double quotation mark
        "\u201e": '"',  # double low-9 quotation mark
        "\u201f": '"',  # double high-reversed-9 quotation mark
        "\u2010": "-",  # hyphen (NFKC also maps the non-breaking hyphen here)
        "\u2012": "-",  # figure dash
        "\u2212": "-",  # minus sign
    }
)
_RANGE_DASH = re.compile(r"(?<=\d)\u2013(?=\d)")
_PAUSE_DASH = re.compile(r"\s*[\u2013\u2014\u2015]+\s*")
_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\S+")

# Stems (lowercase, final period removed) after which a period never ends a
# sentence, because they are almost always followed by the word they qualify.
_ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc",
        "e.g", "i.e", "a.m", "p.m", "u.s", "approx", "inc", "ltd", "co", "mt",
    }
)
# These are also ordinary words ("I said no."), so they only count as
# abbreviations in front of a number ("No. 5", "Fig. 3").
_NUMBER_ABBREVIATIONS = frozenset({"no", "fig"})
_OPENERS = "\"'([{\u00ab\u201c\u2018"
_CLOSERS = "\"')]}\u00bb\u201d\u2019"
_TERMINALS = ".!?\u2026"
_CLAUSE_END = (",", ";", ":", "\u2013", "\u2014", "\u2015")
_DASHES = "-\u2013\u2014\u2015"


def normalize(text: str) -> str:
    """Clean text so the TTS model sees plain, predictable characters.

    NFKC-normalises (fullwidth forms, ligatures, no-break spaces, ``…``),
    straightens curly quotes and apostrophes, turns en/em dashes into
    `` - `` pauses (or ``-`` in digit ranges), drops control and invisible
    format characters, collapses runs of spaces and tabs, and strips each
    line.  Line breaks survive as single ``\\n`` paragraph boundaries; blank
    lines are dropped.  Returns ``''`` for whitespace-only input.
    """
    text = unicodedata.normalize("NFKC", text).translate(_STRAIGHTEN)
    lines = (_normalize_line(line) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def split_chunks(text: str, max_length: int) -> list[str]:
    """Split already-normalised text into chunks of at most ``max_length``.

    Each chunk is generated on its own, so chunks follow the text's natural
    pauses: whole sentences are packed greedily into as few chunks as fit;
    a sentence too long on its own is broken at clause boundaries (``,``
    ``;`` ``:`` and dashes), a clause too long at word boundaries, and a
    word too long is hard-cut.  Pieces are joined with single spaces, so
    ``" ".join(chunks).split() == text.split()`` whenever no word has to
    be cut.  Raises ``ValueError`` if ``max_length`` is less than 1.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    pieces = [
        piece
        for paragraph in text.splitlines()
        for sentence in _split_after(_capped_words(paragraph, max_length), _ends_sentence)
        for piece in _fitting_pieces(sentence, max_length)
    ]
    return _pack(pieces, max_length)


def _capped_words(text: str, max_length: int) -> list[str]:
    """The words, each no longer than ``max_length``: a longer one would be cut into pieces
    of that size anyway, and cutting it first bounds the work any one word can cost."""
    return [word[start : start + max_length] for word in text.split() for start in range(0, len(word), max_length)]


def complete_sentences(text: str) -> tuple[str, str]:
    """Split text that is still arriving (an LLM's reply, piece by piece) into the whole
    sentences at its start, which more text cannot change, and the rest, to keep until
    more comes.

    A sentence is complete only once the next word has begun: whether a full stop ends a
    sentence depends on the word after it ("Dr. Smith", "No. 5", "wait... and").
    """
    words = list(_WORD.finditer(text))
    groups = _split_after([w.group() for w in words], _ends_sentence)
    if len(groups) < 2:
        return "", text
    end = words[sum(len(group) for group in groups[:-1]) - 1].end()
    return text[:end].strip(), text[end:].lstrip()


STRATEGIES = ("sentence", "paragraph", "word", "fixed")


def split_by_strategy(text: str, max_length: int, strategy: str) -> list[str]:
    """chatterbox-tts-api's streaming strategies, each keeping every word in order.

    ``sentence`` packs whole sentences (``split_chunks``); ``paragraph`` also never packs
    the end of one paragraph with the start of the next unless both whole paragraphs fit;
    ``word`` and ``fixed`` pack words up to ``max_length`` regardless of punctuation.
    """
    if strategy == "sentence":
        return split_chunks(text, max_length)
    if strategy == "paragraph":
        paragraphs = [p for p in text.splitlines() if p.strip()]
        whole = [p.strip() for p in paragraphs if len(p.strip()) <= max_length]
        if len(whole) == len(paragraphs):
            return _pack(whole, max_length)
        return [chunk for p in paragraphs for chunk in split_chunks(p, max_length)]
    if strategy in ("word", "fixed"):
        return _pack(_fitting_pieces(text.split(), max_length, clauses=False), max_length)
    raise ValueError(f"unknown chunking strategy {strategy!r}")


@dataclass(frozen=True)
class Chunking:
    """How one request's text becomes generation chunks."""

    max_length: int
    strategy: str = "sentence"
    # Caps the first chunk of a streamed response, so its first audio comes early.
    first_length: int | None = None

    def plan(self, text: str) -> list[str]:
        """The chunks; the first is the whole sentences that fit ``first_length``, or the
        first clause of a longer first sentence, and the rest is packed again."""
        chunks = split_by_strategy(text, self.max_length, self.strategy)
        if self.first_length is None or not chunks or len(chunks[0]) <= self.first_length:
            return chunks
        sentences = [" ".join(words) for words in _split_after(chunks[0].split(), _ends_sentence)]
        head = _pack(sentences, self.first_length)[0]
        if len(head) > self.first_length:
            head = _fitting_pieces(head.split(), self.first_length)[0]
        rest = chunks[0][len(head) :].strip()
        return [head, *split_by_strategy("\n".join([rest, *chunks[1:]]), self.max_length, self.strategy)]


def _normalize_line(line: str) -> str:
    """Normalise one line; it holds no line breaks, so dashes cannot join paragraphs."""
    visible = "".join(
        ch for ch in line if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf")
    )
    visible = _RANGE_DASH.sub("-", visible)
    # Runs of spaces are collapsed first, so the dash pattern's \s* never rescans a long run.
    visible = _PAUSE_DASH.sub(" - ", _WHITESPACE.sub(" ", visible))
    return _WHITESPACE.sub(" ", visible).strip()


def _split_after(words: list[str], is_boundary: Callable[[str, str], bool]) -> list[list[str]]:
    """Group words, closing a group after each word where ``is_boundary(word, next_word)``."""
    groups: list[list[str]] = []
    current: list[str] = []
    for word, next_word in zip(words, [*words[1:], ""]):
        current.append(word)
        if not next_word or is_boundary(word, next_word):
            groups.append(current)
            current = []
    return groups


def _ends_sentence(word: str, next_word: str) -> bool:
    """Whether terminal punctuation on ``word`` really ends its sentence.

    Closing quotes and brackets after the punctuation stay with the word,
    so ``"Stop."`` ends a sentence as a whole.
    """
    core = word.rstrip(_CLOSERS)
    # rstrip, not a regex search: "[.!?]+$" rescans every run of dots inside a word (quadratic).
    stem = core.rstrip(_TERMINALS)
    punctuation = core[len(stem) :]
    if not punctuation:
        return False
    if "!" in punctuation or "?" in punctuation:
        return True
    if punctuation != ".":
        # An ellipsis trailing into a lowercase word is a hesitation, not an end.
        return not next_word.lstrip(_OPENERS)[:1].islower()
    stem = stem.lstrip(_OPENERS)
    if stem.lower() in _ABBREVIATIONS:
        return False
    if stem.lower() in _NUMBER_ABBREVIATIONS:
        return not next_word[:1].isdigit()
    return not _is_initials(stem)


def _is_initials(stem: str) -> bool:
    """Whether ``stem`` is capital initials such as ``J`` or ``J.R.R``.

    A lone ``I`` is far more often the pronoun ending a sentence ("So did I.")
    than an initial, so it does not count.
    """
    parts = stem.split(".")
    return stem != "I" and all(len(part) == 1 and part.isupper() for part in parts)


def _ends_clause(word: str, _next_word: str) -> bool:
    """Whether ``word`` closes a clause: trailing , ; : or a dash, or a standalone dash."""
    return word.rstrip(_CLOSERS).endswith(_CLAUSE_END) or not word.strip(_DASHES)


def _fitting_pieces(sentence: list[str], max_length: int, clauses: bool = True) -> list[str]:
    """Break one sentence into pieces of at most ``max_length``, coarsest boundaries first
    (clauses unless told not to, then words, then hard cuts)."""
    whole = " ".join(sentence)
    if len(whole) <= max_length:
        return [whole]
    pieces: list[str] = []
    for clause in _split_after(sentence, _ends_clause) if clauses else [sentence]:
        joined = " ".join(clause)
        if len(joined) <= max_length:
            pieces.append(joined)
        else:
            pieces.extend(
                word[start : start + max_length]
                for word in clause
                for start in range(0, len(word), max_length)
            )
    return pieces


def _pack(pieces: list[str], max_length: int) -> list[str]:
    """Join consecutive pieces with single spaces while they fit, for fewer, fuller chunks."""
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 1 + len(piece) <= max_length:
            chunks[-1] += " " + piece
        else:
            chunks.append(piece)
    return chunks
