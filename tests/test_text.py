"""Tests for text normalisation and chunking (chatterbox_status.text)."""

import random

import pytest

from chatterbox_status.text import Chunking, complete_sentences, normalize, split_by_strategy, split_chunks

# Sentence-boundary tests pick max_length so that packing cannot hide a wrong
# split or a missed one:
# * "Go. " + sentence with max_length=len(sentence) yields ["Go.", sentence]
#   only if the sentence is kept whole; a split inside it would let its first
#   part pack onto "Go.".
# * f"{first} {second}" with max_length=len(second) yields [first, second]
#   only if a boundary falls between them; otherwise the words of first and
#   second would be packed together.

# --- normalize --------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "  \t \n\r\n  \u3000\u00a0 ", "\x00\u200b\ufeff\n"])
def test_normalize_whitespace_only_is_empty(text):
    assert normalize(text) == ""


def test_normalize_straightens_curly_quotes_and_apostrophes():
    text = (
        "\u201cHello,\u201d she said. \u2018It\u2019s fine.\u2019 "
        "\u201eLow\u201f \u201aok\u201b"
    )
    assert normalize(text) == "\"Hello,\" she said. 'It's fine.' \"Low\" 'ok'"


def test_normalize_applies_nfkc():
    assert normalize("\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48") == "Fullwidth"
    assert normalize("\ufb01ne") == "fine"
    assert normalize("10\u00a0km") == "10 km"


def test_normalize_turns_ellipsis_character_into_three_periods():
    assert normalize("Wait\u2026 what?") == "Wait... what?"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("He paused\u2014then left.", "He paused - then left."),
        ("He paused \u2014 then left.", "He paused - then left."),
        ("He paused \u2013 then left.", "He paused - then left."),
        ("Wait\u2014\u2014no.", "Wait - no."),
        ("\u2014Yes, sir.", "- Yes, sir."),
        ("Pages 10\u201320 and 1990\u20132000.", "Pages 10-20 and 1990-2000."),
        ("Pages 10 \u2013 20.", "Pages 10 - 20."),
        ("Non\u2011breaking, x \u2212 y, well\u2010known.", "Non-breaking, x - y, well-known."),
    ],
)
def test_normalize_dashes(text, expected):
    assert normalize(text) == expected


def test_normalize_drops_control_and_invisible_format_characters():
    assert normalize("a\x00b\x07c\x1bd\x7fe") == "abcde"
    assert normalize("\ufeffzero\u200bwidth co\u00adoperate") == "zerowidth cooperate"


def test_normalize_keeps_line_breaks_as_single_paragraph_boundaries():
    text = "  One. \r\nTwo.\rThree.\n\n\n  Four.\u2028Five.\u2029Six.  "
    assert normalize(text) == "One.\nTwo.\nThree.\nFour.\nFive.\nSix."


def test_normalize_dash_does_not_join_paragraphs():
    assert normalize("He stopped\u2014\nThen left.") == "He stopped -\nThen left."


def test_normalize_collapses_spaces_and_tabs_and_strips():
    assert normalize("  a \t  b\t\tc   ") == "a b c"
    assert normalize("\tindented line  \n   next\t") == "indented line\nnext"


# --- split_chunks: arguments and trivial input ------------------------------


@pytest.mark.parametrize("max_length", [0, -1, -280])
def test_split_chunks_rejects_max_length_below_one(max_length):
    for text in ("Hello there.", ""):
        with pytest.raises(ValueError, match="max_length"):
            split_chunks(text, max_length)


@pytest.mark.parametrize("text", ["", "   ", "\n\n", " \n \t "])
def test_split_chunks_empty_text_gives_no_chunks(text):
    assert split_chunks(text, 50) == []
    # The server refuses empty input before it plans, but plan() itself must not fail on it.
    assert Chunking(50, first_length=10).plan(text) == []


def test_split_chunks_short_text_is_one_chunk():
    assert split_chunks("Hello there.", 280) == ["Hello there."]
    assert split_chunks("  Hello   there.  ", 12) == ["Hello there."]


# --- split_chunks: sentence boundaries --------------------------------------

SECOND = "Then he left the room quietly."


@pytest.mark.parametrize(
    "first",
    [
        "It ended.",
        "Stop!",
        "Why?",
        "Really?!",
        "No way!!",
        "Wait...",
        "Wait\u2026",
        "Hmm?..",
        'He said "Stop."',
        "He said 'Stop.'",
        '"Why?"',
        "(It worked.)",
        "[Done.]",
        "I said no.",
        "I ate a fig.",
        "So did I.",
        "It costs $4.50.",
        "Pi is 3.14.",
        "Get v1.2.3.",
        "In 1999.",
        # A word in capitals, or one lowercase letter, is not an initial: the full stop ends it.
        "He works at NASA.",
        "Solve for x.",
    ],
)
def test_split_chunks_splits_at_sentence_end(first):
    assert split_chunks(f"{first} {SECOND}", len(SECOND)) == [first, SECOND]


@pytest.mark.parametrize("first", ['"Stop!"', '"Why?"', "Why?!"])
def test_split_chunks_splits_after_exclamation_or_question_before_lowercase(first):
    second = "he shouted at the crowd."
    assert split_chunks(f"{first} {second}", len(second)) == [first, second]


def test_split_chunks_closing_quote_stays_with_sentence():
    assert split_chunks('He said "Stop." Then left.', 16) == ['He said "Stop."', "Then left."]


@pytest.mark.parametrize(
    "sentence",
    [
        "Mr. Smith is here.",
        "Mrs. Smith is here.",
        "Ms. Lee called us.",
        "Dr. Jones left early.",
        "Prof. Xavier teaches here.",
        "John Smith Sr. retired.",
        "Sammy Davis Jr. sang well.",
        "Visit St. Louis in May.",
        "It was cats vs. dogs today.",
        "Bring pens, paper, etc. and food.",
        "Use a tool, e.g. a hammer.",
        "Use a tool, i.e. the hammer.",
        "We wake at 7 a.m. every day.",
        "We meet at 5 p.m. on Fridays.",
        "The U.S. Army marched on.",
        "Room No. 5 is free now.",
        "We chose No. 7, the blue one.",
        "See Fig. 3 for details.",
        "See Fig. 3b for details.",
        "It takes approx. ten minutes.",
        "Acme Inc. makes anvils.",
        "Acme Ltd. makes anvils.",
        "Acme Co. makes anvils.",
        "We climbed Mt. Everest slowly.",
        "(Dr. Who) is on now.",
        "DR. JONES LEFT EARLY.",
        "J. R. R. Tolkien wrote it.",
        "J.R.R. Tolkien wrote it.",
        "George W. Bush spoke today.",
        "Pi is 3.14 or so they say.",
        "Please update to v1.2.3 today.",
        "It costs $4.50 at the shop.",
        "Call 555.123.4567 after lunch.",
        "Well... maybe not today.",
        "Well\u2026 maybe not today.",
        "Well... iPhones sold out fast.",
        'He said "Wait..." and left us.',
        "Wait... (maybe) we should go.",
    ],
)
def test_split_chunks_keeps_sentence_whole(sentence):
    assert split_chunks(f"Go. {sentence}", len(sentence)) == ["Go.", sentence]


def test_split_chunks_ellipsis_followed_by_capital_ends_sentence():
    assert split_chunks("Wait... Then go.", 8) == ["Wait...", "Then go."]
    assert split_chunks("Wait\u2026 Then go.", 8) == ["Wait\u2026", "Then go."]


def test_split_chunks_newline_is_always_a_boundary():
    assert split_chunks(f"First line\n{SECOND}", len(SECOND)) == ["First line", SECOND]
    assert split_chunks(f"Ask Dr.\n{SECOND}", len(SECOND)) == ["Ask Dr.", SECOND]
    assert split_chunks(f"Well...\n{SECOND.lower()}", len(SECOND)) == ["Well...", SECOND.lower()]


def test_split_chunks_packs_sentences_across_paragraphs():
    assert split_chunks("One.\nTwo.\n\nThree.", 50) == ["One. Two. Three."]


# --- split_chunks: packing --------------------------------------------------


def test_split_chunks_packs_sentences_greedily():
    text = "One two. Three four. Five six. Seven."
    assert split_chunks(text, 20) == ["One two. Three four.", "Five six. Seven."]
    assert split_chunks(text, 19) == ["One two.", "Three four.", "Five six. Seven."]
    assert split_chunks(text, len(text)) == [text]


def test_split_chunks_joins_with_single_spaces():
    assert split_chunks("One.   Two.\t\tThree.", 50) == ["One. Two. Three."]


# --- split_chunks: over-long sentences --------------------------------------


def test_split_chunks_long_sentence_splits_at_clauses():
    text = "Alpha beta, gamma delta; epsilon zeta: eta theta - iota kappa."
    assert split_chunks(text, 25) == [
        "Alpha beta, gamma delta;",
        "epsilon zeta: eta theta -",
        "iota kappa.",
    ]


def test_split_chunks_clause_punctuation_before_closing_quote():
    # Were '"Stop,"' not a clause end, its words would pack with the next clause's.
    assert split_chunks('"Stop," she said to the crowd.', 22) == [
        '"Stop,"',
        "she said to the crowd.",
    ]
    assert split_chunks("(Yes, sir;) she said to the crowd.", 22) == [
        "(Yes, sir;)",
        "she said to the crowd.",
    ]


def test_split_chunks_unnormalised_dashes_are_clause_boundaries():
    text = "He waited\u2014 a long time \u2014 then left the room."
    assert split_chunks(text, 25) == ["He waited\u2014 a long time \u2014", "then left the room."]


def test_split_chunks_long_clause_splits_at_words():
    text = "Short clause, then a considerably longer clause without any commas at all."
    assert split_chunks(text, 30) == [
        "Short clause, then a",
        "considerably longer clause",
        "without any commas at all.",
    ]


def test_split_chunks_long_sentence_without_punctuation_splits_at_words():
    text = "the quick brown fox jumps over the lazy dog"
    assert split_chunks(text, 15) == ["the quick brown", "fox jumps over", "the lazy dog"]


def test_split_chunks_does_not_split_inside_hyphenated_or_decimal_words():
    text = "a well-known value 3.14159 and v10.2.3-beta here"
    assert split_chunks(text, 14) == [
        "a well-known",
        "value 3.14159",
        "and",
        "v10.2.3-beta",
        "here",
    ]


def test_split_chunks_hard_cuts_overlong_word():
    assert split_chunks("Supercalifragilistic", 8) == ["Supercal", "ifragili", "stic"]
    assert split_chunks("a Supercalifragilistic b", 8) == ["a", "Supercal", "ifragili", "stic b"]


def test_split_chunks_max_length_one():
    assert split_chunks("ab c.", 1) == ["a", "b", "c", "."]


# --- split_chunks: invariants -----------------------------------------------

PARAGRAPHS = [
    "Hello there.",
    'He said "Stop." Then he left. She didn\'t follow him; she had, after all, '
    "seen this before - many times, in fact.",
    "Mr. and Mrs. Smith met Dr. Jones at 5 p.m. on Main St. in the U.S. capital. "
    "They talked about Fig. 3, No. 7, and approx. twelve other things, e.g. taxes, "
    "i.e. the boring part, etc. It was fine.",
    "J. R. R. Tolkien wrote it. J.R.R. Tolkien was British. So was I. Really?! Yes.",
    "Pi is 3.14159, the price is $4.50, and the version is v1.2.3. That's all.",
    "Well... maybe. Or maybe not... Then again, who knows? Nobody!",
    "Line one without punctuation\nLine two, also without any\n\nLine four. Done.",
    "(Parenthetical sentence.) [Bracketed one!] 'Quoted?' \"Double-quoted.\" End.",
    "Chapter 1\n\nIt was a bright cold day in April, and the clocks were striking "
    "thirteen. Winston Smith, his chin nuzzled into his breast in an effort to "
    "escape the vile wind, slipped quickly through the glass doors of Victory "
    "Mansions, though not quickly enough to prevent a swirl of gritty dust from "
    "entering along with him.",
    "A sentence with no punctuation at all that just keeps going and going and "
    "going for quite a while without ever stopping to take a breath or a pause",
    "Short. Tiny. Wee. Small. Little. Mini. Brief. Terse. Curt. Quick.",
    "Semicolons; colons: commas, dashes - and more; all in one long sentence that "
    "needs to be split somewhere sensible: probably here, or there - who can say.",
    "Visit https://example.com/a/b?c=d for details. Email me at a.b@example.org!",
    "\u201cCurly,\u201d she said\u2014quietly\u2026 \u2018Very curly.\u2019",
]

VOCABULARY = [
    "the", "a", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and",
    "Then", "He", "She", "It", "word,", "pause;", "list:", "-", "\u2014", "end.",
    "stop!", "why?", "really?!", "Wait...", "well...", "Mr.", "Dr.", "etc.",
    "e.g.", "U.S.", "No.", "5", "J.", "3.14", "v1.2.3", "$4.50", '"Stop."',
    "(aside)", "'quoted'", "it's", "well-known", "\u2026", ".", "?",
    "extraordinarily", "incomprehensibilities",
]


def _random_texts():
    for seed in range(40):
        rng = random.Random(seed)
        words = rng.choices(VOCABULARY, k=rng.randint(1, 120))
        separators = rng.choices([" ", " ", " ", "  ", "\t", "\n"], k=len(words))
        yield "".join(w + s for w, s in zip(words, separators))


def assert_chunk_invariants(text, max_length):
    chunks = split_chunks(text, max_length)
    for chunk in chunks:
        assert chunk
        assert chunk == chunk.strip()
        assert len(chunk) <= max_length
    # Greedy packing: no two neighbouring chunks would have fitted as one.
    for left, right in zip(chunks, chunks[1:]):
        assert len(left) + 1 + len(right) > max_length
    # Nothing dropped, duplicated or reordered ...
    assert "".join(" ".join(chunks).split()) == "".join(text.split())
    # ... and words stay whole unless one is longer than max_length.
    if all(len(word) <= max_length for word in text.split()):
        assert " ".join(chunks).split() == text.split()


@pytest.mark.parametrize("max_length", [1, 7, 20, 50, 280])
def test_split_chunks_invariants_on_paragraphs(max_length):
    for paragraph in PARAGRAPHS:
        assert_chunk_invariants(paragraph, max_length)
        assert_chunk_invariants(normalize(paragraph), max_length)
    assert_chunk_invariants("\n\n".join(PARAGRAPHS), max_length)


@pytest.mark.parametrize("max_length", [1, 7, 20, 50, 280])
def test_split_chunks_invariants_on_random_words(max_length):
    for text in _random_texts():
        assert_chunk_invariants(text, max_length)
        assert_chunk_invariants(normalize(text), max_length)


def test_normalize_is_idempotent():
    messy = "\u201cHi\u201d\u2014she said\u2026 \u2018bye\u2019\t\x00\r\n\r\nok"
    for text in [*PARAGRAPHS, messy]:
        once = normalize(text)
        assert normalize(once) == once


# -- plan_chunks: a short first chunk for streaming ------------------------------------------


def test_plan_chunks_without_first_length_is_split_chunks():
    text = "One sentence here. Another one follows it. And a third to finish."
    assert Chunking(40).plan(text) == split_chunks(text, 40)


def test_plan_chunks_caps_the_first_chunk_and_keeps_every_word_in_order():
    text = "Hi there. " + "This is a much longer sentence that keeps going for quite a while. " * 4
    chunks = Chunking(200, first_length=30).plan(text.strip())
    assert chunks[0] == "Hi there."
    assert all(len(c) <= 200 for c in chunks)
    assert " ".join(chunks).split() == text.split()
    assert split_chunks(text.strip(), 200)[0] != chunks[0]  # the cap changed the plan


def test_plan_chunks_splits_a_long_first_sentence_at_clauses():
    text = "When the rain stopped, the children ran outside, and the dog followed them. Then quiet."
    chunks = Chunking(280, first_length=25).plan(text)
    assert chunks[0] == "When the rain stopped,"
    assert " ".join(chunks).split() == text.split()


# -- chatterbox-tts-api's streaming strategies ------------------------------------------------

STRATEGY_TEXT = (
    "First paragraph has two sentences. Here is the second one.\n"
    "Second paragraph, short.\n"
    "Third paragraph is here, with a clause, and then another clause before it ends."
)


@pytest.mark.parametrize("strategy", ["sentence", "paragraph", "word", "fixed"])
@pytest.mark.parametrize("size", [20, 50, 120])
def test_every_strategy_keeps_every_word_in_order_within_the_size(strategy, size):
    chunks = split_by_strategy(STRATEGY_TEXT, size, strategy)
    assert all(0 < len(c) <= size for c in chunks)
    assert " ".join(chunks).split() == STRATEGY_TEXT.split()


def test_paragraph_strategy_counts_a_paragraph_of_exactly_the_size_as_whole():
    # Every paragraph fits, the last one exactly: whole paragraphs are packed, so the first two share a chunk.
    text = "One.\nTwo.\nThird one is twenty."
    assert split_by_strategy(text, 20, "paragraph") == ["One. Two.", "Third one is twenty."]


def test_paragraph_strategy_packs_whole_paragraphs_only():
    chunks = split_by_strategy(STRATEGY_TEXT, 90, "paragraph")
    assert chunks[0] == "First paragraph has two sentences. Here is the second one. Second paragraph, short."
    assert chunks[1] == "Third paragraph is here, with a clause, and then another clause before it ends."


def test_word_strategy_ignores_sentence_ends():
    text = "One two. Three four. Five six."
    assert split_by_strategy(text, 14, "word") == ["One two. Three", "four. Five", "six."]
    assert split_by_strategy(text, 14, "sentence") == ["One two.", "Three four.", "Five six."]


def test_word_strategy_ignores_clause_ends_too():
    # By clauses it would be ["We sat,", "talked a lot."]; by words the first chunk takes all that fits.
    assert split_by_strategy("We sat, talked a lot.", 14, "word") == ["We sat, talked", "a lot."]
    assert split_by_strategy("We sat, talked a lot.", 14, "fixed") == ["We sat, talked", "a lot."]


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown chunking strategy 'semantic'"):
        split_by_strategy("Hello.", 50, "semantic")


@pytest.mark.parametrize(
    ("arrived", "complete", "rest"),
    [
        ("The kettle is on. Tea", "The kettle is on.", "Tea"),
        # A full stop at the end may still be an abbreviation or a hesitation: wait for the next word.
        ("The kettle is on.", "", "The kettle is on."),
        ("Ask Dr. ", "", "Ask Dr. "),
        ("Ask Dr. Smith. Now", "Ask Dr. Smith.", "Now"),
        ("It is No. 5 now! And", "It is No. 5 now!", "And"),
        ("Wait... and then. So", "Wait... and then.", "So"),
        ("One.\nTwo. Thr", "One.\nTwo.", "Thr"),
        ("", "", ""),
    ],
)
def test_complete_sentences_of_text_still_arriving(arrived, complete, rest):
    assert complete_sentences(arrived) == (complete, rest)


def test_complete_sentences_fed_piece_by_piece_say_every_word_once():
    text = "Dr. Smith arrived at 5 p.m. on the dot. Nobody expected him... or did they? We will see."
    spoken, pending = [], ""
    for i in range(0, len(text), 3):
        done, pending = complete_sentences(pending + text[i : i + 3])
        if done:
            spoken.append(done)
    spoken.append(pending)
    assert " ".join(spoken).split() == text.split()
    assert spoken[0] == "Dr. Smith arrived at 5 p.m. on the dot."
