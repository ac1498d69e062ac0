"""Canonical XML output, formatted like libvirt's `dumpxml --inactive`.

Two-space indentation, single-quoted attributes, interface children in libvirt's order and
attributes of modelled elements in libvirt's order. Everything else keeps its document order.
"""

from lxml import etree

from virtnet.conf.domain import Interface
from virtnet.conf.identity import is_generated_alias

_CHILD_RANK = {tag: i for i, tag in enumerate(Interface.CHILD_ORDER)}

# Attribute order for elements inside <interface> (unlisted attributes follow, in document order).
ATTRIBUTE_ORDER = {
    "interface": ["type", "trustGuestRxFilters"],
    "mac": ["address", "type", "check"],
    "source": ["type", "network", "portgroup", "portid", "bridge", "dev", "path", "mode", "address", "port"],
    "target": ["dev", "managed"],
    "driver": ["name", "txmode", "ioeventfd", "event_idx", "queues", "rx_queue_size", "tx_queue_size",
               "rss", "rss_hash_report"],
    "address": ["type", "domain", "bus", "slot", "function", "multifunction"],
    "ip": ["address", "family", "prefix", "peer"],
    "route": ["family", "address", "prefix", "gateway", "metric"],
    "portForward": ["proto", "address", "dev"],
    "range": ["start", "end", "to", "exclude"],
    "rom": ["bar", "file", "enabled"],
    "backend": ["type", "logFile", "tap", "vhost"],
}


def _escape(text, quote=True):
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if quote:
        text = text.replace("'", "&apos;").replace('"', "&quot;")
    return text


def _qname(node, name):
    """Prefixed name for a Clark-notation name, using the node's in-scope prefixes."""
    if not name.startswith("{"):
        return name
    uri, local = name[1:].split("}", 1)
    for prefix, ns in node.nsmap.items():
        if ns == uri and prefix:
            return f"{prefix}:{local}"
    return local


def _attributes(node, in_interface):
    items = list(node.attrib.items())
    order = ATTRIBUTE_ORDER.get(node.tag) if in_interface else None
    if order:
        rank = {name: i for i, name in enumerate(order)}
        items.sort(key=lambda kv: rank.get(kv[0], len(order)))
    parent_ns = node.getparent().nsmap if node.getparent() is not None else {}
    decls = [(p, u) for p, u in node.nsmap.items() if parent_ns.get(p) != u]
    out = [f" xmlns{':' + p if p else ''}='{_escape(u)}'" for p, u in decls]
    out += [f" {_qname(node, k)}='{_escape(v)}'" for k, v in items]
    return "".join(out)


def _children(node, in_interface):
    children = list(node)
    if node.tag != "interface":
        return children
    # Sort <interface> children into libvirt's order; a comment travels with the element after it.
    groups, pending = [], []
    for child in children:
        pending.append(child)
        if isinstance(child.tag, str):
            groups.append((_CHILD_RANK.get(child.tag, len(_CHILD_RANK)), pending))
            pending = []
    groups.sort(key=lambda g: g[0])
    return [c for _, group in groups for c in group] + pending


def _has_mixed_content(node):
    """Text beside child elements (before the first or after any) must be kept exactly."""
    return len(node) and ((node.text or "").strip() or any((c.tail or "").strip() for c in node))


def _write(node, depth, out, in_interface=False, skip=frozenset()):
    if node in skip:
        return
    pad = "  " * depth
    if node.tag is etree.Comment:
        out.append(f"{pad}<!--{node.text}-->")
        return
    if node.tag is etree.PI:
        out.append(pad + etree.tostring(node, encoding="unicode").strip())
        return
    in_interface = in_interface or node.tag == "interface"
    name = _qname(node, node.tag)
    start = f"<{name}{_attributes(node, in_interface)}"
    text = node.text or ""
    if _has_mixed_content(node):
        # Mixed content (text between elements) is kept exactly as written.
        out.append(pad + etree.tostring(node, encoding="unicode", with_tail=False))
        return
    children = _children(node, in_interface)
    if not children:
        out.append(f"{pad}{start}>{_escape(text, quote=False)}</{name}>" if text else f"{pad}{start}/>")
        return
    out.append(f"{pad}{start}>")
    for child in children:
        _write(child, depth + 1, out, in_interface, skip)
    out.append(f"{pad}</{name}>")


def format_domain(domain, live=False):
    """The canonical XML text of a Domain (ends with a newline). Inactive XML (the default: xml2xml,
    define) leaves out the aliases virtnet generated, as libvirt does; the live XML keeps them."""
    skip = set()
    if not live:
        skip = {a for a in domain.node.iterfind("devices/interface/alias") if is_generated_alias(a.get("name", ""))}
    out = []
    _write(domain.node, 0, out, skip=skip)
    return "\n".join(out) + "\n"
