"""Semantic rules applied after the schema: one small function per rule.

Each rule yields (line, message) for every violation it finds. `check_domain` runs them all and
raises the first violation in document order, so a user fixes problems top to bottom.
"""

import ipaddress
import re

from lxml import etree

from virtnet.conf import ifname, iftypes, mac
from virtnet.conf.domain import VIRTIO_MODELS
from virtnet.errors import XMLInputError

RULES = []

MODEL_RE = re.compile(r"[A-Za-z0-9_-]+")
USER_ALIAS_RE = re.compile(r"ua-[A-Za-z0-9_-]+")
QUEUE_SIZES = (256, 512, 1024)  # powers of two that QEMU accepts for virtio-net rings


def rule(func):
    RULES.append(func)
    return func


def _where(iface):
    return f"<interface type='{iface.type}'>"


# Characters no value may hold: C0 and C1 controls, DEL, and the Unicode bidirectional controls
# (which make `list` output or a script read differently from what runs). A value reaches shell
# scripts, unit files, comments and QEMU's argv; a newline there starts a new command or line.
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
FREE_TEXT = ("description",)  # prose: may span lines (tabs and newlines only)
FREE_TEXT_ALLOWED = "\t\n\r"
MACHINE_RE = re.compile(r"[A-Za-z0-9._-]+")
INTEGER_RE = re.compile(r"[+-]?[0-9]+")
# Multiqueue limits: the kernel's MAX_TAP_QUEUES, and QEMU's virtio-net (VIRTIO_QUEUE_MAX 1024
# virtqueues: one pair per queue plus the control queue).
MAX_TAP_QUEUES = 256
MAX_VIRTIO_QUEUES = 511


def visible(value):
    """VALUE on one line for a message: control characters shown as \\n, \\t or \\uXXXX."""
    def escape(match):
        char = match.group()
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(char, f"\\u{ord(char):04x}")

    return CONTROL_RE.sub(escape, value)


def _element_name(node):
    return etree.QName(node).localname


@rule
def no_control_characters(domain):
    """No attribute value or element text holds a control character (free prose excepted)."""
    for node in domain.node.iter(tag=etree.Element):
        if _element_name(node) == "metadata":
            continue
        if any(_element_name(a) == "metadata" for a in node.iterancestors()):
            continue
        tag = _element_name(node)
        for attr, value in node.attrib.items():
            bad = CONTROL_RE.search(value)
            if bad:
                yield node.sourceline, (
                    f"<{tag} {etree.QName(attr).localname}='{visible(value)}'> contains the control character "
                    f"U+{ord(bad.group()):04X}; accepted: printable characters only (no control or "
                    "bidirectional-override characters)"
                )
        text = node.text if len(node) == 0 else None
        if not text or not text.strip() or INTEGER_RE.fullmatch(text.strip()):
            continue  # blank (an empty element laid out on lines), or a number (read stripped)
        allowed = FREE_TEXT_ALLOWED if tag in FREE_TEXT else ""
        bad = next((m for m in CONTROL_RE.finditer(text) if m.group() not in allowed), None)
        if bad:
            yield node.sourceline, (
                f"<{tag}>{visible(text)}</{tag}> contains the control character U+{ord(bad.group()):04X}; "
                "accepted: printable characters only (no control or bidirectional-override characters)"
            )


@rule
def domain_name_rules(domain):
    """libvirt's rules for a domain name: not empty, no '/', and (virtnet's store) no leading '.'."""
    if not domain.has("name"):
        return
    name = domain.name or ""
    line = domain.line_of("name")
    if not name.strip():
        yield line, "<name> is empty; a domain needs a name (letters, digits, '.', '_', '-', ...)"
    elif "/" in name:
        yield line, f"<name>{visible(name)}</name> contains '/', which a domain name may not"
    elif name.startswith("."):
        yield line, f"<name>{visible(name)}</name> starts with '.', which a domain name may not"


@rule
def machine_name_characters(domain):
    machine = domain.machine
    if machine is not None and not MACHINE_RE.fullmatch(machine):
        yield domain.line_of("os/type"), (
            f"<type machine='{visible(machine)}'> is not a machine type name; accepted: letters, "
            "digits, '.', '_' and '-' (e.g. 'pc', 'q35', 'pc-q35-7.2')"
        )


@rule
def managed_is_yes_or_no(domain):
    for iface in domain.interfaces:
        if iface.managed not in (None, "yes", "no"):
            yield iface.line_of("target"), (
                f"{_where(iface)}: <target managed='{iface.managed}'> is not valid; accepted: 'yes' or 'no'"
            )


@rule
def unmanaged_only_on_ethernet(domain):
    for iface in domain.interfaces:
        if iface.unmanaged and not iface.kind.script:
            yield iface.line_of("target"), (
                f"unmanaged target dev is not supported on interfaces of type '{iface.type}'; "
                f"managed='no' is only accepted with <interface type='{iftypes.phrase(iftypes.names(script=True))}'>"
            )


@rule
def mac_is_valid_unicast(domain):
    for iface in domain.interfaces:
        address = iface.mac
        if address is None:
            continue
        if not mac.is_mac(address):
            yield iface.line_of("mac"), (
                f"{_where(iface)}: <mac address='{address}'> is not a MAC address; expected six "
                "hexadecimal octets separated by colons, e.g. 52:54:00:12:34:56"
            )
        elif mac.is_multicast(address):
            yield iface.line_of("mac"), (
                f"{_where(iface)}: <mac address='{address}'> is a multicast address (the low bit of the "
                "first octet is set); a NIC needs a unicast MAC, e.g. 52:54:00:..."
            )


@rule
def target_dev_is_an_interface_name(domain):
    for iface in domain.interfaces:
        if iface.target_dev is None:
            continue
        problem = ifname.problem(iface.target_dev)
        if problem:
            yield iface.line_of("target"), f"{_where(iface)}: <target dev='{iface.target_dev}'> {problem}"


@rule
def scripts_only_on_ethernet(domain):
    for iface in domain.interfaces:
        for tag in ("script", "downscript"):
            if iface.has(tag) and not iface.kind.script:
                yield iface.line_of(tag), (
                    f"<{tag}> is not supported on interfaces of type '{iface.type}'; "
                    f"it is only accepted with <interface type='{iftypes.phrase(iftypes.names(script=True))}'>"
                )


@rule
def mtu_type_and_range(domain):
    for iface in domain.interfaces:
        if not iface.has("mtu"):
            continue
        allowed = iface.kind.mtu or (iface.type == "user" and iface.uses_passt)
        if not allowed:
            yield iface.line_of("mtu"), (
                f"setting <mtu> on interface type '{iface.type}' is not supported; accepted on "
                f"{', '.join(iftypes.names(mtu=True))}, and user with <backend type='passt'/>"
            )
        elif not 68 <= iface.mtu <= 65535:
            yield iface.line_of("mtu"), f"{_where(iface)}: <mtu size='{iface.mtu}'> is out of range 68..65535"


@rule
def queues_need_tap_or_vhostuser_and_virtio(domain):
    for iface in domain.interfaces:
        queues = iface.queues
        if queues is None:
            continue
        limit = MAX_TAP_QUEUES if iface.kind.tap else MAX_VIRTIO_QUEUES
        if queues < 1:
            yield iface.line_of("driver"), f"{_where(iface)}: <driver queues='{queues}'> must be a positive number"
        elif queues > limit:
            yield iface.line_of("driver"), (
                f"{_where(iface)}: <driver queues='{queues}'> is out of range 1..{limit}"
                + (" (the kernel's limit for a multiqueue tap)" if iface.kind.tap else "")
            )
        elif queues > 1 and not iface.kind.queues:
            yield iface.line_of("driver"), (
                f"multiqueue (<driver queues='{queues}'>) is not supported for interfaces of type "
                f"'{iface.type}'; accepted on {iftypes.phrase(iftypes.names(queues=True, driven=True))}"
            )
        elif queues > 1 and not iface.is_virtio:
            yield iface.line_of("driver"), (
                f"{_where(iface)}: <driver queues='{queues}'> needs <model type='virtio'/>; "
                f"model '{iface.model}' has a single queue"
            )


@rule
def queue_sizes_are_powers_of_two(domain):
    for iface in domain.interfaces:
        for attr in ("rx_queue_size", "tx_queue_size"):
            size = getattr(iface, attr)
            if size is not None and size not in QUEUE_SIZES:
                yield iface.line_of("driver"), (
                    f"{_where(iface)}: <driver {attr}='{size}'> is not accepted; QEMU takes a power of "
                    "two from 256 to 1024: 256, 512 or 1024"
                )


@rule
def model_name_characters(domain):
    for iface in domain.interfaces:
        model = iface.model_raw
        if model is not None and not MODEL_RE.fullmatch(model):
            yield iface.line_of("model"), (
                f"{_where(iface)}: <model type='{model}'> may only use letters, digits, '_' and '-'"
            )


@rule
def vhostuser_needs_virtio(domain):
    for iface in domain.interfaces:
        if iface.type == "vhostuser" and not iface.is_virtio:
            yield iface.line_of("model"), (
                "<interface type='vhostuser'> requires the virtio-net frontend: add <model type='virtio'/>"
                + (f" (found '{iface.model}')" if iface.model else "")
            )


@rule
def vhostuser_reconnect_only_as_client(domain):
    for iface in domain.interfaces:
        src = iface.source
        if iface.type != "vhostuser" or src is None or not src.reconnect_enabled:
            continue
        if src.mode == "server":
            yield src.line_of("reconnect"), (
                "<reconnect enabled='yes'> is not supported with <source mode='server'>: "
                "QEMU listens then, so there is nothing to reconnect to; use mode='client'"
            )
        elif not src.reconnect_timeout:
            yield src.line_of("reconnect"), (
                "<reconnect enabled='yes'> needs timeout='SECONDS' (at least 1): how long QEMU waits "
                "between attempts"
            )


def _ip(value):
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


@rule
def socket_addresses(domain):
    for iface in domain.interfaces:
        src = iface.source
        if not iface.kind.socket or src is None:
            continue
        for attr, port in (("port", src.port), ("local/@port", src.local_port)):
            if port is not None and not 1 <= port <= 65535:
                yield src.line_of(attr), f"{_where(iface)}: port {port} is out of range 1..65535"
        for attr, value in (("address", src.address), ("local/@address", src.local_address)):
            if value and ":" in value:
                yield src.line_of(attr), (
                    f"{_where(iface)}: '{value}' is an IPv6 address; QEMU's socket backend takes IPv4 "
                    "addresses (or host names) only"
                )
        if iface.type == "mcast":
            addr = _ip(src.address or "")
            if addr is None or not addr.is_multicast:
                yield src.line, (
                    f"<interface type='mcast'>: <source address='{src.address}'> must be an IPv4 "
                    "multicast address (224.0.0.0/4)"
                )


@rule
def link_state_is_up_or_down(domain):
    for iface in domain.interfaces:
        if iface.link_state not in (None, "up", "down"):
            yield iface.line_of("link"), (
                f"{_where(iface)}: <link state='{iface.link_state}'> is not valid; accepted: 'up' or 'down'"
            )


@rule
def passt_backend_types(domain):
    for iface in domain.interfaces:
        if iface.uses_passt and not iface.kind.passt:
            yield iface.line_of("backend"), (
                f"the 'passt' backend can only be used with interface type {' or '.join(repr(n) for n in iftypes.names(passt=True))}, "
                f"not '{iface.type}'"
            )


@rule
def port_forward_only_with_passt(domain):
    for iface in domain.interfaces:
        if iface.port_forwards and not (iface.type == "user" and iface.uses_passt):
            yield iface.port_forwards[0].line, (
                "the <portForward> element can only be used with <interface type='user'> and its "
                "'passt' backend: add <backend type='passt'/>"
            )


@rule
def port_forward_ranges(domain):
    for iface in domain.interfaces:
        for fwd in iface.port_forwards:
            if fwd.address is not None and _ip(fwd.address) is None:
                yield fwd.line, f"<portForward address='{fwd.address}'> is not an IP address"
            for rng in fwd.ranges:
                if rng.start is None:
                    yield rng.line, "<portForward><range> needs a 'start' port"
                    continue
                for attr in ("start", "end", "to"):
                    value = getattr(rng, attr)
                    if value is not None and not 1 <= value <= 65535:
                        yield rng.line, f"<range {attr}='{value}'> is out of range 1..65535"
                if rng.end is not None and rng.end < rng.start:
                    yield rng.line, f"<range start='{rng.start}' end='{rng.end}'>: end is below start"


@rule
def guest_ips_only_on_user(domain):
    for iface in domain.interfaces:
        ips, routes = iface.guest_ips, iface.guest_routes
        if (ips or routes) and not iface.kind.guest_ips:
            yield (ips or routes)[0].line, (
                f"{_where(iface)}: guest-side <ip>/<route> is not supported by QEMU on this type; "
                "host-side addresses of a tap go inside <source> of an ethernet interface"
            )
        if iface.type != "user":
            continue
        if routes and not iface.uses_passt:
            yield routes[0].line, "<interface type='user'>: guest-side <route> is not supported by QEMU's SLIRP"
        seen = set()
        for ip in ips:
            addr = _ip(ip.address or "")
            if addr is None:
                yield ip.line, f"<ip address='{ip.address}'> is not an IP address"
                continue
            if addr.version in seen:
                yield ip.line, f"only one IPv{addr.version} address per interface is allowed"
            seen.add(addr.version)
            if ip.peer:
                yield ip.line, "<ip peer=...> is not supported on user-mode interfaces"
            if addr.version == 4 and ip.prefix is not None and not 4 <= ip.prefix <= 27:
                yield ip.line, f"<ip prefix='{ip.prefix}'>: an IPv4 prefix must be 4..27"
            if addr.version == 6 and ip.prefix is not None and (iface.uses_passt or ip.prefix != 64):
                yield ip.line, (
                    "<ip prefix=...> on IPv6: passt takes no IPv6 prefix"
                    if iface.uses_passt
                    else f"<ip prefix='{ip.prefix}'>: an IPv6 prefix must be 64"
                )


def _host_side_problems(tag, address, prefix, other_attr, other):
    """What is wrong with one <source><ip> or <route>: address, prefix, and peer/gateway family."""
    addr = _ip(address or "")
    if addr is None:
        yield f"<source><{tag} address='{address}'> is not an IP address"
        return
    if prefix is not None and not 0 <= prefix <= addr.max_prefixlen:
        yield f"<source><{tag} prefix='{prefix}'> is out of range 0..{addr.max_prefixlen}"
    if other is not None:
        partner = _ip(other)
        if partner is None or partner.version != addr.version:
            yield f"<source><{tag} {other_attr}='{other}'> is not an IPv{addr.version} address"


@rule
def host_addresses_and_routes(domain):
    """<source><ip>/<route> of an ethernet tap: checked here, not discovered after the tap exists."""
    for iface in domain.interfaces:
        src = iface.source
        if src is None:
            continue
        for ip in src.host_ips:
            yield from ((ip.line, m) for m in _host_side_problems("ip", ip.address, ip.prefix, "peer", ip.peer))
        for route in src.host_routes:
            yield from ((route.line, m) for m in _host_side_problems(
                "route", route.address, route.prefix, "gateway", route.gateway))


@rule
def alias_is_user_alias(domain):
    for iface in domain.interfaces:
        alias = iface.alias
        if alias is not None and not USER_ALIAS_RE.fullmatch(alias):
            yield iface.line_of("alias"), (
                f"<alias name='{alias}'> is not a user alias; it must start with 'ua-' and use only "
                "letters, digits, '_' and '-'"
            )


def _duplicates(domain, key, describe):
    seen = {}
    for iface in domain.interfaces:
        value = key(iface)
        if value is None:
            continue
        if value in seen:
            yield iface.line, f"{describe(value)} is used by two interfaces (lines {seen[value]} and {iface.line})"
        else:
            seen[value] = iface.line


@rule
def unique_macs(domain):
    # A virtio failover pair (<teaming>) shares one MAC by design: the transient member names the
    # persistent one's alias, and only the persistent one counts.
    def key(iface):
        if not iface.mac or (iface.teaming_type == "transient" and iface.teaming_persistent):
            return None
        return mac.normal(iface.mac) if mac.is_mac(iface.mac) else iface.mac

    yield from _duplicates(domain, key, lambda v: f"MAC address {v}")


@rule
def custom_tap_path_only_for_taps(domain):
    for iface in domain.interfaces:
        if iface.backend_tap is not None and not iface.kind.tap_path:
            yield iface.line_of("backend"), (
                f"<backend tap='{iface.backend_tap}'> (a custom tun device path) is not supported for "
                f"interfaces of type '{iface.type}'; only {iftypes.phrase(iftypes.names(tap_path=True))} create taps"
            )


@rule
def unique_target_devs(domain):
    def kept_name(iface):
        dev = iface.target_dev
        if not dev or "%" in dev or (ifname.is_generated(dev) and not iface.unmanaged):
            return None  # templates are filled at start; generated names are dropped
        return dev

    yield from _duplicates(domain, kept_name, lambda v: f"target dev '{v}'")


@rule
def unique_aliases(domain):
    yield from _duplicates(domain, lambda i: i.alias, lambda v: f"alias '{v}'")


@rule
def unique_pci_addresses(domain):
    def key(iface):
        addr = iface.address
        return addr.key() if addr is not None and addr.type == "pci" else None

    yield from _duplicates(domain, key, lambda v: "PCI address %04x:%02x:%02x.%x" % v)


@rule
def boot_orders(domain):
    orders = [(i, i.boot_order) for i in domain.interfaces if i.has("boot")]
    if orders and domain.os_boot_devs:
        iface = orders[0][0]
        yield iface.line_of("boot"), (
            "per-device <boot order=...> cannot be combined with <os><boot dev=...>; use one or the other"
        )
    seen = {}
    for iface, order in orders:
        if order < 1:
            yield iface.line_of("boot"), f"<boot order='{order}'> must be a positive number"
        elif order in seen:
            yield iface.line_of("boot"), f"<boot order='{order}'> is used twice (lines {seen[order]} and {iface.line_of('boot')})"
        seen.setdefault(order, iface.line_of("boot"))


@rule
def pci_slot_not_reserved(domain):
    reserved = {0: "the host bridge", 1: "the chipset (PIIX3/ICH9)"}
    if domain.is_q35:
        reserved[0x1F] = "the ICH9 LPC/SATA/SMBus functions"
    for iface in domain.interfaces:
        addr = iface.address
        if addr is not None and addr.type == "pci" and (addr.bus or 0) == 0 and addr.slot in reserved:
            yield addr.line, (
                f"{_where(iface)}: PCI slot 0x{addr.slot:02x} on bus 0 belongs to {reserved[addr.slot]}; "
                "use a slot from 0x02 to 0x1f, or leave <address> out to have one assigned"
            )


@rule
def memory_is_positive(domain):
    if domain.has("memory") and not domain.memory > 0:
        yield domain.line_of("memory"), "<memory> must be a positive amount of guest RAM"


@rule
def rom_only_on_pci(domain):
    for iface in domain.interfaces:
        addr = iface.address
        if iface.has("rom") and addr is not None and addr.type != "pci":
            yield iface.line_of("rom"), "<rom> tuning is only supported for PCI devices"


def check_domain(domain, filename=None):
    """Run every rule; raise the first problem (by line) as an XMLInputError."""
    problems = []
    for func in RULES:
        problems.extend(func(domain))
    if problems:
        line, message = min(problems, key=lambda p: p[0] or 0)
        raise XMLInputError(message, file=filename, line=line)


__all__ = ["check_domain", "RULES", "VIRTIO_MODELS"]
