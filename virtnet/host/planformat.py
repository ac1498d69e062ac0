"""Rendering a plan: text (one action per line), json, and the administrator's pre-creation
recipes (`sh`: an ip(8) script, `networkd`: systemd-networkd files) from jinja2 templates."""

import json
import shlex

from virtnet.host.plan import AttachTap, CreateTap, host_mac

def as_text(plan):
    lines = [f"{n:2d}  {a.describe()}" for n, a in enumerate(plan.setup)]
    lines.append("teardown:")
    lines += [f"{n:2d}  {a.describe()}" for n, a in enumerate(plan.teardown)]
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
        iface = domain.interfaces[action.index]
        if iface.type != "ethernet":
            continue
        if not iface.unmanaged:
            managed.append({"index": action.index, "name": action.ifname})
            continue
        taps.append({
            "index": action.index, "name": action.ifname, "model": iface.model, "queues": action.queues,
            "multi_queue": action.queues > 1, "vnet_hdr": action.vnet_hdr, "mac": host_mac(iface.mac),
            "mtu": iface.mtu,
        })
    return taps, managed


def _render(template, **context):
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("virtnet.host", "templates"),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["shquote"] = lambda v: shlex.quote(str(v))
    return env.get_template(template).render(**context)


def render_plan(fmt, domain, plan, owner):
    if fmt == "text":
        return as_text(plan)
    if fmt == "json":
        return as_json(plan, domain.name)
    template = "precreate.sh.j2" if fmt == "sh" else "networkd.j2"
    taps, managed = _taps(domain, plan)
    return _render(template, name=domain.name, owner=owner, taps=taps, managed=managed)
