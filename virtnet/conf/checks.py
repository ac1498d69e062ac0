"""Semantic rules applied after the schema: one small function per rule.

Each rule yields (line, message) for every violation it finds. `check_domain` runs them all and
raises the first violation in document order, so a user fixes problems top to bottom. A rule
registered with `rule_about` is skipped for a domain whose devices hold none of the elements it is
about (it could find nothing there): most domains have no <filterref>, <portForward> or <disk>.
A rule registered as `screened` is skipped where one walk of the raw elements (`survey`) finds the
values it reads written the usual way (it could find nothing there either): most domains are, and
reading those values through a fresh model costs several times more than the walk.
"""

import functools
import ipaddress
import math
import operator
import re

from lxml import etree

from virtnet.conf import disk as diskconf
from virtnet.conf import ifname, iftypes, mac, pci
from virtnet.conf.address import pci_number
from virtnet.conf.domain import Domain, model_name
from virtnet.conf.guest import VIRTIO_MODELS
from virtnet.conf.text import control_re, surely_plain, visible
from virtnet.conf.xmlmodel import first_children, freeze
from virtnet.errors import XMLInputError

RULES = []

# One character class with '+', nothing else: so a string of such names joined together matches it
# exactly when each name does, which is what the screen of model_name_characters relies on.
MODEL_RE = re.compile(r"[A-Za-z0-9_-]+")
USER_ALIAS_RE = re.compile(r"ua-[A-Za-z0-9_-]+")
QUEUE_SIZES = (256, 512, 1024)  # powers of two that QEMU accepts for virtio-net rings


def rule(func=None, *, screened=False, on_element=False):
    """Register FUNC, a rule every domain goes through (SCREENED: see rule_about). ON_ELEMENT: FUNC
    reads the <domain> element as written, not the model, and check_domain passes it that element
    (a domain where only such rules run gets no model made: its first reads cost more than the rule)."""
    if func is None:
        return functools.partial(rule, screened=screened, on_element=on_element)
    func.about = None
    func.screened = screened
    func.on_element = on_element
    RULES.append(func)
    return func


def rule_about(*elements, screened=False):
    """Register a rule about some device elements (names of elements below <devices>, at any depth),
    one of which a domain must have for the rule to find anything: check_domain does not run it
    where the devices hold none of them. The rule itself stays complete (called on any domain, it
    finds the same problems): the names only spare the common case its loop over the devices.
    SCREENED: a rule that finds nothing where the domain and its interfaces are written the usual
    way (see survey); check_domain does not run it there either."""
    def register(func):
        rule(func).about = frozenset(elements)
        func.screened = screened
        return func

    return register


def _where(iface):
    return f"<interface type='{iface.type}'>"


FREE_TEXT = ("description",)  # prose: may span lines (tabs and newlines only)
FREE_TEXT_ALLOWED = "\t\n\r"
MACHINE_RE = re.compile(r"[A-Za-z0-9._-]+")
MTU_RANGE = (68, 65535)  # what the kernel takes for an Ethernet device
PORT_RANGE = (1, 65535)
INTEGER_RE = re.compile(r"[+-]?[0-9]+")
# Multiqueue limits: the kernel's MAX_TAP_QUEUES, and QEMU's virtio-net (VIRTIO_QUEUE_MAX 1024
# virtqueues: one pair per queue plus the control queue).
MAX_TAP_QUEUES = 256
MAX_IMPLIED_CONTROLLER = 31  # a disk name implying a higher SATA/SCSI controller index is a typo
MAX_VIRTIO_QUEUES = 511
MAX_BURST_KIB = (2**32 - 1) // 1024  # <bandwidth> burst: tc keeps it in a 32-bit count of bytes


def _element_name(node):
    return etree.QName(node).localname


# One screen for the two text rules of plain_values, one XPath pass (C): every attribute value, then
# the document's string value (its text nodes), joined in C (EXSLT's str:concat) into one string.
# When it is printable (conf.text.surely_plain) and holds no space, no value has a control character
# and no attribute value is padded (every other character str.strip removes is non-printable);
# otherwise a rule walks the tree as written, for its message. regexp=False: lxml would register its
# regular-expression functions at every call otherwise (~3 K instructions), and none is used.
_ALL_VALUES_JOINED = etree.XPath("concat(str:concat(descendant-or-self::*/@*), string())",
                                 namespaces={"str": "http://exslt.org/strings"}, smart_strings=False,
                                 regexp=False)
# Where that screen cannot tell (a space somewhere), the padding rule's second look: value by value.
_ATTRIBUTE_VALUES = etree.XPath("descendant-or-self::*/@*", smart_strings=False, regexp=False)
# Compiled once: find/findall with '*' go through ElementPath (Python) at every call. Same elements,
# in the same (document) order.
_DEVICE_ALIASES = etree.XPath("devices/*/alias", regexp=False)
_DEVICE_BOOTS = etree.XPath("devices/*/boot", regexp=False)


@functools.cache
def _string_text_tags():
    """Elements whose text virtnet reads as written (a name, a path, a kernel command line): a line
    break there reaches argv even when the rest is blank or a number. Asked once the whole model is
    imported (by the first check)."""
    from virtnet.conf.xmlmodel import XMLObject

    tags, pending = set(), [XMLObject]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        tags.update(p.elements[-1] for p in cls.declared_props().values()
                    if p.attr is None and p.elements and p.kind is str)
    return frozenset(tags)


@rule(on_element=True)
def plain_values(root):
    """Values are used as written (argv, scripts, messages): none holds a control character, and no
    attribute value is padded with blanks. One screen serves both rules (see _ALL_VALUES_JOINED)."""
    joined = _ALL_VALUES_JOINED(root)
    printable = surely_plain(joined)
    if not printable:
        yield from _control_characters(root)
    if not printable or " " in joined:
        yield from _padded_attributes(root)


def _control_characters(root):
    """No attribute value or element text holds a control character (free prose excepted)."""
    for node in root.iter(tag=etree.Element):
        if _element_name(node) == "metadata":
            continue
        if any(_element_name(a) == "metadata" for a in node.iterancestors()):
            continue
        tag = _element_name(node)
        for attr, value in node.attrib.items():
            bad = control_re().search(value)
            if bad:
                yield node.sourceline, (
                    f"<{tag} {etree.QName(attr).localname}='{visible(value)}'> contains the control character "
                    f"U+{ord(bad.group()):04X}; accepted: printable characters only (no control or "
                    "bidirectional-override characters)"
                )
        text = node.text if len(node) == 0 else None
        laid_out = not text.strip() or INTEGER_RE.fullmatch(text.strip()) if text else True
        if not text or (laid_out and tag not in _string_text_tags()):
            continue  # blank (an empty element laid out on lines), or a number (read stripped)
        allowed = FREE_TEXT_ALLOWED if tag in FREE_TEXT else ""
        bad = next((m for m in control_re().finditer(text) if m.group() not in allowed), None)
        if bad:
            yield node.sourceline, (
                f"<{tag}>{visible(text)}</{tag}> contains the control character U+{ord(bad.group()):04X}; "
                "accepted: printable characters only (no control or bidirectional-override characters)"
            )


def _padded_attributes(root):
    """An attribute value does not begin or end with blanks: the schema reads enumerations as tokens
    (' virtio ' passes as 'virtio'), while virtnet, QEMU and libvirt use the value as written."""
    values = _ATTRIBUTE_VALUES(root)
    if [value.strip() for value in values] == values:
        return
    for node in root.iter(tag=etree.Element):
        if _element_name(node) == "metadata" or any(_element_name(a) == "metadata" for a in node.iterancestors()):
            continue
        for attr, value in node.attrib.items():
            if value != value.strip():
                yield node.sourceline, (
                    f"<{_element_name(node)} {etree.QName(attr).localname}='{value}'>: the value begins or ends "
                    "with blanks; write it without them"
                )


@rule(screened=True)
def domain_name_rules(domain):
    """libvirt's rules for a domain name: not empty, no '/', and (virtnet's store) no leading '.'."""
    if not domain.has("name"):
        return
    problem = _name_problem(domain.name or "")
    if problem:
        yield domain.line_of("name"), problem


def _name_problem(name):
    """What is wrong with a domain's NAME (see domain_name_rules), or None."""
    if not name.strip():
        return "<name> is empty; a domain needs a name (letters, digits, '.', '_', '-', ...)"
    if "/" in name:
        return f"<name>{visible(name)}</name> contains '/', which a domain name may not"
    if name.startswith("."):
        return f"<name>{visible(name)}</name> starts with '.', which a domain name may not"
    return None


@rule(screened=True)
def machine_name_characters(domain):
    machine = domain.machine
    if machine is not None and not MACHINE_RE.fullmatch(machine):
        yield domain.line_of("os/type"), (
            f"<type machine='{visible(machine)}'> is not a machine type name; accepted: letters, "
            "digits, '.', '_' and '-' (e.g. 'pc', 'q35', 'pc-q35-7.2')"
        )


@rule_about("target", screened=True)
def managed_is_yes_or_no(domain):
    for iface in domain.interfaces:
        if iface.managed not in (None, "yes", "no"):
            yield iface.line_of("target"), (
                f"{_where(iface)}: <target managed='{iface.managed}'> is not valid; accepted: 'yes' or 'no'"
            )


@rule_about("serial", "console", "channel")
def udp_chardev_has_a_peer(domain):
    for chardev in domain.serials + domain.consoles + domain.channels:
        if chardev.type == "udp" and chardev.udp_sources[0] is None:
            yield chardev.line, (
                f"<{chardev.kind} type='udp'> needs <source mode='connect' host=... service=.../>: the peer "
                "it sends to (a mode='bind' source alone is only the local end)"
            )


@rule_about("target", screened=True)
def unmanaged_target_is_a_fixed_name(domain):
    for iface in domain.interfaces:
        if iface.unmanaged and iface.target_dev and "%" in iface.target_dev:
            yield iface.line_of("target"), (
                f"{_where(iface)}: <target dev='{iface.target_dev}' managed='no'> names a template; a "
                "managed='no' target is an existing tap, so give its exact name"
            )


@rule_about("target", screened=True)
def unmanaged_only_on_ethernet(domain):
    for iface in domain.interfaces:
        if iface.unmanaged and not iface.kind.script:
            yield iface.line_of("target"), (
                f"unmanaged target dev is not supported on interfaces of type '{iface.type}'; "
                f"managed='no' is only accepted with <interface type='{iftypes.phrase(iftypes.names(script=True))}'>"
            )


@rule_about("mac", screened=True)
def mac_is_valid_unicast(domain):
    macs = [iface.mac for iface in domain.interfaces]
    if all(macs) and _usual_unicast_macs(macs):
        return  # every interface has a MAC, and each is fine (the common case)
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


@rule_about("target", screened=True)
def target_dev_is_an_interface_name(domain):
    for iface in domain.interfaces:
        if iface.target_dev is None:
            continue
        problem = ifname.problem(iface.target_dev)
        if problem:
            yield iface.line_of("target"), f"{_where(iface)}: <target dev='{iface.target_dev}'> {problem}"


@rule_about("source", screened=True)
def direct_source_dev_is_an_interface_name(domain):
    for iface in domain.interfaces:
        dev = iface.source.dev if iface.type == "direct" and iface.source is not None else None
        if dev is None:
            continue
        problem = ifname.problem(dev) or ("is a template; name the existing device" if "%" in dev else None)
        if problem:
            yield iface.line_of("source"), f"{_where(iface)}: <source dev='{dev}'> {problem}"


@rule_about("script", "downscript")
def scripts_only_on_ethernet(domain):
    for iface in domain.interfaces:
        for tag in ("script", "downscript"):
            if iface.has(tag) and not iface.kind.script:
                yield iface.line_of(tag), (
                    f"<{tag}> is not supported on interfaces of type '{iface.type}'; "
                    f"it is only accepted with <interface type='{iftypes.phrase(iftypes.names(script=True))}'>"
                )


@rule_about("mtu", screened=True)
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
        elif not MTU_RANGE[0] <= iface.mtu <= MTU_RANGE[1]:
            yield iface.line_of("mtu"), (f"{_where(iface)}: <mtu size='{iface.mtu}'> is out of range "
                                         f"{MTU_RANGE[0]}..{MTU_RANGE[1]}")


@rule_about("inbound", "outbound")
def bandwidth_rates(domain):
    """libvirt's rules for <bandwidth>: an average for every rate (floor only inbound, and only on a
    libvirt network, which virtnet does not run)."""
    for iface in domain.interfaces:
        for direction in ("inbound", "outbound"):
            rates = getattr(iface, direction)
            if rates is None:
                continue
            where = iface.line_of(f"bandwidth/{direction}"), f"{_where(iface)}: <bandwidth><{direction}>"
            if rates.floor is not None and direction == "outbound":
                yield where[0], f"{where[1]}: floor is only accepted in <inbound> (as in libvirt)"
            elif rates.floor is not None and iface.type != "network":
                yield where[0], (f"{where[1]}: floor is only supported on interfaces of type 'network' (as in "
                                 "libvirt: a network guarantees it); use average and peak")
            elif not rates.average and rates.floor is None:
                yield where[0], f"{where[1]} needs a non-zero average (kilobytes per second)"
            elif (rates.burst or 0) > MAX_BURST_KIB:
                yield where[0], f"{where[1]}: burst='{rates.burst}' is more than tc holds ({MAX_BURST_KIB} KiB)"


@rule_about("filterref")
def filterref_is_clean_traffic(domain):
    """virtnet renders libvirt's clean-traffic filter itself (host.nwfilter); there is no nwfilter
    daemon for the others."""
    for iface in domain.interfaces:
        name = iface.filter_name
        if name is None:
            continue
        # Imported only for a <filterref>: host.nwfilter brings subprocess, shutil and hashlib, a
        # noticeable share of a one-file conversion's start-up.
        from virtnet.host.nwfilter import FILTERS, PARAMETERS

        if name not in FILTERS:
            yield iface.line_of("filterref"), (
                f"{_where(iface)}: <filterref filter='{visible(name)}'> is not supported: virtnet has no nwfilter "
                f"daemon and applies only {', '.join(repr(f) for f in FILTERS)} (its own nftables rules)")
            continue
        for parameter in iface.filter_parameters:
            if parameter.name not in PARAMETERS:
                yield parameter.node.sourceline, (
                    f"{_where(iface)}: <filterref filter='{name}'> parameter '{visible(parameter.name or '')}' is not "
                    f"supported; accepted: {', '.join(PARAMETERS)}")
            elif _ipv4(parameter.value) is None:
                yield parameter.node.sourceline, (
                    f"{_where(iface)}: <filterref> parameter IP='{visible(parameter.value or '')}' is not an "
                    "IPv4 address")


def _ipv4(value):
    try:
        return ipaddress.IPv4Address(value or "")
    except ValueError:
        return None


@rule_about("driver")
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


@rule_about("driver")
def queue_sizes_are_powers_of_two(domain):
    for iface in domain.interfaces:
        for attr in ("rx_queue_size", "tx_queue_size"):
            size = getattr(iface, attr)
            if size is not None and size not in QUEUE_SIZES:
                yield iface.line_of("driver"), (
                    f"{_where(iface)}: <driver {attr}='{size}'> is not accepted; QEMU takes a power of "
                    "two from 256 to 1024: 256, 512 or 1024"
                )


def _plain_models(models):
    """Whether every model of MODELS (strings, or None for none) is there and matches MODEL_RE, told
    in one match for all (the common case; see MODEL_RE). False means: ask each one."""
    return all(models) and MODEL_RE.fullmatch("".join(models)) is not None


@rule_about("model", screened=True)
def model_name_characters(domain):
    if _plain_models([iface.model_raw for iface in domain.interfaces]):
        return
    for iface in domain.interfaces:
        model = iface.model_raw
        if model is not None and not MODEL_RE.fullmatch(model):
            yield iface.line_of("model"), (
                f"{_where(iface)}: <model type='{model}'> may only use letters, digits, '_' and '-'"
            )


@rule_about("interface", screened=True)
def vhostuser_needs_virtio(domain):
    for iface in domain.interfaces:
        if iface.type == "vhostuser" and not iface.is_virtio:
            yield iface.line_of("model"), (
                "<interface type='vhostuser'> requires the virtio-net frontend: add <model type='virtio'/>"
                + (f" (found '{iface.model}')" if iface.model else "")
            )


@rule_about("reconnect")
def vhostuser_reconnect_only_as_client(domain):
    for iface in domain.interfaces:
        src = iface.source if iface.type == "vhostuser" else None
        if src is None or not src.reconnect_enabled:
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


# An IPv4 multicast address (224.0.0.0/4) as ipaddress reads one: decimal octets without leading
# zeros. A match spares the parse (most <interface type='mcast'>); anything else is parsed.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_MULTICAST_RE = re.compile(rf"(?:22[4-9]|23[0-9])(?:\.{_OCTET}){{3}}")


def _ip(value):
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


@rule_about("source", screened=True)
def socket_addresses(domain):
    for iface in domain.interfaces:
        src = iface.source if iface.type in iftypes.SOCKET_TYPES else None
        if src is None:
            continue
        for attr, port in (("port", src.port), ("local/@port", src.local_port)):
            if port is not None and not PORT_RANGE[0] <= port <= PORT_RANGE[1]:
                yield src.line_of(attr), (f"{_where(iface)}: port {port} is out of range "
                                          f"{PORT_RANGE[0]}..{PORT_RANGE[1]}")
        for attr, value in (("address", src.address), ("local/@address", src.local_address)):
            if value and ":" in value:
                yield src.line_of(attr), (
                    f"{_where(iface)}: '{value}' is an IPv6 address; QEMU's socket backend takes IPv4 "
                    "addresses (or host names) only"
                )
        if iface.type == "mcast" and not _IPV4_MULTICAST_RE.fullmatch(src.address or ""):
            addr = _ip(src.address or "")
            if addr is None or not addr.is_multicast:
                yield src.line, (
                    f"<interface type='mcast'>: <source address='{src.address}'> must be an IPv4 "
                    "multicast address (224.0.0.0/4)"
                )


@rule_about("link")
def link_state_is_up_or_down(domain):
    for iface in domain.interfaces:
        if iface.link_state not in (None, "up", "down"):
            yield iface.line_of("link"), (
                f"{_where(iface)}: <link state='{iface.link_state}'> is not valid; accepted: 'up' or 'down'"
            )


@rule_about("backend")
def passt_backend_types(domain):
    for iface in domain.interfaces:
        if iface.uses_passt and not iface.kind.passt:
            yield iface.line_of("backend"), (
                f"the 'passt' backend can only be used with interface type {' or '.join(repr(n) for n in iftypes.names(passt=True))}, "
                f"not '{iface.type}'"
            )


@rule_about("portForward")
def port_forward_only_with_passt(domain):
    """<portForward> is passt's (passt_argv turns it into --tcp-ports/--udp-ports): libvirt takes it
    on both interface types passt serves, type='user' and the vhost-user flavour, type='vhostuser'."""
    for iface in domain.interfaces:
        if not iface.port_forwards or (iface.type in ("user", "vhostuser") and iface.uses_passt):
            continue
        if iface.type == "user":
            why = ("the <portForward> element can only be used with <interface type='user'> and its "
                   "'passt' backend: add <backend type='passt'/>")
        elif iface.type == "vhostuser":
            why = ("the <portForward> element can only be used with <interface type='vhostuser'> when passt is "
                   "its backend: add <backend type='passt'/>")
        else:
            why = (f"the <portForward> element cannot be used with <interface type='{iface.type}'>: only with "
                   "type='user' or type='vhostuser' and <backend type='passt'/>")
        yield iface.port_forwards[0].line, why


@rule_about("portForward")
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


@rule_about("ip", "route")
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


@rule_about("ip", "route")
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


def _aliased(domain):
    """The interfaces, disks and controllers: the devices whose aliases virtnet reads."""
    return list(domain.interfaces) + list(domain.disks) + list(domain.controllers)


@rule_about("alias")
def alias_is_user_alias(domain):
    """A device alias given in a definition is a user alias (libvirt's inactive XML keeps no other:
    virtnet would drop it from the canonical XML and the device's ids would change)."""
    for node in _DEVICE_ALIASES(domain.node):
        alias = node.get("name")
        if alias is not None and not USER_ALIAS_RE.fullmatch(alias):
            yield node.sourceline, (
                f"<alias name='{alias}'> is not a user alias; it must start with 'ua-' and use only "
                "letters, digits, '_' and '-'"
            )


# The MACs of most domains, written as usual: six two-digit octets, unicast (the low bit of the first
# octet is that of its second digit: an even one). Joined by commas, all are told in one match, much
# cheaper than asking conf.mac about each (the rules' common case; the others go the long way).
_USUAL_UNICAST_MAC = r"[0-9A-Fa-f][02468AaCcEe](?::[0-9A-Fa-f]{2}){5}"
_USUAL_UNICAST_MACS = re.compile(f"{_USUAL_UNICAST_MAC}(?:,{_USUAL_UNICAST_MAC})*")


def _usual_unicast_macs(macs):
    """Whether every MAC of MACS (a list of strings) is written as usual (see above): then it is a
    unicast MAC address (conf.mac). The length tells that no value held the separator."""
    joined = ",".join(macs)
    if len(joined) != (mac.TWO_DIGIT_LENGTH + 1) * len(macs) - 1:
        return False
    return _USUAL_UNICAST_MACS.fullmatch(joined) is not None


def _duplicates(domain, key, describe):
    seen = {}
    for iface in domain.interfaces:
        value = key(iface)
        if value is None:
            continue
        if value in seen:
            yield iface.line, (f"{describe(value)} is used by two interfaces (lines {seen[value].line} and "
                               f"{iface.line})")
        else:
            seen[value] = iface


@rule_about("mac", screened=True)
def unique_macs(domain):
    macs = [iface.mac for iface in domain.interfaces if iface.mac]
    if set(map(len, macs)) == {mac.TWO_DIGIT_LENGTH} and len(set(map(str.lower, macs))) == len(macs):
        # The common case, told in C: that long, a MAC address has two digits an octet, so
        # its key below (its normal form) is its lower case; a value that is no MAC address is its
        # own key, and no MAC's lower case. Distinct lower cases, distinct keys.
        return
    # A virtio failover pair (<teaming>) shares one MAC by design: the transient member names the
    # persistent one's alias, and only the persistent one counts.
    def key(iface):
        if not iface.mac or (iface.teaming_type == "transient" and iface.teaming_persistent):
            return None
        return mac.normalized(iface.mac) or iface.mac

    yield from _duplicates(domain, key, lambda v: f"MAC address {v}")


@rule_about("backend")
def custom_tap_path_only_for_taps(domain):
    for iface in domain.interfaces:
        if iface.backend_tap is not None and not iface.kind.tap_path:
            yield iface.line_of("backend"), (
                f"<backend tap='{iface.backend_tap}'> (a custom tun device path) is not supported for "
                f"interfaces of type '{iface.type}'; only {iftypes.phrase(iftypes.names(tap_path=True))} create taps"
            )


def _kept_target_name(dev, unmanaged):
    """The <target dev> DEV an interface keeps (None: no name, or one replaced at start)."""
    if not dev or "%" in dev or (ifname.is_generated(dev) and not unmanaged):
        return None  # templates are filled at start; generated names are dropped
    return dev


@rule_about("target", screened=True)
def unique_target_devs(domain):
    yield from _duplicates(domain, lambda iface: _kept_target_name(iface.target_dev, iface.unmanaged),
                           lambda v: f"target dev '{v}'")


def _two(first, second):
    """'interfaces' when both devices are interfaces (or both disks, ...), else 'devices'."""
    return {"interface": "interfaces", "disk": "disks", "controller": "controllers"}.get(first, "devices") \
        if first == second else "devices"


@rule_about("alias")
def unique_aliases(domain):
    seen = {}
    for device in _aliased(domain):
        alias = device.alias
        if alias is None:
            continue
        if alias in seen:
            kinds = _two(seen[alias][0], device.node.tag)
            yield device.line, f"alias '{alias}' is used by two {kinds} (lines {seen[alias][1]} and {device.line})"
        else:
            seen[alias] = (device.node.tag, device.line)


@rule_about("address")
def unique_pci_addresses(domain):
    """No two devices at one PCI address, whichever devices they are (libvirt refuses it too)."""
    seen = {}
    for tag, addr in domain.pci_addresses:
        if not pci.names_a_place(addr):
            continue  # it asks for an address: the defaults give it a free one
        try:
            key = tuple(pci_number(addr.get(a, "0")) for a in ("domain", "bus", "slot", "function"))
        except ValueError:
            continue  # not a number: the schema or conf.pci says so, at that element
        line = addr.getparent().sourceline
        if key in seen:
            kinds = _two(seen[key][0], tag)
            yield line, "PCI address %04x:%02x:%02x.%x" % key + f" is used by two {kinds} (lines {seen[key][1]} and {line})"
        else:
            seen[key] = (tag, line)


@rule_about("boot")
def boot_orders(domain):
    """Per-device <boot order> (NICs, disks, any device) or <os><boot dev>, not both; each order once."""
    boots = _DEVICE_BOOTS(domain.node)
    if boots and domain.os is not None and domain.os.boot_devs:
        yield boots[0].sourceline, (
            "per-device <boot order=...> cannot be combined with <os><boot dev=...>; use one or the other"
        )
    seen = {}
    for boot in boots:
        text = boot.get("order")
        order = int(text) if text is not None and INTEGER_RE.fullmatch(text.strip()) else None
        if order is None:
            continue  # the schema's
        if order < 1:
            yield boot.sourceline, f"<boot order='{order}'> must be a positive number"
        elif order in seen:
            yield boot.sourceline, f"<boot order='{order}'> is used twice (lines {seen[order]} and {boot.sourceline})"
        seen.setdefault(order, boot.sourceline)


def _reserved_slots(domain):
    """Slots of bus 0 the chipset keeps: the host bridge, and the PIIX3 (pc) or ICH9 (q35) functions."""
    if domain.is_q35:
        return {0: "the host bridge", 0x1F: "the ICH9 LPC/SATA/SMBus functions"}
    return {0: "the host bridge", 1: "the chipset (PIIX3)"}


def _free_slots(domain):
    return "0x01 to 0x1e" if domain.is_q35 else "0x02 to 0x1f"


@rule_about("address")
def pci_slot_not_reserved(domain):
    reserved = _reserved_slots(domain)
    for iface in domain.interfaces:
        addr = iface.address
        if addr is not None and addr.type == "pci" and (addr.bus or 0) == 0 and addr.slot in reserved:
            yield addr.line, (
                f"{_where(iface)}: PCI slot 0x{addr.slot:02x} on bus 0 belongs to {reserved[addr.slot]}; "
                f"use a slot from {_free_slots(domain)}, or leave <address> out to have one assigned"
            )
    rendered = [c for c in domain.controllers if c.type in ("pci", "scsi", "sata")]  # the chipset's USB is at 01.2
    for device in list(domain.disks) + rendered:
        addr = device.address
        if addr is None or addr.type != "pci" or (addr.bus or 0) != 0 or addr.slot not in reserved:
            continue
        builtin = pci.BUILTIN.get((device.node.get("type"), device.index or 0, domain.is_q35)) \
            if device.node.tag == "controller" else None
        if builtin is not None and builtin[0] == addr.slot:
            continue  # the chipset's own IDE or SATA controller, where it is
        yield addr.line, (
            f"<{device.node.tag} type='{device.node.get('type')}'>: PCI slot 0x{addr.slot:02x} on bus 0 belongs to "
            f"{reserved[addr.slot]}; use a slot from {_free_slots(domain)}, or leave <address> out to have one assigned"
        )


# ---------------------------------------------------------------- disks and controllers


def _disk_where(disk):
    dev = disk.target_dev
    return f"<disk type='{disk.type}' device='{disk.device}'>" + (f" (target {dev})" if dev else "")


@rule_about("disk")
def disk_target_is_a_disk_name(domain):
    """libvirt names disks by their target (hda, sdb, vdc): the name gives the disk's index, its
    default bus and drive address, and its alias."""
    for disk in domain.disks:
        dev = disk.target_dev
        if dev is not None and diskconf.disk_index(dev) is None:
            yield disk.line_of("target"), (
                f"<target dev='{visible(dev)}'> is not a disk name; accepted: hd, sd, vd, fd or xvd followed by "
                "lowercase letters, e.g. vda, sdb, hdc"
            )
        elif disk.bus is None:
            yield disk.line_of("target"), (
                f"{_disk_where(disk)}: no bus given and none implied by the name; add <target bus=...>"
            )


@rule_about("disk")
def unique_disk_targets(domain):
    seen = {}
    for disk in domain.disks:
        dev = disk.target_dev
        if dev is None:
            continue
        if dev in seen:
            yield disk.line_of("target"), (
                f"<target dev='{dev}'> is used by two disks (lines {seen[dev]} and {disk.line_of('target')})"
            )
        else:
            seen[dev] = disk.line_of("target")


@rule_about("disk")
def disk_bus_fits_device(domain):
    """What QEMU cannot do: a CD-ROM needs removable media (not virtio-blk), the q35 chipset has no
    IDE, a floppy needs the floppy controller."""
    for disk in domain.disks:
        bus, device = disk.bus, disk.device
        where = disk.line_of("target")
        if device == "cdrom" and bus == "virtio":
            yield where, (
                f"{_disk_where(disk)}: a CD-ROM cannot use bus='virtio' (virtio-blk has no removable media); "
                f"use bus='{'sata' if domain.is_q35 else 'ide'}' or bus='scsi'"
            )
        elif device == "floppy" and bus not in (None, "fdc"):
            yield where, f"{_disk_where(disk)}: a floppy disk needs bus='fdc'"
        elif device == "lun" and bus not in (None, "virtio", "scsi"):
            yield where, f"{_disk_where(disk)}: a LUN needs bus='scsi' or bus='virtio'"
        elif bus == "ide" and domain.is_q35:
            yield where, (
                f"{_disk_where(disk)}: the q35 machine has no IDE controller; use bus='sata' (same devices, "
                "on the chipset's AHCI controller) or another bus"
            )


@rule_about("disk")
def readonly_disks_on_ide_and_sata(domain):
    """QEMU's ide-hd cannot use a read-only drive (libvirt: readonly ide/sata disks are not supported);
    virtio and SCSI disks and every CD-ROM can."""
    for disk in domain.disks:
        if disk.readonly and disk.device == "disk" and disk.bus in ("ide", "sata"):
            yield disk.line_of("readonly"), (
                f"{_disk_where(disk)}: readonly {disk.bus} disks are not supported (QEMU's IDE/SATA hard disks "
                "cannot be read-only); use bus='virtio' or bus='scsi', or device='cdrom'"
            )


@rule_about("disk")
def disk_source_path_is_absolute(domain):
    for disk in domain.disks:
        for attr, value in (("file", disk.source_file), ("dev", disk.source_dev)):
            if value is not None and not value.startswith("/"):
                yield disk.line_of("source"), (
                    f"{_disk_where(disk)}: <source {attr}='{visible(value)}'> is not an absolute path; libvirt and "
                    "virtnet need one (QEMU would look for it in its own working directory)"
                )


@rule_about("disk")
def disk_has_a_source(domain):
    """Only a CD-ROM (or floppy) may be empty: a hard disk without a source has no medium to show."""
    for disk in domain.disks:
        if disk.type in ("file", "block") and disk.device in ("disk", "lun") and disk.path is None:
            attr = "file" if disk.type == "file" else "dev"
            yield disk.line, (
                f"{_disk_where(disk)} needs <source {attr}='...'>; only a CD-ROM or floppy may be empty"
            )


@rule_about("disk")
def disk_driver_settings(domain):
    for disk in domain.disks:
        where = disk.line_of("driver")
        if disk.io == "native" and disk.cache not in ("none", "directsync"):
            yield where, (
                f"{_disk_where(disk)}: <driver io='native'> needs cache='none' or cache='directsync' (QEMU's "
                "native AIO bypasses the host page cache)"
            )
        for attr in ("queues", "queue_size"):
            if getattr(disk, attr) is not None and disk.bus != "virtio":
                yield where, f"{_disk_where(disk)}: <driver {attr}> is only supported for virtio disks"
        if disk.queue_size is not None and disk.queue_size & (disk.queue_size - 1):
            yield where, f"{_disk_where(disk)}: <driver queue_size='{disk.queue_size}'> must be a power of two"


@rule_about("disk")
def disk_address_fits_bus(domain):
    """A virtio disk sits on PCI; an IDE, SATA or SCSI disk at a drive address on its controller."""
    limits = {"ide": (0, 1, 0, 1), "sata": (None, 0, 0, diskconf.SATA_UNITS - 1)}
    for disk in domain.disks:
        addr, bus = disk.address, disk.bus
        if addr is None or bus not in ("virtio",) + diskconf.DRIVE_BUSES:
            continue
        wanted = "pci" if bus == "virtio" else "drive"
        if addr.type != wanted:
            yield addr.line, (
                f"{_disk_where(disk)}: a {bus} disk needs <address type='{wanted}' ...>, not type='{addr.type}'"
            )
            continue
        limit = limits.get(bus)
        if limit is None or wanted != "drive":
            continue
        for name, value, top in zip(("controller", "bus", "target", "unit"), addr.drive_key(), limit):
            if top is not None and value > top:
                yield addr.line, (
                    f"{_disk_where(disk)}: <address type='drive' {name}='{value}'> is out of range for {bus} "
                    f"(0..{top})" + (": the PIIX3 has one IDE controller with two buses of two units"
                                     if bus == "ide" else "")
                )


@rule_about("disk")
def disk_name_fits_its_controller(domain):
    """The drive address a target name implies ('hde' is IDE controller 1) must exist, as an explicit
    one must: a name past the controller's units is refused, not written into the canonical XML."""
    tops = {"ide": (0, "hda..hdd: the PIIX3 has one IDE controller with two buses of two units"),
            "sata": (None, None)}
    for disk in domain.disks:
        if disk.address is not None or disk.bus not in diskconf.DRIVE_BUSES or disk.index is None:
            continue
        controller = diskconf.effective_drive(disk)[0]
        top, why = tops.get(disk.bus, (None, None))
        if (top is not None and controller > top) or controller > MAX_IMPLIED_CONTROLLER:
            yield disk.line_of("target"), (
                f"{_disk_where(disk)}: <target dev='{disk.target_dev}'> implies {disk.bus} controller {controller}, "
                f"which does not exist; accepted: {why or f'names of controllers 0..{MAX_IMPLIED_CONTROLLER}'}"
            )


@rule_about("disk")
def unique_drive_addresses(domain):
    seen = {}
    for disk in domain.disks:
        drive = diskconf.effective_drive(disk)
        if drive is None:
            continue
        key = (disk.bus,) + drive
        if key in seen:
            yield disk.line, (
                f"{_disk_where(disk)}: drive address controller='{drive[0]}' bus='{drive[1]}' target='{drive[2]}' "
                f"unit='{drive[3]}' on the {disk.bus} bus is already used by the disk on line {seen[key]}"
            )
        else:
            seen[key] = disk.line


LSI_TARGETS = 7  # the LSI 53C895A addresses targets 0..6 (7 is the controller itself), one LUN each


@rule_about("disk")
def lsi_scsi_targets(domain):
    """libvirt numbers SCSI units as on a wide bus (0..15); QEMU's LSI controller has 7 targets."""
    models = {c.index or 0: c.model for c in domain.controllers if c.type == "scsi"}
    for disk in domain.disks:
        drive = diskconf.effective_drive(disk) if disk.bus == "scsi" else None
        if drive is None or models.get(drive[0], diskconf.DEFAULT_SCSI_MODEL) != "lsilogic":
            continue
        if drive[3] >= LSI_TARGETS or drive[1] or drive[2]:
            yield disk.line_of("target"), (
                f"{_disk_where(disk)}: unit {drive[3]} of SCSI controller {drive[0]} does not exist on its LSI "
                f"controller (model 'lsilogic', libvirt's default), which has units 0..{LSI_TARGETS - 1}; use "
                "<controller type='scsi' model='virtio-scsi'/> for more disks"
            )


# libvirt's controller models (virDomainControllerModel*), by type.
CONTROLLER_MODELS = {
    "pci": ("pci-root", "pcie-root", "pci-bridge", "dmi-to-pci-bridge", "pcie-root-port",
            "pcie-switch-upstream-port", "pcie-switch-downstream-port", "pci-expander-bus", "pcie-expander-bus",
            "pcie-to-pci-bridge"),
    "scsi": ("auto", "buslogic", "lsilogic", "lsisas1068", "vmpvscsi", "ibmvscsi", "virtio-scsi", "lsisas1078",
             "virtio-transitional", "virtio-non-transitional", "ncr53c90", "am53c974", "dc390"),
}
PCIE_ONLY_MODELS = ("pcie-root", "pcie-root-port", "pcie-switch-upstream-port", "pcie-switch-downstream-port",
                    "pcie-expander-bus", "pcie-to-pci-bridge", "dmi-to-pci-bridge")


@rule_about("controller")
def controller_models(domain):
    for controller in domain.controllers:
        ctype, model = controller.type, controller.model
        known = CONTROLLER_MODELS.get(ctype)
        where = f"<controller type='{ctype}'"
        if ctype == "pci" and model is None:
            yield controller.line, f"{where}> needs a model, e.g. model='pcie-root-port'"
        elif known is not None and model is not None and model not in known:
            yield controller.line, f"{where} model='{model}'> is not a {ctype} controller model; accepted: {', '.join(known)}"
        elif ctype == "pci" and model in PCIE_ONLY_MODELS and not domain.is_q35:
            yield controller.line, (
                f"{where} model='{model}'> needs a PCI Express machine (q35); on pc use model='pci-bridge'"
            )
        elif ctype == "pci" and model == "pci-root" and domain.is_q35:
            yield controller.line, f"{where} model='pci-root'> is pc's root bus; q35's is model='pcie-root'"
        elif ctype == "pci" and model in diskconf.ROOT_MODELS and controller.index not in (None, 0):
            yield controller.line, f"{where} model='{model}'> is the root bus: its index is 0"
        elif ctype == "pci" and controller.index == 0 and model not in diskconf.ROOT_MODELS:
            yield controller.line, (
                f"{where} index='0'> is the root bus: model='{diskconf.root_model(domain)}' (model='{model}' needs "
                "an index above 0)"
            )
        elif ctype == "ide" and domain.is_q35:
            yield controller.line, "<controller type='ide'>: the q35 machine has no IDE controller; use type='sata'"


@rule_about("controller")
def unique_controllers(domain):
    seen = {}
    for controller in domain.controllers:
        if controller.index is None:
            continue
        key = (controller.type, controller.index)
        if key in seen:
            yield controller.line, (
                f"<controller type='{key[0]}' index='{key[1]}'> appears twice (lines {seen[key]} and {controller.line})"
            )
        else:
            seen[key] = controller.line


@rule_about("controller")
def devices_on_a_root_port_use_slot_0(domain):
    """A pcie-root-port has a single slot: whatever sits behind it is at slot 0."""
    ports = {c.index for c in domain.controllers if c.type == "pci" and c.model == "pcie-root-port"}
    for tag, addr in domain.pci_addresses:
        try:
            bus, slot = pci_number(addr.get("bus", "0")), pci_number(addr.get("slot", "0"))
        except ValueError:
            continue
        if bus in ports and slot != 0:
            yield addr.sourceline, (
                f"<{tag}>: <address bus='0x{bus:02x}' slot='0x{slot:02x}'>: bus 0x{bus:02x} is a pcie-root-port, "
                "which has a single slot: use slot='0x00'"
            )


@rule(screened=True)
def memory_is_positive(domain):
    if domain.has("memory") and not domain.memory > 0:
        yield domain.line_of("memory"), "<memory> must be a positive amount of guest RAM"


@rule_about("rom")
def rom_only_on_pci(domain):
    for iface in domain.interfaces:
        addr = iface.address
        if iface.has("rom") and addr is not None and addr.type != "pci":
            yield iface.line_of("rom"), "<rom> tuning is only supported for PCI devices"


# ---------------------------------------------------------------- the survey: names and usual values

_TAG = operator.attrgetter("tag")


def survey(root, interface_children=None):
    """One walk of a domain's elements (ROOT: its <domain>) for check_domain: (the names of the
    elements below <devices>, at any depth, as a frozenset: what rule_about names; whether the
    domain and every <interface> are written the usual way, where no screened rule can find
    anything). One walk for both: the element proxies and tag names it makes are most of either's
    cost. What the screened rules read is told from the elements, without model objects (whose
    first reads cost several times more): usual domains are most, and False means only: let the
    rules look. INTERFACE_CHILDREN, a dict, gets each <interface> element's first child of each
    name (Interface.first_children), which the walk makes anyway."""
    first = first_children(root)
    usual_domain = _usual_domain(first)
    names, usual_interfaces = _device_names_and_screen(first.get("devices"),  # the one the schema allows
                                                       {} if interface_children is None else interface_children)
    return names, usual_domain and usual_interfaces


def _first_child(node, tag):
    """NODE's first child named TAG, or None (a plain loop: cheaper than a generator or a dict)."""
    for child in node[:]:
        if child.tag == tag:
            return child
    return None


def _usual_domain(first):
    """Whether the domain's name, machine type and memory (FIRST: its first child of each name) are
    ones the screened rules about them accept."""
    element = first.get("name")
    if element is not None and _name_problem(element.text or "") is not None:
        return False
    element = first.get("os")
    element = None if element is None else _first_child(element, "type")
    machine = None if element is None else element.get("machine")
    if machine is not None and not MACHINE_RE.fullmatch(machine):
        return False
    element = first.get("memory")
    return element is None or _number_within(element.text, 1, math.inf)


def _device_names_and_screen(devices, interface_children):
    """survey's walk of DEVICES (or None): the names below it, and whether its interfaces are usual
    (each told alone by _usual_interface, then together: a MAC or a kept target name used twice,
    the models matched in one go); each interface's first children go into INTERFACE_CHILDREN."""
    if devices is None:
        return frozenset(), True
    names, usual = {devices.tag}, True
    macs, models, kept_targets = [], [], set()
    for device in devices[:]:  # a slice: cheaper than an iterator for a few elements
        tag = device.tag
        if tag != "interface":
            names.update(map(_TAG, device.iter()))  # a loop in C
            continue
        names.add(tag)
        first = {}
        for child in device[:]:  # xmlmodel.first_children, and the names below each child
            first.setdefault(child.tag, child)
            if len(child):
                names.update(map(_TAG, child.iter()))
        names.update(first)
        interface_children[device] = first
        usual = usual and _usual_interface(device, first, macs, models, kept_targets)
    if usual and macs and not (_usual_unicast_macs(macs) and len(set(map(str.lower, macs))) == len(macs)):
        usual = False  # each MAC unicast, and (all two digits an octet) distinct in lower case
    return frozenset(names), usual and (not models or _plain_models(models))


def _usual_interface(node, first, macs, models, kept_targets):
    """One interface NODE (FIRST: its first child of each name) for the screen: what it can tell
    alone. Its MAC, model and kept target name go to MACS, MODELS and KEPT_TARGETS, to be told with
    the other interfaces'."""
    kind = iftypes.TYPES.get(node.get("type") or iftypes.DEFAULT_TYPE)
    if kind is None:
        return False
    element = first.get("mac")
    if element is not None and (address := element.get("address")) is not None:
        macs.append(address)
    element = first.get("model")
    if element is not None and (model := element.get("type")) is not None:
        models.append(model)
        if kind.name == "vhostuser" and model_name(model) not in VIRTIO_MODELS:
            return False
    elif kind.name == "vhostuser":
        return False
    element = first.get("target")
    if element is not None and not _usual_target(element, kind, kept_targets):
        return False
    element = first.get("mtu")
    if element is not None and not (kind.mtu and _number_within(element.get("size"), *MTU_RANGE)):
        return False
    element = first.get("source")
    if element is None:
        return True
    if kind.name == "direct" and not _usual_source_dev(element.get("dev")):
        return False
    return not kind.socket or _usual_socket_source(element, kind.name == "mcast")


def _usual_target(target, kind, kept_targets):
    """Whether an interface's TARGET, on an interface of type KIND, is usual; its kept name (a
    name that KEPT_TARGETS, those of the interfaces before, does not hold) is added to them."""
    dev, managed = target.get("dev"), target.get("managed")
    if managed not in (None, "yes", "no") or (managed == "no" and not kind.script):
        return False
    # A managed target may be a '%d' template (filled at start); an unmanaged one names a device.
    if dev is not None and (ifname.problem(dev) is not None or (managed == "no" and "%" in dev)):
        return False
    kept = _kept_target_name(dev, managed == "no")
    if kept is None:
        return True
    if kept in kept_targets:
        return False
    kept_targets.add(kept)
    return True


def _usual_source_dev(dev):
    """Whether a direct interface's <source dev> DEV is absent or names a device (no template)."""
    return dev is None or (ifname.problem(dev) is None and "%" not in dev)


def _usual_socket_source(source, mcast):
    for element in (source, _first_child(source, "local")):
        if element is None:
            continue
        port, address = element.get("port"), element.get("address")
        if (port is not None and not _number_within(port, *PORT_RANGE)) or (address and ":" in address):
            return False
    return not mcast or _IPV4_MULTICAST_RE.fullmatch(source.get("address") or "") is not None


def _number_within(text, low, high):
    """Whether TEXT, read as the model reads a number, is one from LOW to HIGH."""
    if text is None:
        return False
    try:
        return low <= int(text.strip()) <= high
    except ValueError:
        return False


def rules_for(present):
    """The rules, in order, that can find something where the devices hold the elements PRESENT
    (a set of names): those about no element in particular, and those about one of PRESENT."""
    return [func for func in RULES if func.about is None or not func.about.isdisjoint(present)]


@functools.lru_cache(maxsize=256)
def _rules_for_names(names, usual=False):
    """rules_for(NAMES) for a frozenset of names, without the screened rules when USUAL (the domain and
    its interfaces are written the usual way: see survey), worked out once per distinct key: domains
    share a handful of them, and asking each of the ~50 rules (~1 K instructions each) costs as much
    as running several. The answers are kept, so RULES and their rule_about names must not change
    after import; tests that change them ask rules_for, which reads them at every call."""
    return tuple(func for func in rules_for(names) if not (usual and func.screened))


def check_domain(root, filename=None):
    """Run every rule that can find something on the domain ROOT (its <domain> element); raise the
    first problem (by line) as an XMLInputError. The rules read a frozen model of their own (each
    value read from the tree once), made only if one of them reads the model. Returns what the
    walk saw of the interfaces, for the defaults: {<interface> element: its first child of each
    name} (see survey)."""
    problems, domain, interface_children = [], None, {}
    for func in _rules_for_names(*survey(root, interface_children)):
        if func.on_element:
            problems.extend(func(root))
            continue
        if domain is None:
            domain = freeze(Domain(root))
        problems.extend(func(domain))
    if problems:
        line, message = min(problems, key=lambda p: p[0] or 0)
        raise XMLInputError(message, file=filename, line=line)
    return interface_children


__all__ = ["check_domain", "RULES", "VIRTIO_MODELS"]
