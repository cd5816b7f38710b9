"""Text that names someone or something must look like what it is.

A DN or an identifier shown to a person must not hide characters: a bidirectional override
(U+202E) can make ``/CN=Alice\u202eecilA`` read as another name, a zero-width joiner can make two
different DNs look the same. :func:`hidden_character` finds the first such character so that the
caller can refuse the text with a message that says which one and where.
"""
from __future__ import annotations

import unicodedata

# Unicode general categories a visible name never needs: controls (Cc), format characters (Cf:
# bidi overrides and isolates, zero-width spaces and joiners, the BOM…), surrogates (Cs), private
# use (Co), unassigned code points (Cn), and the line and paragraph separators (Zl, Zp).
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def hidden_character(text: str) -> str | None:
    """A description of the first invisible or control character in ``text`` (``None`` if none).

    >>> hidden_character("/CN=Alice")
    >>> hidden_character("/CN=Al\\u202eice")
    'U+202E RIGHT-TO-LEFT OVERRIDE at position 6'
    """
    if text.isascii() and text.isprintable():
        return None                 # the common case, without a Unicode lookup per character
    for position, character in enumerate(text):
        if unicodedata.category(character) in HIDDEN_CATEGORIES:
            name = unicodedata.name(character, "control character")
            return f"U+{ord(character):04X} {name} at position {position}"
    return None
