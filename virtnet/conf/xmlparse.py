"""Hardened parsing of domain XML: no DTDs, no entities, no network, bounded size."""

import os
import sys

from lxml import etree

from virtnet.errors import XMLInputError

# A domain definition is a few kilobytes; 1 MiB leaves room for huge <metadata> while refusing
# anything that looks like an attack or a wrong file.
MAX_BYTES = 1 << 20

_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_blank_text=True,
    remove_comments=False,
)


def read_source(path):
    """Return (display name, bytes) for a path, or for standard input when path is '-'."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_BYTES + 1)
        name = "<stdin>"
    else:
        name = path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # no buffered file object: half the cost
            try:
                data = _read_limited(fd, MAX_BYTES)
            finally:
                os.close(fd)
        except OSError as e:
            raise XMLInputError(f"cannot read the file: {e.strerror}", file=path) from None
    if len(data) > MAX_BYTES:
        raise XMLInputError(
            f"the document is larger than {MAX_BYTES} bytes; a domain definition is far smaller "
            "(is this the right file?)",
            file=name,
        )
    return name, data


def _read_limited(fd, limit):
    """FD's bytes up to EOF, but at most LIMIT + 1 (enough to tell that it is too large). The size
    is asked first, so that a small file costs no large buffer; pipes and /proc files, whose size
    reads as 0, are read in chunks."""
    size = os.fstat(fd).st_size
    want = min(size, limit) + 1 if size else 1 << 16
    chunks, total = [], 0
    while total <= limit:
        chunk = os.read(fd, min(want, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = 1 << 16
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_bytes(data, name):
    """Parse bytes into an lxml tree, refusing DOCTYPEs and entity declarations."""
    # A DOCTYPE is where entity bombs and external entities live; libvirt never writes one.
    # Both start with '<!' (as comments do): without one, there is nothing to look for here. (A
    # document in an encoding that does not write '<!' as those bytes is caught after parsing.)
    if b"<!" in data:
        head = data[:4096].lower()
        if b"<!doctype" in head or b"<!entity" in data.lower():
            line = data[: data.lower().find(b"<!")].count(b"\n") + 1
            raise XMLInputError(
                "DOCTYPE and entity declarations are not accepted in domain XML; remove them",
                file=name,
                line=line,
            )
    try:
        tree = etree.fromstring(data, _PARSER).getroottree()
    except etree.XMLSyntaxError as e:
        line = e.position[0] if e.position else None
        msg = e.msg.split(", line ")[0] if e.msg else "malformed XML"
        raise XMLInputError(f"malformed XML: {msg}", file=name, line=line) from None
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise XMLInputError(
            "DOCTYPE declarations are not accepted in domain XML; remove it", file=name, line=1
        )
    return tree


def parse_file(path):
    """Read and parse PATH ('-' for standard input). Returns (display name, tree)."""
    name, data = read_source(path)
    return name, parse_bytes(data, name)
