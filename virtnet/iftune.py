"""`virtnet domiftune`: an interface's <bandwidth>, read or changed as `virsh domiftune` does.

Without --inbound/--outbound it prints the seven values virsh prints. With them, the running guest
(--live) gets its tap's tc setup replaced (host.shaping, through the plan's own actions, so destroy
removes what was applied) and its live XML the new <bandwidth>; --config defines the domain again
with it. An average of 0 clears that direction, as in virsh.
"""

import re

from lxml import etree

from virtnet import livestate, runner
from virtnet.errors import HostError, UsageError

FIELDS = ("average", "peak", "burst", "floor")
MAX_RATE = 2**32 - 1  # libvirt's rates are unsigned ints in the XML schema


def parse_rates(text, option):
    """'AVERAGE[,PEAK[,BURST[,FLOOR]]]' (empty fields unset) as {field: int}; outbound has no floor."""
    parts = text.split(",")
    allowed = FIELDS if option == "--inbound" else FIELDS[:3]
    shape = "AVERAGE[,PEAK[,BURST[,FLOOR]]]" if option == "--inbound" else "AVERAGE[,PEAK[,BURST]]"
    if len(parts) > len(allowed):
        raise UsageError(f"{option} '{text}': too many values; expected {shape} (kilobytes/s, burst in KiB)")
    rates = {}
    for field, part in zip(allowed, parts):
        if part == "":
            continue
        if not re.fullmatch(r"[0-9]{1,10}", part) or int(part) > MAX_RATE:
            raise UsageError(f"{option} '{text}': '{part}' is not a number from 0 to {MAX_RATE}; expected {shape}")
        rates[field] = int(part)
    return rates


def set_rates(iface_node, direction, rates):
    """Write RATES into <bandwidth><DIRECTION> of IFACE_NODE (libvirt's child order); an average of 0
    (or none) removes that direction, and an empty <bandwidth> goes too."""
    from virtnet.conf.domain import Interface

    bandwidth = iface_node.find("bandwidth")
    if bandwidth is not None and bandwidth.find(direction) is not None:
        bandwidth.remove(bandwidth.find(direction))
    if rates.get("average"):
        if bandwidth is None:
            bandwidth = etree.Element("bandwidth")
            order = Interface.CHILD_ORDER
            later = next((c for c in iface_node if isinstance(c.tag, str) and c.tag in order
                          and order.index(c.tag) > order.index("bandwidth")), None)
            if later is not None:
                later.addprevious(bandwidth)
            else:
                iface_node.append(bandwidth)
        element = etree.SubElement(bandwidth, direction, {f: str(rates[f]) for f in FIELDS if rates.get(f)})
        if direction == "inbound" and bandwidth.find("outbound") is not None:
            bandwidth.find("outbound").addprevious(element)  # libvirt writes inbound first
    if bandwidth is not None and len(bandwidth) == 0:
        iface_node.remove(bandwidth)


def show(iface):
    """virsh domiftune's listing of IFACE's <bandwidth> (0 for what is unset)."""
    lines = []
    for direction, fields in (("inbound", FIELDS), ("outbound", FIELDS[:3])):
        rates = getattr(iface, direction)
        for field in fields:
            value = getattr(rates, field) if rates is not None else None
            lines.append(f"{direction + '.' + field:<15}: {value or 0}")
    return "\n".join(lines) + "\n"


def _check(iface, changes, name, *, live):
    from virtnet.host.plan import SHAPED_TYPES

    if changes.get("inbound", {}).get("floor") and iface.type != "network":
        raise UsageError(f"domain '{name}': --inbound floor is only supported on interfaces of type 'network' (as in "
                         "libvirt); give AVERAGE[,PEAK[,BURST]]")
    if live and iface.type not in SHAPED_TYPES:
        raise HostError(f"domain '{name}': interface '{iface.target_dev or iface.mac}' is <interface "
                        f"type='{iface.type}'>, whose traffic virtnet cannot shape (it shapes ethernet, bridge and "
                        "network taps)")


def tune(store, name, spec, changes, *, live, config):
    """Apply CHANGES ({'inbound'|'outbound': {field: value}}) to interface SPEC of domain NAME."""
    with store.lock():
        if live:
            spec = _tune_live(store, name, spec, changes)  # the definition's interface: by the same MAC
        if config:
            _tune_config(store, name, spec, changes)


def current(store, name, spec, *, config):
    """virsh's listing for interface SPEC: from the live XML while it runs (unless CONFIG)."""
    from virtnet import domains
    from virtnet.liveif import find_interface

    with store.lock():
        if not config and runner.running_state(store, name) is not None:
            return show(find_interface(livestate.live_domain(store, name), spec))
        return show(find_interface(domains.load_defined(store, name).domain, spec))


def _tune_live(store, name, spec, changes):
    from virtnet.conf.format import format_domain
    from virtnet.conf.xmlmodel import thaw
    from virtnet.host import netns
    from virtnet.host.executor import Executor
    from virtnet.host.netlink import Netlink
    from virtnet.host.plan import AttachTap, Plan, UnshapeInbound, UnshapeOutbound, shaping_actions, teardown_with
    from virtnet.hostcaps import probe
    from virtnet.liveif import find_interface

    state = runner.require_running(store, name, "tune the interfaces of")
    domain = thaw(livestate.live_domain(store, name))
    iface = find_interface(domain, spec)
    _check(iface, changes, name, live=True)
    tap = state.taps.get(iface.ids.alias)
    if tap is None:
        raise HostError(f"domain '{name}': interface '{spec}' has no tap of virtnet's to shape")
    for direction, rates in changes.items():
        set_rates(iface.node, direction, rates)
    old = [a for a in state.teardown
           if a.device == iface.ids.alias and isinstance(a, (UnshapeInbound, UnshapeOutbound))]
    warnings = []
    actions = shaping_actions(iface, [AttachTap(iface.ids.alias, tap)], probe(tc=True), warnings)
    with netns.inside_if_elsewhere(state.netns), Netlink() as nl:
        # As libvirt: what was there goes (what was recorded, then the tap's own qdiscs), then the
        # whole <bandwidth> is applied anew, through the executor as at start.
        executor = Executor(nl)
        errors = executor.teardown(old + [UnshapeInbound(iface.ids.alias, tap), UnshapeOutbound(iface.ids.alias, tap)])
        state.teardown = [a for a in state.teardown if a not in old]
        try:
            if errors:
                raise HostError(f"domain '{name}': removing the shaping of {tap} failed: " + "; ".join(errors))
            outcome = executor.setup(Plan(actions))  # rolled back if any step fails
        except BaseException:
            livestate.save(store, name, state)
            raise
        state.teardown = teardown_with(state.teardown, outcome.inverses)
        livestate.save(store, name, state, format_domain(domain, live=True))
    return iface.mac


def _tune_config(store, name, spec, changes):
    """Define domain NAME again with the new <bandwidth> (define's checks apply)."""
    from virtnet import domains
    from virtnet.liveif import find_interface

    def change(domain):
        iface = find_interface(domain, spec)
        _check(iface, changes, name, live=False)
        for direction, rates in changes.items():
            set_rates(iface.node, direction, rates)
    domains.define(store, domains.changed_definition(store, name, change))
