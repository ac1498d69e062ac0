"""The characters no value virtnet reads may hold, in one place.

C0 and C1 controls and DEL, the Unicode line and paragraph separators, and the bidirectional
controls: a value reaches shell scripts, unit files, comments, QEMU's argv and `list` output, where
a line break starts a new command and a direction override makes text read differently from what
runs.
"""

import functools
import re

CONTROL_CHARACTERS = "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"


@functools.cache
def control_re():
    """The compiled pattern, compiled at its first use: a character class beyond Latin-1 costs
    ~0.4 ms to compile, and most runs never need it (see surely_plain)."""
    return re.compile(CONTROL_CHARACTERS)


def surely_plain(text):
    """True when TEXT certainly holds none of these characters, without the pattern: every one of
    them is non-printable to str.isprintable (controls, format characters, line and paragraph
    separators). False means: look with control_re()."""
    return text.isprintable()


def has_control(text):
    return not surely_plain(text) and control_re().search(text) is not None


def visible(value):
    """VALUE on one line for a message: control characters shown as \\n, \\t or \\uXXXX."""
    def escape(match):
        char = match.group()
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(char, f"\\u{ord(char):04x}")

    return control_re().sub(escape, value)
