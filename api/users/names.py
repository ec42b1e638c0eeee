"""What a user name may be, and when two names are one.

Names follow PRECIS (RFC 8265, the `precis-i18n` package): UsernameCasePreserved gives the
stored form (width-mapped, NFC), UsernameCaseMapped with case folding the key that makes
"Alice", "alice" and its fullwidth form one name. PRECIS refuses spaces, controls, every
default-ignorable code point (U+200B, U+2060, U+00AD ...) and the Hangul fillers (U+115F,
U+1160, U+3164, U+FFA0), so no name can hide characters. On top of it, of ASCII punctuation
only `_`, `.` and `-` are allowed.

Two names that look alike are one name too: the skeleton (Unicode TS #39) of the key maps
each character to the prototype it can be confused with, so "alice" spelt with a Cyrillic a
(U+0430) has the skeleton of "alice". The confusables come from `confusable_homoglyphs`, which
ships Unicode's confusables.txt as groups of look-alikes; the prototype of each group is read
off below.
"""

from __future__ import annotations

import unicodedata
from functools import cache

from confusable_homoglyphs import confusables
from precis_i18n import get_profile

from api.core.errors import BadUserInput
from api.users.constants import NAME_MAX_LENGTH, NAME_MIN_LENGTH

_PRESERVED = get_profile("UsernameCasePreserved")
_MAPPED = get_profile("UsernameCaseMapped:CaseFold")
_PUNCTUATION = frozenset("_.-")
# Direction marks wrapped around right-to-left look-alikes in the package's data.
_MARKS = str.maketrans("", "", "\u200e\u200f")

INVALID_NAME = (
    "Name may contain only letters, digits, '_', '.' and '-' (no spaces, symbols or "
    "invisible characters)."
)


def validate_name(name: str) -> str:
    """The stored form of a new name, or BadUserInput saying what is wrong."""
    try:
        display = _PRESERVED.enforce(name)
    except UnicodeError as error:
        if not NAME_MIN_LENGTH <= len(name) <= NAME_MAX_LENGTH:
            raise BadUserInput(_LENGTH) from error
        raise BadUserInput(INVALID_NAME) from error
    if not NAME_MIN_LENGTH <= len(display) <= NAME_MAX_LENGTH:
        raise BadUserInput(_LENGTH)
    if not all(ch in _PUNCTUATION or unicodedata.category(ch)[0] in "LMN" for ch in display):
        raise BadUserInput(INVALID_NAME)
    return display


_LENGTH = f"Name must be {NAME_MIN_LENGTH} to {NAME_MAX_LENGTH} characters long."


def legacy_name_key(name: str) -> str:
    """The key names had before PRECIS: NFKC, casefolded, NFKC again."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def name_key(name: str) -> str:
    """The uniqueness key of a name (PRECIS UsernameCaseMapped, case-folded).

    A name that PRECIS refuses can only belong to an account made before it was adopted; its
    key is computed as it was then, so such accounts keep working."""
    try:
        return str(_MAPPED.enforce(name))
    except UnicodeError:
        return legacy_name_key(name)


@cache
def _prototypes() -> dict[str, str]:
    """Each confusable character's prototype.

    The package lists, for every character of a confusables group, the others: a source
    character lists only its prototype, a prototype lists all of its sources. A pair that
    lists only each other is ordered by code point.
    """
    data = confusables.confusables_data
    mapping: dict[str, str] = {}
    for key, entries in data.items():
        char = key.translate(_MARKS)
        if len(char) != 1 or len(entries) != 1:
            continue
        target = entries[0]["c"].translate(_MARKS)
        back = data.get(target, [])
        if target != char and (len(back) != 1 or target < char):
            mapping[char] = target
    return mapping


def skeleton(name: str) -> str:
    """The confusable skeleton of a name (UTS #39), case-folded: names that look alike share
    it."""
    prototypes = _prototypes()
    text = unicodedata.normalize("NFD", name_key(name))
    for _ in range(3):  # prototypes are prototypes of themselves; a few rounds settle any chain
        mapped = unicodedata.normalize("NFD", "".join(prototypes.get(ch, ch) for ch in text))
        if mapped == text:
            break
        text = mapped
    return unicodedata.normalize("NFC", text).casefold()
