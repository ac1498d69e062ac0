"""The characters no value virtnet reads may hold, in one place.

C0 and C1 controls and DEL, the Unicode line and paragraph separators, and the bidirectional
controls: a value reaches shell scripts, unit files, comments, QEMU's argv and `list` output, where
a line break starts a new command and a direction override makes text read differently from what
runs.
"""

import re

CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def has_control(text):
    return CONTROL_RE.search(text) is not None


def visible(value):
    """VALUE on one line for a message: control characters shown as \\n, \\t or \\uXXXX."""
    def escape(match):
        char = match.group()
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(char, f"\\u{ord(char):04x}")

    return CONTROL_RE.sub(escape, value)
