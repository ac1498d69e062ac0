"""Rendering property dicts as QEMU option values: JSON or legacy keyval, and shell-ready lines."""

import re

# The words shlex.quote leaves bare: non-empty, of these characters only.
_shell_safe = re.compile(r"[\w@%+=:,./-]+", re.ASCII).fullmatch


def to_json(props):
    """Compact JSON, as json.dumps(props, separators=(",", ":")) writes it."""
    strings = []
    text = _plain_json(props, strings)
    if text is not None:
        # Every key and string at once: printable ASCII without quotes or backslashes needs no escaping.
        joined = "".join(strings)
        if joined.isascii() and joined.isprintable() and '"' not in joined and "\\" not in joined:
            return text
    import json  # only for values that need escaping: the package is ~2% of a one-file conversion

    return json.dumps(props, separators=(",", ":"))


def _plain_json(props, strings):
    """JSON of a dict of strings, ints, booleans and such dicts, with its keys and strings written
    as they are (added to STRINGS for the caller to check); None for anything else."""
    parts = []
    for key, value in props.items():
        if type(key) is not str:
            return None
        kind = type(value)
        if kind is str:
            parts.append(f'"{key}":"{value}"')
            strings.append(value)
        elif kind is bool:
            parts.append(f'"{key}":{"true" if value else "false"}')
        elif kind is int:
            parts.append(f'"{key}":{value}')
        elif kind is dict:
            inner = _plain_json(value, strings)
            if inner is None:
                return None
            parts.append(f'"{key}":{inner}')
        else:
            return None
        strings.append(key)
    return "{" + ",".join(parts) + "}"


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
    first = argv[0]
    out = [first if _shell_safe(first) else _shell_quote(first)]
    for word in argv[1:]:
        # One flat loop, quoting inline: most words (options, ids, numbers) need no quotes.
        out.append(" \\\n" if word[:1] == "-" and word[1:2].isalpha() else " ")
        out.append(word if _shell_safe(word) else _shell_quote(word))
    out.append("\n")
    return "".join(out)


def shell_word(word):
    """WORD as shlex.quote writes it: bare when it can be, else in single quotes."""
    return word if _shell_safe(word) else _shell_quote(word)


def _shell_quote(word):
    if "'" not in word:  # most quoted words (JSON values): one string built rather than three
        return f"'{word}'"
    return "'" + word.replace("'", "'\"'\"'") + "'"
