"""qemu.render's shell lines and JSON against the standard library's own (shlex.quote, json.dumps)."""

import json
import shlex

import pytest

from virtnet.qemu import render

# Words near the edges of "bare" and "option": empty, quotes, non-ASCII letters and digits after a
# dash (str.isalpha() decides an option), shell-safe punctuation, a NUL.
TRICKY = ["", "-", "--", "-1", "-a", "-Z9", "-a b", "-é", "-²", "-\u2167", "é", "a b", "'", "-x'", "a'b", '{"a":"b"}',
          "@%+=:,./-_", "a\0b", "a\nb", "-netdev", "guest=x,y", "/usr/bin/qemu-system-x86_64"]


def _reference_lines(argv):
    out = [shlex.quote(argv[0])]
    for word in argv[1:]:
        out.append(" \\\n" if word[:1] == "-" and word[1:2].isalpha() else " ")
        out.append(shlex.quote(word))
    return "".join(out) + "\n"


@pytest.mark.parametrize("first", ["qemu", "-a", "", "a b"])
def test_shell_lines_quote_and_break_as_shlex_and_the_option_rule_do(first):
    argv = [first, *TRICKY, *reversed(TRICKY)]
    assert render.shell_lines(argv) == _reference_lines(argv)
    assert render.shell_lines([first]) == _reference_lines([first])


def test_shell_word_is_shlex_quote_for_every_latin_character():
    for code in range(0x180):
        for word in (chr(code), "a" + chr(code), chr(code) + "-b"):
            assert render.shell_word(word) == shlex.quote(word)


@pytest.mark.parametrize("props", [
    {}, {"a": "b"}, {"a": 'b"c'}, {"a": "b\\c"}, {"a": "\n"}, {"a": "é"}, {"a": None}, {"a": 1.5},
    {"a": True, "b": False, "c": 3, "d": {"e": {"f": "g"}}}, {"a": {"b": 'c"'}}, {"a": {"b": None}, "c": "d"},
])
def test_to_json_is_compact_json_dumps(props):
    assert render.to_json(props) == json.dumps(props, separators=(",", ":"))
