"""The chat room's protocol, tested: what every room in the workbook speaks.

Lesson 03 teaches ``clean`` by hand (``tests/test_architecture.py`` proves its
copy is this one) and takes the rest from here: the limits, the texts, and the
name rules its notebook shows (``name_key``, ``name_problem``). Later rooms (lesson 05's exercise, lesson 08's asyncio
room, lesson 11's TLS room) import it from here, and ``tests/test_chat_rooms.py``
runs one conformance suite against all of them.

The protocol, as a client sees it (plain UTF-8 lines ending in \\n; \\r\\n works too)::

    server: * welcome to the chat room; what is your name?
    you:    alice                    "! ..." if taken or invalid: try another
    server: * welcome, alice! /who lists who is here, /quit leaves
    you:    hello                    every OTHER member gets "alice: hello"
    you:    /who                     "* online: alice, bob" (one line, "... and N more")
    you:    /quit                    "* bye", then the server closes
    others see "* alice joined", "* alice left", "* alice left (idle)".

Bounds, so that no client can make the server send what another cannot take:
a line received is at most ``MAX_LINE`` bytes (longer: "! line too long", and
the connection closes); its cleaned text is cut to ``MAX_TEXT`` bytes (invalid
UTF-8 grows up to 3x when replaced); every line the server sends is at most
``MAX_SEND`` bytes before its newline. A client that reads lines of up to
``MAX_SEND`` bytes can read everything a room sends.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Optional

# --- Limits ---
MAX_LINE = 4096          # bytes in one line a client sends, without its newline
MAX_TEXT = 4096          # bytes in a cleaned message (invalid UTF-8 triples when replaced)
MAX_SEND = 8192          # bytes in any line the server sends, without its newline
MAX_NAME = 32            # characters in a name
MAX_MEMBERS = 500        # named members, at most
MAX_WAITING = 50         # connections still choosing a name; beyond this the oldest is dropped
RESERVED_FDS = 64        # descriptors kept for everything else the process opens (at most)
IDLE_TIMEOUT = 300.0     # seconds a member may stay silent (an empty line counts as speaking)
NAMING_TIMEOUT = 30.0    # seconds a new connection has to send a name

# --- What the server says ---
GREETING = "* welcome to the chat room; what is your name?"
TAKEN = "! that name is taken; try another"
NAME_LENGTH = f"! a name has 1 to {MAX_NAME} characters; try again"
NAME_INVISIBLE = "! a name has no spaces or invisible characters; try again"
NAME_MIXED = "! a name may not mix alphabets (such as Latin and Cyrillic); try again"
NAME_MARKS = "! a name may not pile accents on a letter, or repeat one; try again"
UNKNOWN = "! unknown command"
BYE = "* bye"
TOO_LONG = "! line too long"
ROOM_FULL = "! the room is full; try later"
CROWDED = "! too many people are choosing a name; try again"
NAMING_TOO_SLOW = "! no name in time; bye"
IDLE_BYE = "! idle for too long; bye"
LEFT, LEFT_IDLE, LEFT_SLOW = "left", "left (idle)", "left (too slow to keep up)"


def welcome(name: str) -> str:
    """The line a new member gets once the room has taken its name."""
    return f"* welcome, {name}! /who lists who is here, /quit leaves"


# --- Cleaning what people send ---

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and two-character escapes.
ANSI_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
# A subdivision flag (England, Scotland, Wales): a black flag, tag letters, a cancel tag.
# The only place tag characters belong; anywhere else they hide text.
FLAG = re.compile("(\U0001F3F4[\U000E0020-\U000E007E]{1,16}\U000E007F)")
AS_SPACE = {0x09: " ", 0x2028: " ", 0x2029: " "}   # tab, LINE and PARAGRAPH SEPARATOR
JOINERS = "\u200c\u200d"   # ZWNJ and ZWJ: Persian, Indic scripts and emoji (👩‍💻) need them


def shows_safely(ch: str) -> bool:
    """Whether a character may reach another person's screen: no controls (C0, DEL, C1),
    no format characters (bidi overrides and marks, zero-width spaces, BOMs, tags)
    except the two joiners, no line or paragraph separators."""
    return unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp") or ch in JOINERS


def fit(text: str, limit: int) -> str:
    """text, cut to at most limit bytes of UTF-8 at a character boundary."""
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", errors="ignore")


def encode(line: str) -> bytes:
    """One line as the server sends it: UTF-8, at most MAX_SEND bytes, then a newline."""
    return fit(line, MAX_SEND).encode("utf-8") + b"\n"


def clean(raw: bytes) -> str:
    """Decode a line, drop what could attack or fool someone else's screen, cap its size."""
    text = ANSI_ESCAPE.sub("", raw.decode("utf-8", errors="replace")).translate(AS_SPACE)
    if not text.isprintable():     # something to look at, one character at a time
        parts = FLAG.split(text)   # odd-numbered parts are whole flag sequences: keep them
        text = "".join(part if i % 2 else "".join(filter(shows_safely, part))
                       for i, part in enumerate(parts))
    return fit(text, MAX_TEXT)


# --- Names ---

# Characters that show nothing: Unicode's Default_Ignorable_Code_Point (soft hyphen,
# zero-width and bidi marks, variation selectors, Hangul fillers, tags...) and the
# blank Braille pattern. A name holding one can pass for another name.
SHOWS_NOTHING = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
                           "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u2800\u3164\ufe00-\ufe0f"
                           "\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
                           "\U000e0000-\U000e0fff]")
# Scripts that may share a name: UTS #39's "highly restrictive" level (Japanese,
# Chinese with Bopomofo, Korean). One script alone is always fine.
SCRIPT_MIXES = ({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}, {"LATIN", "HAN", "BOPOMOFO"},
                {"LATIN", "HAN", "HANGUL"})
_SCRIPT_WORDS = {"CJK": "HAN", "IDEOGRAPHIC": "HAN", "KATAKANA-HIRAGANA": "KATAKANA",
                 "MODIFIER": None}   # MODIFIER LETTER ...: shared by scripts


def script_of(ch: str) -> str | None:
    """A letter's script, read from its Unicode name ("CYRILLIC SMALL LETTER A" -> "CYRILLIC");
    None for digits, punctuation, symbols and marks, which every script shares.
    (Python's unicodedata has no Script property; the name's first word comes close.)"""
    if not unicodedata.category(ch).startswith("L"):
        return None
    first = unicodedata.name(ch, "UNKNOWN").split()[0]
    return _SCRIPT_WORDS.get(first, first)


def stacks_marks(name: str) -> bool:
    """Whether a letter carries the same mark twice (drawn on top of each other, "a" with
    two acute accents looks like "á") or more than four: UTS #39's checks, on the NFD form."""
    run: list[str] = []
    for ch in unicodedata.normalize("NFD", name):
        if unicodedata.category(ch) not in ("Mn", "Me"):
            run = []
        elif ch in run or len(run) == 4:
            return True
        else:
            run.append(ch)
    return False


def name_key(name: str) -> str:
    """What two names are compared by: NFKC, case folded, NFKC again (ＡＬＩＣＥ is alice)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def name_problem(name: str) -> str | None:
    """Why a cleaned name cannot be used, as the line to send back; None if it can."""
    if not 1 <= len(name) <= MAX_NAME:
        return NAME_LENGTH
    if (not name.isprintable() or any(ch.isspace() for ch in name) or SHOWS_NOTHING.search(name)
            or unicodedata.category(name[0]).startswith("M")):   # a combining mark on nothing
        return NAME_INVISIBLE
    scripts = {script_of(ch) for ch in unicodedata.normalize("NFKC", name)} - {None}
    if len(scripts) > 1 and not any(scripts <= mix for mix in SCRIPT_MIXES):
        return NAME_MIXED
    if stacks_marks(name):
        return NAME_MARKS
    return None


# --- The room's size and its one long line ---

def who_line(names: Iterable[str], limit: int = MAX_SEND) -> str:
    """'* online: a, b, c', as one line of at most limit bytes: '... and N more' past that."""
    names = list(names)
    line = "* online: " + ", ".join(names)
    if len(line.encode("utf-8")) <= limit:
        return line
    shown, size = [], len("* online: ") + len(f" and {len(names):,} more")
    for name in names:
        size += len(name.encode("utf-8")) + 2
        if size > limit:
            break
        shown.append(name)
    return f"* online: {', '.join(shown)} and {len(names) - len(shown):,} more"


def room_limits(descriptors: Optional[int]) -> tuple[int, int]:
    """(members, waiting) a room can hold with this many file descriptors (None: no limit):
    one per connection, after a quarter of them, at most RESERVED_FDS, for everything else
    (a room needs a handful of its own: with `ulimit -n 64`, 48 are left for people)."""
    if descriptors is None:
        return MAX_MEMBERS, MAX_WAITING
    spare = max(2, descriptors - min(RESERVED_FDS, descriptors // 4))
    waiting = max(1, min(MAX_WAITING, spare // 10))
    return max(1, min(MAX_MEMBERS, spare - waiting)), waiting
