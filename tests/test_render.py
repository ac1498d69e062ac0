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


JSON_CASES = [
    {"é": "ü", "日本": "語", "emoji": "\U0001F600", "surrogate": "\ud800"},  # non-ASCII: escaped as \uXXXX
    {"ctl": "\x00\x01\x1f\x7f\t\r\n\b\f", "quote": '"', "slash": "/\\"},
    {1: "a", 2: {3: 4}, 1.5: None, None: 1.0, False: "f"},  # non-string keys: as json.dumps writes them
    {"list": [1, "a", None, True, [], {}, [{"b": [2]}]], "tuple": (1, 2)},
    {"a": {"b": {"c": {"d": {"e": "f"}}}}, "g": {}},
    {"t": True, "f": False, "n": None, "zero": 0, "neg": -1, "big": 2 ** 70, "float": 1e300, "small": -0.0},
    {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")},  # json.dumps's NaN, Infinity
]


@pytest.mark.parametrize("props", JSON_CASES)
def test_to_json_is_compact_json_dumps_for_odd_values(props):
    assert render.to_json(props) == json.dumps(props, separators=(",", ":"))


@pytest.mark.parametrize("props", JSON_CASES + [{}, {"a": "b"}])
def test_to_json_without_the_c_encoder_writes_the_same(props, monkeypatch):
    expected = render.to_json(props)
    monkeypatch.setattr(render, "_json_encoder", None)
    assert render.to_json(props) == expected == json.dumps(props, separators=(",", ":"))


@pytest.mark.parametrize("c_encoder", [True, False])
def test_to_json_refuses_what_json_dumps_refuses(c_encoder, monkeypatch):
    if not c_encoder:
        monkeypatch.setattr(render, "_json_encoder", None)
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        render.to_json({"a": object()})


@pytest.mark.parametrize("missing", [True, False])
def test_an_unusable_c_encoder_falls_back_to_json_dumps(missing, monkeypatch):
    """A private _json.make_encoder that is missing, or takes other arguments (a future CPython),
    leaves the module importable, writing through json.dumps."""
    import _json
    import importlib.util

    def make_encoder(*args):
        raise TypeError("make_encoder() takes other arguments")

    if missing:
        monkeypatch.delattr(_json, "make_encoder")
    else:
        monkeypatch.setattr(_json, "make_encoder", make_encoder)
    # A fresh copy of the module, so that the one the other tests use keeps its encoder.
    spec = importlib.util.spec_from_file_location("render_fallback_copy", render.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy._json_encoder is None
    for props in JSON_CASES:
        assert copy.to_json(props) == json.dumps(props, separators=(",", ":"))
