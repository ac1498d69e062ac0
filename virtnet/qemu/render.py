"""Rendering property dicts as QEMU option values: JSON or legacy keyval, and shell-ready lines."""

import re

# The words shlex.quote leaves bare: non-empty, of these characters only (its [\w@%+=:,./-] with
# re.ASCII, spelt out: a class of plain characters is one bitmap test per character).
_shell_safe = re.compile(r"[A-Za-z0-9_@%+=:,./-]+").fullmatch
# The same, with group 1 matched when the word is an option (a dash and a letter: bare words are
# ASCII, so [A-Za-z] is what str.isalpha() accepts there).
_bare_word = re.compile(r"(-(?=[A-Za-z]))?[A-Za-z0-9_@%+=:,./-]+").fullmatch


def to_json(props):
    """Compact JSON, as json.dumps(props, separators=(",", ":")) writes it. The keys are property
    names from virtnet's own code: plain words that need no escaping."""
    try:
        text = _plain_json(props)
    except _NotPlain:
        pass
    else:
        # Every string at once: printable ASCII without backslashes needs no escaping (the
        # structural characters are such), and _plain_json let no quote through.
        if text.isascii() and text.isprintable() and "\\" not in text:
            return text
    import json  # only for values that need escaping: the package is ~2% of a one-file conversion

    return json.dumps(props, separators=(",", ":"))


class _NotPlain(Exception):
    """A value _plain_json does not write as it is (a string with a quote, None, a float, ...)."""


def _plain_json(props):
    """JSON of a dict of strings, ints, booleans and such dicts, with its keys and strings written
    as they are; raises _NotPlain for a string holding a quote or a value of another type."""
    # One comprehension, strings tested inline: most values are strings, and a call per value
    # would cost more than all the rest.
    return "{" + ",".join([f'"{key}":"{value}"' if type(value) is str and '"' not in value
                           else f'"{key}":{_plain_value(value)}' for key, value in props.items()]) + "}"


def _plain_value(value):
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is dict:
        return _plain_json(value)
    raise _NotPlain


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
        # match that finds a word bare also tells whether it is an option.
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
