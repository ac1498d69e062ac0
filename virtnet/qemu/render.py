"""Rendering property dicts as QEMU option values: JSON or legacy keyval, and shell-ready lines."""

import re

# The words shlex.quote leaves bare: non-empty, of these characters only (its [\w@%+=:,./-] with
# re.ASCII, spelt out: a class of plain characters is one bitmap test per character).
_SHELL_SAFE = r"[A-Za-z0-9_@%+=:,./-]+"
_shell_safe = re.compile(_SHELL_SAFE).fullmatch
# The same, with group 1 matched when the word is an option: shell_lines's rule (a dash and a
# letter) for bare words, which are ASCII, so [A-Za-z] is what str.isalpha() accepts there.
_bare_word = re.compile(r"(-(?=[A-Za-z]))?" + _SHELL_SAFE).fullmatch


def _not_serializable(value):
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")  # json.dumps's words


# The encoder json.dumps makes at every call (which costs more than encoding a small dict), made
# once from json's C encoder, as json.encoder makes it: dumps's arguments for these separators,
# without its check for circular references (property dicts hold none). Importing the json package
# instead costs more than a one-file conversion's own rendering (its decoder compiles regular
# expressions).
try:
    from _json import encode_basestring_ascii, make_encoder

    _json_encoder = make_encoder(None, _not_serializable, encode_basestring_ascii, None, ":", ",",
                                 False, False, True)
except (ImportError, TypeError):  # no C encoder, or a private signature changed: json.dumps
    _json_encoder = None


def to_json(props):
    """Compact JSON, as json.dumps(props, separators=(",", ":")) writes it."""
    if _json_encoder is None:
        import json

        return json.dumps(props, separators=(",", ":"))
    return "".join(_json_encoder(props, 0))


def keyval_escape(text):
    return str(text).replace(",", ",,")  # keyval escapes a comma by doubling it


def _keyval_value(value):
    if value is True:
        return "on"
    if value is False:
        return "off"
    return keyval_escape(value)


def flatten(props, prefix=""):
    """Nested objects as dotted keys: {"addr": {"type": "unix"}} → ("addr.type", "unix")."""
    for key, value in props.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def to_keyval(props, lead_key):
    """`lead=VALUE,key=value,...`: the lead property (type/driver) comes first, bare."""
    items = [_keyval_value(props[lead_key])] if lead_key else []
    items += [f"{k}={_keyval_value(v)}" for k, v in flatten(props) if k != lead_key]
    return ",".join(items)


def option_value(props, syntax, lead_key):
    return to_json(props) if syntax == "json" else to_keyval(props, lead_key)


def shell_lines(argv):
    """One option per line with ` \\` continuations, each word shell-quoted (as shlex.quote does),
    ready to paste."""
    out = [shell_word(argv[0])]
    for word in argv[1:]:
        # One flat loop: most words (options, ids, numbers) need no quotes, and the one regex
        # match that finds a word bare also tells whether it is an option. The rule is spelt out
        # only for quoted words (which may be non-ASCII): applying it to every word instead costs
        # ~5 % of xml2argv's rendering.
        bare = _bare_word(word)
        if bare is None:
            out.append(" \\\n" if word[:1] == "-" and word[1:2].isalpha() else " ")
            out.append(_shell_quote(word))
        elif bare.lastindex:  # an option
            out.append(" \\\n")
            out.append(word)
        else:
            out.append(" ")
            out.append(word)
    out.append("\n")
    return "".join(out)


def shell_word(word):
    """WORD as shlex.quote writes it: bare when it can be, else in single quotes."""
    return word if _shell_safe(word) else _shell_quote(word)


def _shell_quote(word):
    if "'" not in word:  # most quoted words (JSON values): one string built rather than three
        return f"'{word}'"
    return "'" + word.replace("'", "'\"'\"'") + "'"
