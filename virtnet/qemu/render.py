"""Rendering property dicts as QEMU option values: JSON or legacy keyval, and shell-ready lines."""

import json
import shlex


def to_json(props):
    return json.dumps(props, separators=(",", ":"))


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
    """One option per line with ` \\` continuations, each word shell-quoted, ready to paste."""
    lines, current = [], [shlex.quote(argv[0])]
    for word in argv[1:]:
        if word.startswith("-") and word[1:2].isalpha():
            lines.append(" ".join(current))
            current = []
        current.append(shlex.quote(word))
    lines.append(" ".join(current))
    return " \\\n".join(lines) + "\n"
