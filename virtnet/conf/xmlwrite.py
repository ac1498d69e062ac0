"""Writing an element tree the way libvirt writes its XML: two-space indentation, single-quoted
attributes, an empty element closed in place, mixed content kept exactly, everything else in
document order unless a DeviceOrder says otherwise (the domain's: conf.format; a network puts its
tree in order before writing it: network.format)."""

from lxml import etree


class DeviceOrder:
    """The order libvirt writes inside a device (an element below <devices>): CHILD_RANKS,
    {device tag: {child tag: rank}}, for the device's children; ATTRIBUTES, {device tag: {element
    tag: [attribute names]}}, for the attributes of every element inside it (the device's own too).
    Other children follow the ranked ones, and other attributes the named ones, as they were. A
    device is told by its tag among ATTRIBUTES' keys, so each tag of CHILD_RANKS is one of them."""

    def __init__(self, child_ranks, attributes):
        self.child_ranks = child_ranks
        self.attributes = attributes


NO_DEVICES = DeviceOrder({}, {})


def _escape(text, quote=True):
    # A carriage return (and, in attributes, a tab or newline) would be normalised away when the
    # output is read again: written as character references, the text survives a round trip.
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    if quote:
        text = text.replace("'", "&apos;").replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#9;")
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


def _attributes(node, devices, device):
    items = list(node.attrib.items())
    order = devices.attributes[device].get(node.tag) if device else None
    if order:
        rank = {name: i for i, name in enumerate(order)}
        items.sort(key=lambda kv: rank.get(kv[0], len(order)))
    parent_ns = node.getparent().nsmap if node.getparent() is not None else {}
    decls = [(p, u) for p, u in node.nsmap.items() if parent_ns.get(p) != u]
    out = [f" xmlns{':' + p if p else ''}='{_escape(u)}'" for p, u in decls]
    out += [f" {_qname(node, k)}='{_escape(v)}'" for k, v in items]
    return "".join(out)


def in_order(children, ranks):
    """CHILDREN sorted by RANKS ({tag: rank}; other tags after those, as they were): a comment
    travels with the element after it."""
    groups, pending = [], []
    for child in children:
        pending.append(child)
        if isinstance(child.tag, str):
            groups.append((ranks.get(child.tag, len(ranks)), pending))
            pending = []
    groups.sort(key=lambda g: g[0])
    return [c for _, group in groups for c in group] + pending


def _children(node, devices, device):
    children = list(node)
    ranks = devices.child_ranks.get(node.tag) if node.tag == device and _is_device(node) else None
    return children if ranks is None else in_order(children, ranks)  # a device's, in libvirt's order


def _has_mixed_content(node):
    """Text beside child elements (before the first or after any) must be kept exactly."""
    return len(node) and ((node.text or "").strip() or any((c.tail or "").strip() for c in node))


def _is_device(node):
    parent = node.getparent()
    return parent is not None and parent.tag == "devices"


def _write(node, depth, out, skip, devices, device=None):
    if node in skip:
        return
    pad = "  " * depth
    if node.tag is etree.Comment:
        out.append(f"{pad}<!--{node.text}-->")
        return
    if node.tag is etree.PI:
        out.append(pad + etree.tostring(node, encoding="unicode").strip())
        return
    if device is None and node.tag in devices.attributes and _is_device(node):
        device = node.tag
    name = _qname(node, node.tag)
    start = f"<{name}{_attributes(node, devices, device)}"
    text = node.text or ""
    if _has_mixed_content(node):
        # Mixed content (text between elements) is kept exactly as written.
        out.append(pad + etree.tostring(node, encoding="unicode", with_tail=False))
        return
    children = [child for child in _children(node, devices, device) if child not in skip]
    if not children:
        out.append(f"{pad}{start}>{_escape(text, quote=False)}</{name}>" if text else f"{pad}{start}/>")
        return
    out.append(f"{pad}{start}>")
    for child in children:
        _write(child, depth + 1, out, skip, devices, device)
    out.append(f"{pad}</{name}>")


def document_text(root, skip=frozenset(), devices=NO_DEVICES):
    """ROOT written out canonically (ends with a newline), leaving out the elements in SKIP, with
    the children and attributes of devices in the order DEVICES gives."""
    out = []
    _write(root, 0, out, skip, devices)
    return "\n".join(out) + "\n"
