"""Rendering a plan: text (one action per line), json, and the administrator's pre-creation
recipes (`sh`: an ip(8) script, `networkd`: systemd-networkd files) from jinja2 templates."""

import functools
import json
import pwd
import re
import shlex

from virtnet.conf.text import has_control
from virtnet.errors import UsageError, XMLInputError
from virtnet.host.plan import AttachTap, CreateMacvtap, CreateTap

# A systemd-networkd value: one line, no leading/trailing blanks, nothing systemd would expand
# or read as a quote or comment (validation already restricts names; this is the last guard).
_UNIT_VALUE_RE = re.compile(r"[A-Za-z0-9._:@+-]+")


def as_text(plan):
    lines = [f"{n:2d}  {a.line()}" for n, a in enumerate(plan.setup)]
    lines.append("teardown:")
    lines += [f"{n:2d}  {a.line()}" for n, a in enumerate(plan.teardown)]
    return "\n".join(lines) + "\n"


def as_json(plan, name):
    return json.dumps({"domain": name, **plan.as_dicts()}, indent=2) + "\n"


def _taps(domain, plan):
    """The managed='no' taps an administrator pre-creates, with what virtnet would set on them; and
    the managed ones, which virtnet creates itself (pre-creating those would make start refuse them)."""
    taps, managed = [], []
    for action in plan.setup:
        if not isinstance(action, (CreateTap, AttachTap)):
            continue
        iface = domain.interface(action.device)
        if not iface.kind.script:  # only ethernet taps can be pre-created (managed='no')
            continue
        if not iface.unmanaged:
            managed.append({"device": action.device, "name": action.ifname})
            continue
        taps.append({
            "device": action.device, "name": action.ifname, "model": iface.model, "queues": action.queues,
            "multi_queue": action.queues > 1, "vnet_hdr": action.vnet_hdr, "mac": iface.ids.host_mac,
            "mtu": iface.mtu, "shaping": _shaping_lines(plan, action.device),
        })
    return taps, managed


def _shaping_lines(plan, device):
    """<bandwidth> of DEVICE as ip/tc commands (each word shell-quoted), for the administrator's script."""
    from virtnet.host import shaping
    from virtnet.host.plan import ShapeInbound, ShapeOutbound

    commands = []
    for action in plan.setup:
        if action.device == device and isinstance(action, ShapeInbound):
            commands += shaping.inbound_commands(action)
        elif action.device == device and isinstance(action, ShapeOutbound):
            commands += shaping.outbound_commands(action)
    return [" ".join(shlex.quote(_one_line(word)) for word in argv) for argv in commands]


def _one_line(value):
    """VALUE as one comment line: refused (never rewritten) when it could end the comment."""
    text = str(value)
    if has_control(text):
        raise XMLInputError(f"{text!r} contains a control character and cannot be written into a script")
    return text


def _unit_value(value):
    """VALUE for a systemd unit file line."""
    text = str(value)
    if not _UNIT_VALUE_RE.fullmatch(text):
        raise XMLInputError(f"{text!r} cannot be written into a systemd-networkd file; accepted: letters, "
                            "digits and '.', '_', ':', '@', '+', '-'")
    return text


def check_owner(owner):
    """The owner of pre-created taps must be an existing user (the script and networkd name it)."""
    if not owner or has_control(owner):
        raise UsageError(f"--owner {owner!r} is not a user name")
    try:
        pwd.getpwnam(owner)
    except KeyError:
        raise UsageError(f"--owner {owner!r}: no such user on this host; name an existing user "
                         "(see getent passwd)") from None


@functools.cache
def _environment():
    """One jinja2 environment per process: it compiles each template once (a batch renders many)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("virtnet.host", "templates"),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["shquote"] = lambda v: shlex.quote(_one_line(v))
    env.filters["comment"] = _one_line
    env.filters["unit"] = _unit_value
    return env


def _render(template, **context):
    return _environment().get_template(template).render(**context)


def render_plan(fmt, domain, plan, owner):
    if fmt == "text":
        return as_text(plan)
    if fmt == "json":
        return as_json(plan, domain.name)
    check_owner(owner)
    template = "precreate.sh.j2" if fmt == "sh" else "networkd.j2"
    taps, managed = _taps(domain, plan)
    # type='direct': virtnet (as root) makes the macvtap at start; there is nothing to pre-create.
    macvtaps = [{"device": a.device, "lower": a.lower} for a in plan.setup if isinstance(a, CreateMacvtap)]
    return _render(template, name=domain.name, owner=owner, taps=taps, managed=managed, macvtaps=macvtaps)
