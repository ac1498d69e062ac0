#!/usr/bin/env python3
"""A structure-aware fuzzer for virtnet's conversions: hostile values in otherwise valid documents.

    python tools/fuzz.py --count 100000 --seed N [--jobs 2] [--cli 200] [--netns 50]
    python tools/fuzz.py --seed N --index I          # one document: show it, check it, minimise it

Generation. Every document starts from a valid golden case (testdata/xml2argv/NAME.xml with a
NAME.args expectation) and gets one to six structural mutations: attribute values and element texts
replaced by hostile values (newlines, shell metacharacters, quotes, `%d`, very long strings, huge,
negative and non-decimal integers, Unicode and bidi controls, binary-ish text, paths with `..`,
empty strings, and `touch MARKER` / `>MARKER` payloads), fields that reach scripts and argv set
directly (created when absent), elements duplicated, removed and reordered, interface types
swapped (with a <source> of the new type), interfaces transplanted between cases, unknown and
foreign-namespace elements and attributes added. Document I of seed S is a pure function of
(S, I), so any document can be regenerated alone, in any process.

Oracle, per document, in-process through virtnet.convert:
  (a) every step either succeeds or raises a VirtnetError whose str() is one line (no line break of
      any kind, including U+2028/U+2029); any other exception, or a timeout, is a failure. Load
      warnings must be one line each too.
  (b) when the document loads: xml2xml is accepted again and is a fixed point; the canonical XML
      converts to the same xml2argv and plan as the input; the argv words and every output line
      hold no control characters (C0, C1, DEL, bidi controls, line/paragraph separators); plan
      json parses; `plan --format sh --owner root` passes `sh -n`.
For a sample, the real CLI runs as a subprocess (exit status, one `virtnet: error:` line, no
traceback, the same output as in-process; define → dumpxml → domiflist → undefine in a scratch
store). For a sample of accepted documents with taps to pre-create, the generated script runs as
root in a fresh network namespace (`ip netns exec NS sh SCRIPT`) with PATH pointing first at stub
commands that record anything but ip/id/cat; no marker file may appear, no unexpected command may
run, and the namespace must then hold exactly lo and the taps the plan names (also after a second
run). Every namespace is deleted again.

Failures are reported with the seed, the index, the mutations and a minimised document.
"""

import argparse
import copy
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without an installed virtnet
    sys.path.insert(0, str(REPO))

SEED_DIR = REPO / "testdata" / "xml2argv"
RUNTIME_DIR = "/run/virtnet"
BRIDGE_HELPER = "/usr/lib/qemu/qemu-bridge-helper"  # the golden tests' pinned helper
OWNER = "root"
DOC_TIMEOUT = 20.0  # seconds one document's in-process checks may take
MARKER = "PWNED"  # relative marker payloads create files in the script's (empty) working directory
ABS_MARKER = "/tmp/virtnet-fuzz-PWNED"  # absolute marker payloads (through /usr/bin/touch, bypassing PATH)
FOREIGN_NS = "urn:virtnet-fuzz"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
NETNS_PREFIX = "vnfz"
PLAIN_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
# What a pre-create script may run: ip, id and cat, and tc for a <bandwidth> (echo, [ are sh builtins).
EXPECTED_COMMANDS = ("ip", "id", "cat", "tc")

# --- characters ----------------------------------------------------------------------------------------

# What str.splitlines() splits at: no error message or warning may hold any of these.
LINE_BREAKS_RE = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
# Control characters: C0 and C1 controls and DEL (Unicode category Cc), the bidi controls, and the
# line and paragraph separators (categories Zl and Zp, which hold U+2028 and U+2029 only).
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def is_control(char):
    return CONTROL_RE.match(char) is not None


def first_control(text):
    found = CONTROL_RE.search(text)
    return found.group() if found else None


def first_line_break(text):
    found = LINE_BREAKS_RE.search(text)
    return found.group() if found else None


def _xml_char_ok(char):
    code = ord(char)
    return (code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD
            or 0x10000 <= code <= 0x10FFFF)


def xml_ok(text):
    return all(_xml_char_ok(c) for c in text)


# --- hostile values ------------------------------------------------------------------------------------

SHORT_PAYLOADS = [  # at most 15 bytes: they fit an interface name
    ";>P", "$(>P)", "`>P`", "';>P;'", '";>P;"', "|>P", "&>P", "x;>P", "a'>P'", "$(id>P)",
    ";touch${IFS}P", "`touch${IFS}P`", "$(touch${IFS}P)", "'$(>P)'", '"$(>P)"', "\\';>P;#", "${x:->P}",
]
# Short names that are no payload but odd for a tap: a '%d' template, quotes, globs, Unicode, a dash.
ODD_TAP_NAMES = ["tap%d", "%d", "a%db", "-x", "..x", "a'b", '"', "\\", "*", "?", "[a]", "~x", "\u00e9", "x\u200b",
                 "x=y", "#x", "!x", "{a,b}"]
LONG_PAYLOADS = [
    f"x; touch {MARKER}; #", f"$(touch {MARKER})", f"`touch {MARKER}`", f"'; touch {MARKER}; echo '",
    f"\"; touch {MARKER}; echo \"", f"x\ntouch {MARKER}\n#", f"x\r\ntouch {MARKER}", f"x && /usr/bin/touch {ABS_MARKER}",
    f"$(/usr/bin/touch {ABS_MARKER})", f"x; /usr/bin/touch {ABS_MARKER} #", f"x|/usr/bin/touch {ABS_MARKER}",
    f"'\"$(touch {MARKER})\"'", f"x' ; >{MARKER} ; '", f"x\u2028touch {MARKER}", f"x\x85touch {MARKER}",
    f"\"'`>{MARKER}`'\"", f"$'\\n'touch {MARKER}", f"x;{{touch,{MARKER}}}", f"-o ProxyCommand=touch {MARKER}",
]
METACHARS = list(";$()`'\"\\|&<>*?[]{}~#!^%=,: \t\n\r") + ["$(", "${", "&&", "||", ",,", "..", "%d", "%s"]
INTEGERS = [
    "0", "-1", "-0", "+1", "+0", "00", "007", "08", "0x10", "0X1F", "0x", "0x-1", "-0x10", "0o17", "0b101",
    "1e3", "1.5", "1_000", " 5", "5 ", "\t7\n", "\u0663", "\uff11", "\u00b2", "9" * 20, "-" + "9" * 20,
    "2147483647", "2147483648", "4294967295", "4294967296", "18446744073709551615", "18446744073709551616",
    "65535", "65536", "65521", "256", "257", "1024", "1025", "68", "67", "inf", "nan", "NaN", "0x" + "f" * 40,
    "1" * 5000,
]
UNICODE = [
    "\u00e9", "\u540d\u524d", "\u202e", "x\u202egpj.exe", "\u2066x\u2069", "\u200b", "\ufeff", "e\u0301",
    "\U0001f600", "\u2028", "x\u2029y", "\u0085", "\u00a0", "\uff21\uff22", "\uff1btouch", "\u037e", "\u061c",
    "\u200e", "\u00ad", "\U000e0001", "\u0130", "\u017f", "\ufb01", "\u2160", "\ud7ff", "\ue000", "\ufffd",
]
PATHS = [
    "/tmp/../etc/passwd", "../../../etc/shadow", "/proc/self/environ", "/dev/stdin", "/dev/tty", "./x", "-x",
    "--help", "/tmp/x y", "/tmp/a,b", "/tmp/a,,b", "/tmp/a=b", "~/x", "~root/.ssh/id_rsa", "/tmp/link->x",
    "/tmp/.", "//", "/", "/tmp/", ".", "..", "/..", "/tmp/" + "a" * 300, "/run/virtnet/../../etc",
    "/proc/self/fd/0", "/tmp/x\u202e", "/etc/qemu/../../bin/sh", "C:\\x", "file:///etc/passwd", "/tmp/%d",
    "/tmp/$(id)", "/tmp/`id`", "/tmp/'q'", '/tmp/"q"', "/tmp/a;b",
]
QEMU_SYNTAX = [
    "a,b", "a,,b", "id=x", ",", "a=b,c=d", '{"x":1}', "on", "off", "yes", "no", "true", "help", "?",
    "virtio-net-pci,id=evil", "tap,fd=0", "x,script=/bin/sh", "}{", "\\", '"', "'",
]
EMPTY = ["", " ", "  ", "\t", " x ", "\n", "\r\n"]
FORMATS = ["%d", "%s", "%n", "%x", "%%", "%%d", "%d%d", "vnet%d", "x%dy", "%", "%5d", "{}", "{0}", "${IFS}",
           "$HOME", "%(x)s", "%1$s"]


def _long(rng):
    n = rng.choice([15, 16, 64, 255, 256, 4096, 65536])
    if rng.random() < 0.01:
        n = (1 << 20) + 1  # over the document size limit
    return rng.choice("Ax9%;") * n


def _binaryish(rng, xml_legal):
    """NUL-free noise: any byte value 1..255 (or only the XML-legal ones) plus a few wide characters."""
    out = []
    for _ in range(rng.randint(1, 24)):
        if rng.random() < 0.1:
            out.append(chr(rng.choice([0x2028, 0x202E, 0xFEFF, 0x10FFFF, 0xFFFD, 0x7FF, 0xD7FF])))
            continue
        char = chr(rng.randint(1, 255))
        if xml_legal and not _xml_char_ok(char):
            char = rng.choice("\t\n\r")
        out.append(char)
    return "".join(out)


def mutate_chars(rng, value):
    """VALUE with a small, nearly-valid change: a metacharacter or control inserted, a case flip, …"""
    value = value or "x"
    how = rng.randrange(8)
    pos = rng.randint(0, len(value))
    snippet = rng.choice(METACHARS + UNICODE[:12] + SHORT_PAYLOADS[:4])
    if how == 0:
        return value[:pos] + snippet + value[pos:]
    if how == 1:
        return value + snippet
    if how == 2:
        return snippet + value
    if how == 3:
        return value.upper() if value != value.upper() else value.lower()
    if how == 4:
        return value * rng.choice([2, 3, 17])
    if how == 5:
        return value[:pos] or value[:1]
    if how == 6:
        return f" {value} "
    return value[:pos] + rng.choice(["\n", "\r", "\t", "\u2028", "\x85", "\u202e", "\x7f"]) + value[pos:]


def hostile(rng, original=None, pool=(), short=False):
    """A hostile value; ORIGINAL (the value it replaces) and POOL (valid values of that attribute
    elsewhere in the corpus) seed the nearly-valid kinds."""
    kind = rng.choices(
        ["payload", "near", "valid", "meta", "int", "unicode", "path", "qemu", "empty", "format", "long",
         "binary", "raw"],
        [22, 20, 8, 6, 10, 6, 6, 5, 4, 5, 3, 3, 2])[0]
    if kind == "payload":
        return rng.choice(SHORT_PAYLOADS if short or rng.random() < 0.4 else LONG_PAYLOADS)
    if kind == "near":
        base = original if original is not None and rng.random() < 0.7 else (rng.choice(pool) if pool else "x")
        return mutate_chars(rng, base)
    if kind == "valid":
        return rng.choice(pool) if pool else (original or "")
    if kind == "meta":
        return "".join(rng.choice(METACHARS) for _ in range(rng.randint(1, 6)))
    if kind == "int":
        return rng.choice(INTEGERS)
    if kind == "unicode":
        return rng.choice(UNICODE) + (original or "") * rng.randint(0, 1)
    if kind == "path":
        return rng.choice(PATHS)
    if kind == "qemu":
        return rng.choice(QEMU_SYNTAX)
    if kind == "empty":
        return rng.choice(EMPTY)
    if kind == "format":
        return rng.choice(FORMATS) if rng.random() < 0.6 else (original or "x") + rng.choice(FORMATS)
    if kind == "long":
        return _long(rng)
    return _binaryish(rng, xml_legal=(kind == "binary"))


# --- the corpus: seeds and pools -----------------------------------------------------------------------


@dataclass
class Seed:
    name: str
    root: object  # lxml element


class Corpus:
    """The valid seed documents and what can be borrowed from them."""

    def __init__(self, directory=SEED_DIR):
        self.seeds = []
        parser = etree.XMLParser(remove_blank_text=False, resolve_entities=False)
        for args in sorted(Path(directory).glob("*.args")):
            path = args.with_suffix(".xml")
            if path.exists():
                self.seeds.append(Seed(path.stem, etree.parse(str(path), parser).getroot()))
        if not self.seeds:
            raise SystemExit(f"no seed documents (NAME.xml with NAME.args) in {directory}")
        self.attr_values = {}  # attribute name -> values seen
        self.children = {}  # parent tag -> child elements seen (copies are inserted)
        self.interfaces = {}  # type -> <interface> elements
        self.sources = {}  # interface type -> <source> elements
        for seed in self.seeds:
            for node in seed.root.iter(tag=etree.Element):
                for attr, value in node.attrib.items():
                    self.attr_values.setdefault(attr, set()).add(value)
                parent = node.getparent()
                if parent is not None:
                    self.children.setdefault(parent.tag, []).append(node)
            for iface in seed.root.iterfind("devices/interface"):
                kind = iface.get("type", "user")
                self.interfaces.setdefault(kind, []).append(iface)
                if iface.find("source") is not None:
                    self.sources.setdefault(kind, []).append(iface.find("source"))
        self.attr_values = {k: sorted(v) for k, v in self.attr_values.items()}


_CORPUS = None


def corpus():
    global _CORPUS
    if _CORPUS is None:
        _CORPUS = Corpus()
    return _CORPUS


# --- mutations -----------------------------------------------------------------------------------------

IFACE_TYPES = ["ethernet", "bridge", "network", "direct", "user", "vhostuser", "server", "client", "mcast", "udp"]
ODD_TYPES = ["", "hostdev", "vdpa", "Ethernet", "ethernet ", "null", "internal"]
# Fields worth aiming at: (path below the domain or below an <interface>, attribute or None for text).
DOMAIN_FIELDS = [
    ("name", None), ("name", None), ("uuid", None), ("title", None), ("description", None), ("memory", None),
    ("memory", "unit"), ("currentMemory", None), ("vcpu", None), ("vcpu", "current"), ("os/type", "machine"),
    ("os/type", "arch"), ("devices/emulator", None), ("memoryBacking/access", "mode"), ("os/boot", "dev"),
]
IFACE_FIELDS = [
    ("mac", "address"), ("target", "dev"), ("target", "dev"), ("target", "managed"), ("model", "type"),
    ("script", "path"), ("downscript", "path"), ("driver", "name"), ("driver", "queues"),
    ("driver", "rx_queue_size"), ("driver", "tx_queue_size"), ("driver", "txmode"), ("driver/host", "csum"),
    ("backend", "type"), ("backend", "logFile"), ("backend", "tap"), ("backend", "vhost"), ("mtu", "size"),
    ("link", "state"), ("boot", "order"), ("rom", "file"), ("rom", "bar"), ("rom", "enabled"), ("alias", "name"),
    ("tune/sndbuf", None), ("address", "type"), ("address", "domain"), ("address", "bus"), ("address", "slot"),
    ("address", "function"), ("address", "multifunction"), ("source", "bridge"), ("source", "dev"),
    ("source", "path"), ("source", "mode"), ("source", "address"), ("source", "port"), ("source", "network"),
    ("source/local", "address"), ("source/local", "port"), ("source/reconnect", "timeout"),
    ("source/ip", "address"), ("source/ip", "prefix"), ("source/ip", "peer"), ("source/route", "address"),
    ("source/route", "gateway"), ("source/route", "prefix"), ("source/route", "metric"), ("ip", "address"),
    ("ip", "prefix"), ("route", "gateway"), ("portForward", "address"), ("portForward", "dev"),
    ("portForward/range", "start"), ("portForward/range", "to"), ("teaming", "persistent"), ("acpi", "index"),
    ("guest", "dev"), ("vlan/tag", "id"), ("filterref", "filter"),
]
IDENTITY_CHILDREN = ("mac", "alias", "address", "target", "boot", "acpi")


def drop_identity(iface):
    """Remove IFACE's IDENTITY_CHILDREN, so that a copied interface gets an identity of its own
    instead of clashing with the one it was copied from."""
    for tag in IDENTITY_CHILDREN:
        for child in iface.findall(tag):
            iface.remove(child)


class Mutator:
    """Applies mutations to one document. Values lxml cannot hold (characters XML forbids) become
    placeholders that serialise() replaces with the raw characters or character references."""

    def __init__(self, rng, root, corpus_):
        self.rng, self.root, self.corpus = rng, root, corpus_
        self.raw = {}

    # helpers
    def elements(self, with_attrs=False):
        nodes = [n for n in self.root.iter(tag=etree.Element)]
        return [n for n in nodes if n.attrib] if with_attrs else nodes

    def interfaces(self):
        return self.root.findall("devices/interface")

    def set(self, node, attr, value):
        if not xml_ok(value):
            key = f"\ue000{len(self.raw)}\ue001"
            self.raw[key] = value
            value = key
        if attr is None:
            for child in list(node):
                node.remove(child)
            node.text = value
        else:
            node.set(attr, value)

    def ensure(self, base, path):
        node = base
        for tag in path.split("/"):
            found = node.findall(tag)
            if found and self.rng.random() < 0.85:
                node = self.rng.choice(found)
            else:
                new = etree.SubElement(node, tag)
                new.tail = node.text if node.text and not node.text.strip() else None
                node = new
        return node

    def value_for(self, attr, original, short=False):
        pool = self.corpus.attr_values.get(attr, ()) if attr else ()
        return hostile(self.rng, original, pool, short=short)

    # the mutations: each returns a short description, or None when it did not apply
    def attr_hostile(self):
        nodes = self.elements(with_attrs=True)
        node = self.rng.choice(nodes)
        attr = self.rng.choice(sorted(node.attrib))
        value = self.value_for(attr, node.get(attr))
        self.set(node, attr, value)
        return f"{path_of(node)}@{attr} = {value!r:.80}"

    def text_hostile(self):
        leaves = [n for n in self.elements() if len(n) == 0 and n is not self.root]
        node = self.rng.choice(leaves)
        value = self.value_for(None, node.text)
        self.set(node, None, value)
        return f"{path_of(node)} text = {value!r:.80}"

    def field(self, valid=False):
        rng = self.rng
        ifaces = self.interfaces()
        if ifaces and rng.random() < 0.75:
            base = rng.choice(ifaces)
            path, attr = rng.choice(IFACE_FIELDS)
        else:
            base = self.root
            path, attr = rng.choice(DOMAIN_FIELDS)
        node = self.ensure(base, path)
        original = node.get(attr) if attr else node.text
        if valid:
            pool = self.corpus.attr_values.get(attr, []) if attr else []
            value = rng.choice(pool) if pool else (original or "1")
        else:
            value = self.value_for(attr, original, short=(path, attr) == ("target", "dev"))
        self.set(node, attr, value)
        return f"{path_of(node)}{'@' + attr if attr else ' text'} = {value!r:.80}"

    def script_payload(self):
        """A payload where the pre-create script prints values: the name, or an unmanaged tap's name."""
        rng = self.rng
        ifaces = self.interfaces()
        if not ifaces or rng.random() < 0.35:
            value = rng.choice(LONG_PAYLOADS + SHORT_PAYLOADS)
            self.set(self.ensure(self.root, "name"), None, value)
            return f"name = {value!r}"
        iface = rng.choice(ifaces)
        iface.set("type", "ethernet")
        for tag in ("source", "backend", "portForward", "ip", "route") if rng.random() < 0.8 else ():
            for child in iface.findall(tag):
                iface.remove(child)
        target = iface.find("target")
        if target is None:
            target = etree.SubElement(iface, "target")
        draw = rng.random()
        if draw < 0.6:
            value = rng.choice(SHORT_PAYLOADS)
        elif draw < 0.85:
            value = rng.choice(ODD_TAP_NAMES)
        else:
            value = hostile(rng, "mytap0", short=True)
        self.set(target, "dev", value)
        target.set("managed", "no")
        return f"{path_of(iface)} = ethernet, <target dev={value!r} managed='no'>"

    def duplicate(self):
        rng = self.rng
        ifaces = self.interfaces()
        node = rng.choice(ifaces) if ifaces and rng.random() < 0.8 else rng.choice(self.elements()[1:])
        clone = copy.deepcopy(node)
        if clone.tag == "interface" and rng.random() < 0.7:
            drop_identity(clone)
        node.addnext(clone)
        return f"duplicate {path_of(node)}"

    def remove(self):
        node = self.rng.choice(self.elements()[1:])
        where = path_of(node)
        node.getparent().remove(node)
        return f"remove {where}"

    def reorder(self):
        parents = [n for n in self.elements() if len(n) > 1]
        if not parents:
            return None
        node = self.rng.choice(parents)
        children = list(node)
        self.rng.shuffle(children)
        for child in children:
            node.remove(child)
        for child in children:
            node.append(child)
        return f"reorder children of {path_of(node)}"

    def swap_type(self):
        rng = self.rng
        ifaces = self.interfaces()
        if not ifaces:
            return None
        iface = rng.choice(ifaces)
        new = rng.choice(IFACE_TYPES) if rng.random() < 0.9 else rng.choice(ODD_TYPES)
        if new == "user" and rng.random() < 0.3:
            iface.attrib.pop("type", None)
        else:
            iface.set("type", new)
        note = ""
        if rng.random() < 0.7:
            for old in iface.findall("source"):
                iface.remove(old)
            sources = self.corpus.sources.get(new)
            if sources:
                iface.insert(0, copy.deepcopy(rng.choice(sources)))
                note = " with a matching <source>"
        return f"{path_of(iface)} type = {new!r}{note}"

    def transplant(self):
        rng = self.rng
        donor = copy.deepcopy(rng.choice(rng.choice(list(self.corpus.interfaces.values()))))
        ifaces = self.interfaces()
        devices = self.root.find("devices")
        if devices is None:
            devices = etree.SubElement(self.root, "devices")
        if ifaces and rng.random() < 0.5:
            old = rng.choice(ifaces)
            old.addnext(donor)
            devices.remove(old)
            return f"replace {path_of(donor)} with a {donor.get('type', 'user')} interface"
        drop_identity(donor)
        devices.append(donor)
        return f"add a {donor.get('type', 'user')} interface"

    def unknown_attr(self):
        rng = self.rng
        node = rng.choice(self.elements())
        name = rng.choice(["bogus", "Type", "dev", f"{{{FOREIGN_NS}}}x", "managed", "path", "x-y"])
        value = self.value_for(None, None)
        self.set(node, name, value)
        return f"{path_of(node)}@{name} (unknown) = {value!r:.80}"

    def unknown_element(self):
        rng = self.rng
        parent = rng.choice(self.elements())
        tags = ["bogus", f"{{{FOREIGN_NS}}}ext", "mtu", "source", "target", "interface", "name", "script", "local"]
        child = etree.SubElement(parent, rng.choice(tags))
        if rng.random() < 0.6:
            self.set(child, rng.choice(["v", "dev", "path", "size"]), self.value_for(None, None))
        return f"add <{etree.QName(child).localname}> under {path_of(parent)}"

    def known_child(self):
        rng = self.rng
        parents = [n for n in self.elements() if n.tag in self.corpus.children]
        parent = rng.choice(parents)
        offered = self.corpus.children[parent.tag]
        if rng.random() < 0.8:  # mostly a child the parent does not have yet (repeats are refused)
            offered = [c for c in offered if parent.find(c.tag) is None] or offered
        donor = copy.deepcopy(rng.choice(offered))
        parent.insert(rng.randint(0, len(parent)), donor)
        return f"add a copy of <{donor.tag}> under {path_of(parent)}"

    def meta(self):
        rng = self.rng
        which = rng.randrange(4)
        if which == 0:
            node = self.ensure(self.root, "description")
            value = hostile(rng) + rng.choice(["\r", "\r\n", "\n\t", ""])
            self.set(node, None, value)
            return f"description = {value!r:.80}"
        if which == 1:
            node = self.ensure(self.root, "title")
            value = hostile(rng)
            self.set(node, None, value)
            return f"title = {value!r:.80}"
        if which == 2:
            meta = self.ensure(self.root, "metadata")
            child = etree.SubElement(meta, f"{{{FOREIGN_NS}}}data", nsmap={"fz": FOREIGN_NS})
            value = hostile(rng) + rng.choice(["\n", "\t", "\r", ""])
            self.set(child, "v", value)
            if rng.random() < 0.5:
                child.text = rng.choice(["a\rb", "x\n y", "\t", "&<>"])
            return f"metadata attribute = {value!r:.80}"
        cmd = etree.SubElement(self.root, f"{{{QEMU_NS}}}commandline", nsmap={"qemu": QEMU_NS})
        arg = etree.SubElement(cmd, f"{{{QEMU_NS}}}arg")
        value = hostile(rng)
        self.set(arg, "value", value)
        return f"qemu:commandline arg = {value!r:.80}"

    def raw_chars(self):
        rng = self.rng
        node = rng.choice(self.elements(with_attrs=True))
        attr = rng.choice(sorted(node.attrib))
        value = (node.get(attr) or "") + _binaryish(rng, xml_legal=False) + chr(rng.randint(1, 8))
        self.set(node, attr, value)
        return f"{path_of(node)}@{attr} = {value!r:.80} (characters XML forbids)"

    OPS = {
        "attr_hostile": 18, "text_hostile": 6, "field": 22, "field_valid": 6, "script_payload": 8,
        "duplicate": 6, "remove": 5, "reorder": 4, "swap_type": 8, "transplant": 5, "unknown_attr": 3,
        "unknown_element": 3, "known_child": 6, "meta": 5, "raw_chars": 1,
    }

    def apply(self, name):
        if name == "field_valid":
            return self.field(valid=True)
        return getattr(self, name)()


def path_of(node):
    parts = []
    while node is not None and node.getparent() is not None:
        parent = node.getparent()
        tag = etree.QName(node).localname
        same = [c for c in parent if c.tag == node.tag]
        parts.append(f"{tag}[{same.index(node) + 1}]" if len(same) > 1 else tag)
        node = parent
    return "/".join(reversed(parts)) or "domain"


def _escape_raw(value, rng):
    out = []
    for char in value:
        if char == "&":
            out.append("&amp;")
        elif char == "<":
            out.append("&lt;")
        elif char in "'\"":
            out.append("&apos;" if char == "'" else "&quot;")
        elif not _xml_char_ok(char) and rng.random() < 0.5:
            out.append(f"&#{ord(char)};")
        else:
            out.append(char)
    return "".join(out)


def serialise(root, raw, rng):
    text = etree.tostring(root, encoding="unicode")
    for key, value in raw.items():
        text = text.replace(key, _escape_raw(value, rng))
    return text + "\n"


@dataclass
class Facts:
    """The host facts and options a document is converted with (drawn with the document)."""

    argv_pinned: dict  # the seed case's xml2argv settings (as the goldens), caps {vhost-net}
    argv_random: dict  # syntax/standalone/network_only/host_caps drawn at random
    plan: dict  # names_in_use, host_caps, bridge_helper, paused


@dataclass
class Case:
    seed: int
    index: int
    base: str  # the golden case it started from
    text: str
    ops: list
    facts: Facts

    @property
    def reproduce(self):
        return f"python tools/fuzz.py --seed {self.seed} --index {self.index}"


def _argv_settings(name):
    from virtnet.golden import argv_settings

    return argv_settings(name)


def generate(seed, index):
    """Document INDEX of seed SEED (a pure function of the two)."""
    rng = random.Random(f"virtnet-fuzz/{seed}/{index}")
    corp = corpus()
    base = rng.choice(corp.seeds)
    root = copy.deepcopy(base.root)
    mutator = Mutator(rng, root, corp)
    names, weights = zip(*Mutator.OPS.items())
    ops = []
    wanted, tries = 1 + min(int(rng.expovariate(1.0)), 5), 0
    while len(ops) < wanted and tries < 20 and len(root):
        tries += 1  # a mutation that finds nothing to act on (no interface, say) is drawn again
        try:
            done = mutator.apply(rng.choices(names, weights)[0])
        except (IndexError, ValueError):  # nothing to apply it to (an empty document part)
            done = None
        if done:
            ops.append(done)
    targets = sorted({t.get("dev") for t in root.iter("target") if t.get("dev") and xml_ok(t.get("dev"))})
    facts = Facts(
        argv_pinned={**_argv_settings(base.name), "host_caps": frozenset({"vhost-net"})},
        argv_random={"syntax": rng.choice(["json", "keyval"]), "standalone": rng.random() < 0.3,
                     "network_only": rng.random() < 0.2,
                     "host_caps": frozenset({"vhost-net"}) if rng.random() < 0.5 else frozenset()},
        plan={"names_in_use": frozenset(rng.sample(["vnet0", "vnet1", "lo", "eth0", "br0"] + targets,
                                                   rng.randint(0, 2))) if rng.random() < 0.3 else frozenset(),
              "host_caps": frozenset({"vhost-net"}) if rng.random() < 0.5 else frozenset(),
              "bridge_helper": BRIDGE_HELPER if rng.random() < 0.3 else None,
              "paused": rng.random() < 0.3},
    )
    return Case(seed, index, base.name, serialise(root, mutator.raw, rng), ops, facts)


# --- the in-process oracle ---------------------------------------------------------------------------


@dataclass
class Failure:
    kind: str  # crash, timeout, multiline-error, multiline-warning, canonical-refused, not-fixed-point, ...
    step: str  # load, xml2xml, xml2argv, plan-sh, cli xml2argv, netns, ...
    detail: str
    signature: tuple  # what minimisation keeps failing with (and how failures are grouped)

    def headline(self):
        return f"{self.kind} in {self.step}"


@dataclass
class Verdict:
    accepted: bool = False
    failure: Failure = None
    outputs: dict = field(default_factory=dict)  # step -> text (with keep=True)
    errors: dict = field(default_factory=dict)  # step -> (exit code, message) of a refusal
    late: list = field(default_factory=list)  # (step, error class) refused after load accepted
    refusal: str = None  # the load error class
    script: str = None  # plan --format sh output
    taps: tuple = ()  # the taps that script pre-creates
    payload_in_script: bool = False  # a payload, or a tap name beyond letters, digits, '.', '_', '-'


class _Timeout(BaseException):
    """Raised by the alarm: a BaseException so that no `except Exception` in virtnet swallows it."""


class _Stop(Exception):
    def __init__(self, failure):
        self.failure = failure


def _on_alarm(signum, frame):
    raise _Timeout()


def _crash_signature(step, exc):
    frames = traceback.extract_tb(exc.__traceback__)
    inner = [f for f in frames if "/virtnet/" in f.filename] or frames
    where = f"{Path(inner[-1].filename).name}:{inner[-1].lineno}" if inner else "?"
    return ("crash", step, type(exc).__name__, where)


def scratch_base():
    """Where scratch files go: /dev/shm when writable (each document is written to a file, and
    rewriting a file on a disk file system costs milliseconds), else the temporary directory."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class Checker:
    """Runs the in-process oracle over documents; keeps a scratch directory and a `sh -n` cache."""

    def __init__(self, workdir=None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="virtnet-fuzz-", dir=scratch_base()))
        # A directory of its own is removed by close(), or at the latest when the checker goes away.
        self._remove = weakref.finalize(self, shutil.rmtree, str(self.workdir), True) if workdir is None else None
        self.doc = self.workdir / "doc.xml"
        self.canon = self.workdir / "canonical.xml"
        self.script = self.workdir / "precreate.sh"
        self.sh_cache = {}
        self.sh_runs = 0

    def close(self):
        if self._remove is not None:
            self._remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # one step: its result, or None after a refusal (recorded); a failure stops the document
    def _step(self, verdict, step, fn):
        from virtnet.errors import VirtnetError

        try:
            return fn()
        except VirtnetError as e:
            message = str(e)
            bad = first_line_break(message)
            if bad:
                raise _Stop(Failure("multiline-error", step, f"{type(e).__name__} holds U+{ord(bad):04X}: "
                                    f"{message!r}", ("multiline-error", step, f"U+{ord(bad):04X}")))
            verdict.errors[step] = (e.exit_code, message)
            if step == "load":
                verdict.refusal = type(e).__name__
            else:
                verdict.late.append((step, type(e).__name__))
            return None
        except (_Timeout, _Stop, KeyboardInterrupt):
            raise
        except BaseException as e:  # noqa: B036 - any other exception is what the fuzzer looks for
            raise _Stop(Failure("crash", step, "".join(traceback.format_exception(e)), _crash_signature(step, e)))

    @staticmethod
    def _one_line_diagnostics(step, diagnostics):
        for diagnostic in diagnostics:
            text = str(diagnostic)
            bad = first_line_break(text)
            if bad:
                raise _Stop(Failure("multiline-warning", step, f"warning holds U+{ord(bad):04X}: {text!r}",
                                    ("multiline-warning", step, f"U+{ord(bad):04X}")))

    def check(self, case, keep=False):
        """The verdict on one document (within DOC_TIMEOUT seconds)."""
        verdict = Verdict()
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, DOC_TIMEOUT)
        try:
            self._check(case, verdict, keep)
        except _Stop as stop:
            verdict.failure = stop.failure
        except _Timeout:
            verdict.failure = Failure("timeout", "any", f"the checks took more than {DOC_TIMEOUT:.0f} s",
                                      ("timeout",))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        return verdict

    def _check(self, case, v, keep):
        from virtnet import convert

        self.doc.write_bytes(case.text.encode("utf-8", "surrogatepass"))
        loaded = self._step(v, "load", lambda: convert.load(str(self.doc)))
        if loaded is None:
            return
        v.accepted = True
        self._one_line_diagnostics("load", convert.diagnostics(loaded))
        self._step(v, "validate", lambda: convert.check(loaded, runtime_dir=RUNTIME_DIR))  # what validate adds
        out = {}

        # xml2xml: accepted again, and a fixed point
        canonical = self._step(v, "xml2xml", lambda: convert.xml2xml(loaded).text)
        reloaded = None
        if canonical is not None:
            out["xml2xml"] = canonical
            self.canon.write_text(canonical, encoding="utf-8")
            reloaded = self._step(v, "reload", lambda: convert.load(str(self.canon)))
            if reloaded is None:
                code, message = v.errors.pop("reload")
                v.late.pop()
                raise _Stop(Failure("canonical-refused", "xml2xml", f"xml2xml's output is refused: {message}\n"
                                    f"--- xml2xml output:\n{canonical}", ("canonical-refused", _first_words(message))))
            again = self._step(v, "xml2xml", lambda: convert.xml2xml(reloaded).text)
            if again is not None and again != canonical:
                raise _Stop(Failure("not-fixed-point", "xml2xml", _diff(canonical, again, "xml2xml", "xml2xml of that"),
                                    ("not-fixed-point", _diff_signature(canonical, again))))

        # xml2argv, with the golden case's pinned settings and with random ones
        for step, settings in (("xml2argv", case.facts.argv_pinned), ("xml2argv-random", case.facts.argv_random)):
            def argv(dom, settings=settings):
                return convert.xml2argv(dom, runtime_dir=RUNTIME_DIR, bridge_helper=BRIDGE_HELPER, **settings)

            result = self._step(v, step, lambda: argv(loaded))
            if result is None:
                continue
            self._one_line_diagnostics(step, result.warnings)
            check_argv_text(step, result.text, settings["network_only"])
            out[step] = result.text
            if reloaded is not None:
                same = self._step(v, step + " (canonical)", lambda: argv(reloaded))
                if same is None or same.text != result.text:
                    got = same.text if same is not None else v.errors.get(step + " (canonical)")
                    raise _Stop(Failure("canonical-differs", step,
                                        _diff(result.text, str(got), "of the input", "of the canonical XML"),
                                        ("canonical-differs", step)))

        # plan in every format
        facts = case.facts.plan
        for fmt in ("text", "json", "sh", "networkd"):
            step = f"plan-{fmt}"

            def plan(dom, fmt=fmt):
                if fmt in ("sh", "networkd"):  # as the CLI computes them: no names, no helper as root
                    return convert.plan(dom, fmt, runtime_dir=RUNTIME_DIR, owner=OWNER)
                return convert.plan(dom, fmt, runtime_dir=RUNTIME_DIR, owner=OWNER, **facts)

            result = self._step(v, step, lambda: plan(loaded))
            if result is None:
                continue
            self._one_line_diagnostics(step, result.warnings)
            text = result.text
            out[step] = text
            for number, line in enumerate(text.split("\n"), 1):
                bad = first_control(line)
                if bad:
                    raise _Stop(Failure("control-in-output", step, f"line {number} holds U+{ord(bad):04X}: "
                                        f"{line!r:.300}", ("control-in-output", step, f"U+{ord(bad):04X}")))
            if fmt == "json":
                check_plan_json(text, loaded.domain.name)
            if fmt == "sh":
                self.check_sh_syntax(text)
                v.script = text
                v.payload_in_script = any(mark in text for mark in (MARKER, ">P", "touch"))
            if reloaded is not None and fmt in ("text", "json"):
                same = self._step(v, step + " (canonical)", lambda: plan(reloaded))
                if same is None or same.text != text:
                    got = same.text if same is not None else v.errors.get(step + " (canonical)")
                    raise _Stop(Failure("canonical-differs", step, _diff(text, str(got), "of the input",
                                        "of the canonical XML"), ("canonical-differs", step)))
        if v.script is not None:
            pinned = self._step(v, "plan-taps", lambda: convert.plan(loaded, "json", runtime_dir=RUNTIME_DIR))
            if pinned is not None:
                v.taps = tuple(a["ifname"] for a in json.loads(pinned.text)["setup"] if a["action"] == "attach-tap")
                v.payload_in_script |= any(not PLAIN_NAME_RE.fullmatch(tap) for tap in v.taps)
        if keep:
            v.outputs = out

    def check_sh_syntax(self, text):
        key = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()
        if key not in self.sh_cache:
            self.script.write_text(text, encoding="utf-8")
            self.sh_runs += 1
            run = subprocess.run(["sh", "-n", str(self.script)], capture_output=True, text=True, timeout=30)
            self.sh_cache[key] = run.stderr.strip() if run.returncode else None
        error = self.sh_cache[key]
        if error is not None:
            raise _Stop(Failure("sh-syntax", "plan-sh", f"sh -n: {error}\n--- script:\n{text}", ("sh-syntax",)))


def _first_words(message):
    """A message without its location and quoted values: what groups failures."""
    text = message.split(": ", 2)[-1] if message.count(": ") >= 2 else message
    words = []
    for word in text.split()[:6]:
        words.append("…" if any(c in word for c in "'\"<>=0123456789") else word)
    return " ".join(words)


def _diff(a, b, label_a, label_b):
    import difflib

    lines = difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True), label_a, label_b, n=1)
    return "".join(lines)[:4000]


def _diff_signature(a, b):
    import difflib

    changed = [line[1:].strip()[:20] for line in difflib.unified_diff(a.splitlines(), b.splitlines(), n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    tags = sorted({line.split(" ")[0].split(">")[0] for line in changed if line.startswith("<")})
    return ",".join(tags[:3]) or "text"


def argv_words(text):
    """The words of xml2argv's output (one option per line, shell-quoted, `# ...` lines first)."""
    body = "\n".join(line for line in text.split("\n") if not line.startswith("#"))
    return shlex.split(body.replace(" \\\n", " "))


ENV_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def check_argv_text(step, text, network_only=False):
    for number, line in enumerate(text.split("\n"), 1):
        bad = first_control(line)
        if bad:
            raise _Stop(Failure("control-in-argv", step, f"output line {number} holds U+{ord(bad):04X}: "
                                f"{line!r:.300}", ("control-in-argv", step, f"U+{ord(bad):04X}")))
    try:
        words = argv_words(text)
    except ValueError as e:
        raise _Stop(Failure("argv-unparsable", step, f"{e}: {text!r:.500}", ("argv-unparsable", step))) from None
    for word in words:
        bad = first_control(word)
        if bad:
            raise _Stop(Failure("control-in-argv", step, f"argv word holds U+{ord(bad):04X}: {word!r:.300}",
                                ("control-in-argv", step, f"U+{ord(bad):04X}")))
    while words and ENV_WORD_RE.match(words[0]):  # QEMU's environment, NAME=VALUE, comes first
        words.pop(0)
    if network_only:
        if words and not words[0].startswith("-"):
            raise _Stop(Failure("argv-shape", step, f"--network-only prints a word that is not an option first: "
                                f"{words[0]!r:.300}", ("argv-shape", step)))
    elif not words or not words[0].startswith("/"):
        raise _Stop(Failure("argv-shape", step, "the command does not start with an absolute path (the emulator): "
                            f"{(words or [''])[0]!r:.300}", ("argv-shape", step)))


def check_plan_json(text, name):
    try:
        data = json.loads(text)
    except ValueError as e:
        raise _Stop(Failure("plan-json", "plan-json", f"{e}: {text!r:.500}", ("plan-json", "parse"))) from None
    if not (isinstance(data, dict) and data.get("domain") == name and isinstance(data.get("setup"), list)
            and isinstance(data.get("teardown"), list)
            and all(isinstance(a, dict) and "action" in a for a in data["setup"] + data["teardown"])):
        raise _Stop(Failure("plan-json", "plan-json", f"unexpected structure: {text[:500]}", ("plan-json", "shape")))


# --- minimisation ----------------------------------------------------------------------------------------


def minimise(checker, case, failure, budget=400):
    """A smaller document that fails with the same signature (elements, then attributes removed;
    long values shortened), within BUDGET checks."""
    import dataclasses

    tries = [0]

    def fails(text):
        if tries[0] >= budget:
            return False
        tries[0] += 1
        got = checker.check(dataclasses.replace(case, text=text)).failure
        return got is not None and got.signature == failure.signature

    text = case.text
    try:
        root = etree.fromstring(text.encode("utf-8", "surrogatepass"))
    except (etree.XMLSyntaxError, ValueError):
        return _minimise_lines(text, fails)

    def render():
        return etree.tostring(root, encoding="unicode") + "\n"

    changed = True
    while changed and tries[0] < budget:
        changed = False
        for node in reversed(list(root.iter(tag=etree.Element))[1:]):
            parent = node.getparent()
            if parent is None:
                continue
            position = parent.index(node)
            parent.remove(node)
            if fails(render()):
                changed = True
            else:
                parent.insert(position, node)
        for node in list(root.iter(tag=etree.Element)):
            for attr in list(node.attrib):
                value = node.get(attr)
                del node.attrib[attr]
                if fails(render()):
                    changed = True
                else:
                    node.set(attr, value)
        for node in list(root.iter(tag=etree.Element)):
            for attr, value in list(node.attrib.items()):
                if len(value) > 40:
                    node.set(attr, value[:40])
                    if fails(render()):
                        changed = True
                    else:
                        node.set(attr, value)
            if node.text and len(node.text) > 40 and len(node) == 0:
                value = node.text
                node.text = value[:40]
                if fails(render()):
                    changed = True
                else:
                    node.text = value
    return render()


def _minimise_lines(text, fails):
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        candidate = lines[:index] + lines[index + 1:]
        if fails("\n".join(candidate)):
            lines = candidate
        else:
            index += 1
    return "\n".join(lines)


# --- the CLI, as a subprocess ----------------------------------------------------------------------------

CLI_CHECKS = ["validate", "xml2xml", "xml2argv", "xml2argv-random", "plan-text", "plan-json", "plan-sh",
              "plan-networkd", "define"]


def _cli(args, cwd):
    run = subprocess.run([sys.executable, "-m", "virtnet", *args], capture_output=True, cwd=cwd, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return run.returncode, run.stdout, run.stderr


def _cli_problem(status, stdout, stderr):
    """What is wrong with how the CLI ended, whatever its verdict (None when nothing)."""
    try:
        err = stderr.decode("utf-8")
        stdout.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"output is not UTF-8: {e}"
    if "Traceback" in err:
        return "a traceback on stderr"
    if status not in (0, 1):
        return f"exit status {status}"
    lines = err.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for line in lines:
        if not line.startswith(("virtnet: warning: ", "virtnet: error: ")):
            return f"a stderr line that is not a one-line warning or error: {line!r:.300}"
        bad = first_line_break(line)
        if bad:
            return f"a stderr line holding U+{ord(bad):04X}: {line!r:.300}"
    errors = [line for line in lines if line.startswith("virtnet: error: ")]
    if status != 0 and (len(errors) != 1 or lines[-1] != errors[0]):
        return f"exit {status} without exactly one error line, last: {err!r:.500}"
    if status == 0 and errors:
        return "exit 0 with an error line"
    return None


def cli_check(checker, case, which, verdict=None):
    """Run CHECK (one of CLI_CHECKS) through the real CLI on CASE; a Failure or None. Returns the
    number of subprocesses run too."""
    verdict = verdict or checker.check(case, keep=True)
    if verdict.failure is not None:
        return verdict.failure, 0
    path = checker.workdir / "cli.xml"
    path.write_bytes(case.text.encode("utf-8", "surrogatepass"))
    pinned = ["--runtime-dir", RUNTIME_DIR, "--bridge-helper", BRIDGE_HELPER]

    def caps(settings):
        return ["--host-caps", ",".join(sorted(settings["host_caps"])) or "none"]

    def argv_options(settings):
        opts = caps(settings) + pinned + ["--syntax", settings["syntax"]]
        return opts + ["--standalone"] * settings["standalone"] + ["--network-only"] * settings["network_only"]

    expected_load = verdict.errors.get("load")
    commands = {
        "validate": (["validate", "--runtime-dir", RUNTIME_DIR, str(path)], "validate", None),
        "xml2xml": (["xml2xml", str(path)], "xml2xml", verdict.outputs.get("xml2xml")),
        "xml2argv": (["xml2argv", *argv_options(case.facts.argv_pinned), str(path)], "xml2argv",
                     verdict.outputs.get("xml2argv")),
        "xml2argv-random": (["xml2argv", *argv_options(case.facts.argv_random), str(path)], "xml2argv-random",
                            verdict.outputs.get("xml2argv-random")),
        "plan-text": (["--runtime-dir", RUNTIME_DIR, "plan", str(path)], "plan-text", None),
        "plan-json": (["--runtime-dir", RUNTIME_DIR, "plan", "--format", "json", str(path)], "plan-json", None),
        "plan-sh": (["--runtime-dir", RUNTIME_DIR, "plan", "--format", "sh", "--owner", OWNER, str(path)], "plan-sh",
                    verdict.outputs.get("plan-sh")),
        "plan-networkd": (["--runtime-dir", RUNTIME_DIR, "plan", "--format", "networkd", "--owner", OWNER, str(path)],
                          "plan-networkd", verdict.outputs.get("plan-networkd")),
    }
    step = f"cli {which}"

    def fail(kind, detail):
        return Failure(kind, step, detail, (kind, step))

    if which == "define":
        return _cli_define(checker, case, verdict, path, step, fail)
    args, oracle_step, expected_out = commands[which]
    status, stdout, stderr = _cli(args, REPO)
    problem = _cli_problem(status, stdout, stderr)
    if problem:
        return fail("cli-misbehaves", f"virtnet {shlex.join(args)}: {problem}\n{stderr.decode(errors='replace')[:2000]}"), 1
    if expected_load is not None:
        expected_status = expected_load[0]
    elif oracle_step in ("plan-text", "plan-json"):
        expected_status = None  # the CLI sees this host's interface names and capabilities
    else:
        expected_status = verdict.errors.get(oracle_step, (0, None))[0]
    if expected_status is not None and status != expected_status:
        return fail("cli-differs", f"virtnet {shlex.join(args)} exited {status}, in-process says {expected_status}:"
                    f"\n{stderr.decode(errors='replace')[:2000]}"), 1
    if status == 0 and expected_out is not None and stdout.decode() != expected_out:
        return fail("cli-differs", f"virtnet {shlex.join(args)} printed other output than in-process:\n"
                    + _diff(expected_out, stdout.decode(), "in-process", "cli")), 1
    if status == 0 and which == "plan-json":
        try:
            json.loads(stdout)
        except ValueError as e:
            return fail("plan-json", f"the CLI's plan json does not parse: {e}"), 1
    return None, 1


def _cli_define(checker, case, verdict, path, step, fail):
    store = Path(tempfile.mkdtemp(prefix="store-", dir=checker.workdir))
    base = ["--state-dir", str(store / "state"), "--runtime-dir", str(store / "run")]
    runs = 0
    try:
        status, stdout, stderr = _cli([*base, "define", str(path)], REPO)
        runs += 1
        problem = _cli_problem(status, stdout, stderr)
        if problem:
            return fail("cli-misbehaves", f"define: {problem}\n{stderr.decode(errors='replace')[:2000]}"), runs
        if (status == 0) != verdict.accepted:
            return fail("cli-differs", f"define exited {status} but in-process load "
                        f"{'accepted' if verdict.accepted else 'refused'} it:\n{stderr.decode(errors='replace')}"), runs
        if status != 0:
            return None, runs
        from virtnet import convert

        name = convert.load(str(path)).domain.name
        for verb in (["dumpxml", "--inactive", "--", name], ["domiflist", "--", name], ["list", "--all"],
                     ["undefine", "--", name]):
            status, stdout, stderr = _cli([*base, *verb], REPO)
            runs += 1
            problem = _cli_problem(status, stdout, stderr)
            if problem or status != 0:
                return fail("cli-misbehaves", f"{verb[0]} after define: exit {status}; {problem or ''}\n"
                            f"{stderr.decode(errors='replace')[:2000]}"), runs
            if verb[0] == "dumpxml" and stdout.decode() != verdict.outputs.get("xml2xml"):
                return fail("cli-differs", "dumpxml --inactive after define differs from xml2xml:\n"
                            + _diff(verdict.outputs.get("xml2xml") or "", stdout.decode(), "xml2xml", "dumpxml")), runs
            if verb[0] in ("domiflist", "list"):
                for line in stdout.decode().split("\n"):
                    bad = first_control(line)
                    if bad:
                        return fail("control-in-output", f"{verb[0]} prints U+{ord(bad):04X}: {line!r:.300}"), runs
        return None, runs
    finally:
        shutil.rmtree(store, ignore_errors=True)


# --- running pre-create scripts in a network namespace --------------------------------------------------


def netns_available():
    """Why scripts cannot be run here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


RECORDER = """#!/bin/sh
# Records a command a pre-create script must never run; does nothing else.
printf 'UNEXPECTED %s' "${0##*/}" >>"$VIRTNET_FUZZ_LOG"
for word in "$@"; do printf ' %s' "$word" >>"$VIRTNET_FUZZ_LOG"; done
printf '\\n' >>"$VIRTNET_FUZZ_LOG"
exit 0
"""
PASSTHROUGH = """#!/bin/sh
printf 'ran %s' "{name}" >>"$VIRTNET_FUZZ_LOG"
for word in "$@"; do printf ' %s' "$word" >>"$VIRTNET_FUZZ_LOG"; done
printf '\\n' >>"$VIRTNET_FUZZ_LOG"
exec {real} "$@"
"""
STUB_EXTRAS = ("touch", "rm", "sh", "bash", "dash", "curl", "wget", "nc", "python3", "perl", "chmod", "chown",
               "mkdir", "ln", "cp", "mv", "dd", "reboot", "kill", "useradd", "systemctl", "tee", "env", "sudo")


class Sandbox:
    """Stub commands for the scripts' PATH, and the namespaces the runs use (all deleted again)."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.stubs = self.workdir / "stubs"
        self.stubs.mkdir(parents=True, exist_ok=True)
        recorder = self.stubs / ".record"
        recorder.write_text(RECORDER)
        recorder.chmod(0o755)
        system_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        names = set(STUB_EXTRAS)
        for directory in system_path.split(":"):
            try:
                names.update(n for n in os.listdir(directory) if os.access(os.path.join(directory, n), os.X_OK))
            except OSError:
                continue
        for name in sorted(names - set(EXPECTED_COMMANDS)):
            if name.startswith(".") or "/" in name:
                continue
            (self.stubs / name).symlink_to(".record")
        for name in EXPECTED_COMMANDS:
            real = shutil.which(name, path=system_path)
            stub = self.stubs / name
            stub.write_text(PASSTHROUGH.format(name=name, real=shlex.quote(real)))
            stub.chmod(0o755)
        self.path = f"{self.stubs}:{system_path}"
        self.ip = shutil.which("ip", path=system_path)
        self.count = 0
        self.created = []

    def links(self, ns):
        run = subprocess.run([self.ip, "-n", ns, "-j", "link", "show"], capture_output=True, text=True, timeout=30)
        if run.returncode:
            raise RuntimeError(f"ip -n {ns} link show: {run.stderr.strip()}")
        return sorted(link["ifname"] for link in json.loads(run.stdout))

    def run_script(self, script, taps):
        """Run SCRIPT twice in a fresh namespace; a description of what went wrong, or None."""
        self.count += 1
        ns = f"{NETNS_PREFIX}-{os.getpid()}-{self.count}"
        cwd = Path(tempfile.mkdtemp(prefix="run-", dir=self.workdir))
        log = cwd.parent / f"{cwd.name}.log"
        path = cwd.parent / f"{cwd.name}.sh"
        path.write_text(script, encoding="utf-8")
        if os.path.lexists(ABS_MARKER):
            os.unlink(ABS_MARKER)  # left by an earlier run that found an injection
        subprocess.run([self.ip, "netns", "add", ns], check=True, capture_output=True, timeout=30)
        self.created.append(ns)
        try:
            env = {"PATH": self.path, "VIRTNET_FUZZ_LOG": str(log), "HOME": str(cwd), "LC_ALL": "C.UTF-8"}
            for attempt in ("first run", "second run"):
                run = subprocess.run([self.ip, "netns", "exec", ns, "/bin/sh", str(path)], cwd=cwd, env=env,
                                     capture_output=True, text=True, errors="replace", timeout=60)
                problems = []
                if run.returncode != 0:
                    problems.append(f"the script exited {run.returncode}: {run.stderr.strip()[:1000]}")
                planted = sorted(os.listdir(cwd))
                if planted:
                    problems.append(f"files appeared in the script's working directory: {planted}")
                if os.path.lexists(ABS_MARKER):
                    problems.append(f"{ABS_MARKER} was created")
                    os.unlink(ABS_MARKER)
                recorded = log.read_text(errors="replace").splitlines() if log.exists() else []
                unexpected = [line for line in recorded if line.startswith("UNEXPECTED")]
                if unexpected:
                    problems.append(f"unexpected commands ran: {unexpected[:5]}")
                links = self.links(ns)
                wanted = sorted({"lo", *taps})
                if links != wanted:
                    problems.append(f"the namespace holds {links}, the plan names {wanted}")
                if problems:
                    return f"{attempt}: " + "; ".join(problems)
            return None
        finally:
            subprocess.run([self.ip, "netns", "delete", ns], capture_output=True, timeout=30)
            shutil.rmtree(cwd, ignore_errors=True)

    def leftovers(self):
        """Namespaces of this sandbox still present (there should be none)."""
        listed = subprocess.run([self.ip, "netns", "list"], capture_output=True, text=True).stdout.split()
        return [ns for ns in self.created if ns in listed]


# --- a campaign ------------------------------------------------------------------------------------------


@dataclass
class Found:
    case: Case
    failure: Failure
    minimised: str = None

    def report(self):
        lines = [f"FAIL [{self.failure.headline()}] seed={self.case.seed} index={self.case.index} "
                 f"(from {self.case.base}; reproduce: {self.case.reproduce})"]
        lines += [f"  mutation: {op}" for op in self.case.ops]
        lines.append("  detail:")
        detail = CONTROL_RE.sub(lambda m: "\n" if m.group() == "\n" else f"\\u{ord(m.group()):04x}", self.failure.detail)
        lines += ["    " + line for line in detail.rstrip().split("\n")[:60]]
        if self.minimised is not None:
            lines.append("  minimised document (control characters written as character references):")
        else:
            lines.append("  document (control characters written as character references):")
        document = self.minimised if self.minimised is not None else self.case.text
        lines += ["    " + line for line in visible_xml(document).rstrip("\n").split("\n")]
        return "\n".join(lines)


def visible_xml(text):
    """TEXT with every control character but the newline as an XML character reference."""
    return CONTROL_RE.sub(lambda m: "\n" if m.group() == "\n" else f"&#x{ord(m.group()):X};", text)


@dataclass
class Summary:
    seed: int
    count: int = 0
    accepted: int = 0
    with_taps: int = 0
    payload_in_script: int = 0
    late: Counter = field(default_factory=Counter)
    sh_runs: int = 0
    cli_runs: int = 0
    netns_runs: int = 0
    failures: dict = field(default_factory=dict)  # signature -> [Found, count]
    notes: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self):
        return sum(n for _, n in self.failures.values())

    def add_failure(self, found):
        sig = found.failure.signature
        if sig in self.failures:
            self.failures[sig][1] += 1
        else:
            self.failures[sig] = [found, 1]

    def text(self):
        refused = self.count - self.accepted
        lines = [f"virtnet fuzz: seed {self.seed}: {self.count} documents in {self.seconds:.1f} s "
                 f"({self.accepted} accepted, {refused} refused; {self.with_taps} with taps to pre-create, "
                 f"{self.payload_in_script} with a payload in the script); {self.sh_runs} `sh -n` runs, "
                 f"{self.cli_runs} CLI runs, {self.netns_runs} scripts run in a namespace; "
                 f"{self.failed} failing documents, {len(self.failures)} distinct failures"]
        lines += [f"  note: {note}" for note in self.notes]
        if self.late:
            top = ", ".join(f"{step} {cls} ×{n}" for (step, cls), n in self.late.most_common(8))
            lines.append(f"  accepted by load, refused later (allowed, one line each): {top}")
        for found, n in self.failures.values():
            lines.append(f"\n[{n} document(s) with this failure]\n" + found.report())
        return "\n".join(lines)


_WORKER = {}


def _worker_init(seed, scratch):
    _WORKER["checker"] = Checker(tempfile.mkdtemp(prefix="worker-", dir=scratch))
    _WORKER["seed"] = seed
    corpus()


def _worker_run(indices):
    """Check the documents INDICES of the worker's seed: compact results, and the `sh -n` count."""
    checker = _WORKER["checker"]
    seed = _WORKER["seed"]
    before = checker.sh_runs
    results = []
    for index in indices:
        verdict = checker.check(generate(seed, index))
        results.append((index, verdict.accepted, len(verdict.taps), verdict.payload_in_script,
                        tuple(verdict.late), verdict.failure))
    return results, checker.sh_runs - before


def run(seed, count, *, jobs=1, cli=0, netns=0, progress=None, start=0, minimise_budget=400, max_minimise=20):
    """Fuzz COUNT documents of SEED (indices START…) in-process on JOBS processes, then run the CLI
    on a sample (CLI subprocesses) and NETNS pre-create scripts in namespaces; a Summary. The first
    MAX_MINIMISE distinct in-process failures are minimised. PROGRESS, when given, is called with a
    status line now and then."""
    began = time.monotonic()
    summary = Summary(seed)
    indices = range(start, start + count)
    size = 50 if count < 5000 else 250
    chunks = [list(indices[i:i + size]) for i in range(0, count, size)]
    candidates = {"accepted": [], "refused": [], "taps": [], "payload": []}
    last = [time.monotonic()]

    def absorb(batch):
        results, sh_runs = batch
        summary.sh_runs += sh_runs
        for index, accepted, taps, payload, late, failure in results:
            summary.count += 1
            summary.accepted += accepted
            summary.with_taps += taps > 0
            summary.payload_in_script += bool(payload and taps)
            summary.late.update(late)
            if failure is not None:
                summary.add_failure(Found(generate(seed, index), failure))
            elif accepted:
                candidates["accepted"].append(index)
                if taps:
                    candidates["payload" if payload else "taps"].append(index)
            else:
                candidates["refused"].append(index)
        if progress and (time.monotonic() - last[0] > 10 or summary.count == count):
            last[0] = time.monotonic()
            elapsed = last[0] - began
            rate = summary.count / elapsed if elapsed else 0
            eta = (count - summary.count) / rate if rate else 0
            progress(f"virtnet fuzz: {summary.count}/{count} documents ({summary.accepted} accepted), "
                     f"{summary.failed} failing, {rate:.0f}/s, eta {eta:.0f} s")

    checker = Checker()  # its directory also holds the workers' (removed with it)
    try:
        if jobs > 1:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(jobs, _worker_init, (seed, checker.workdir)) as pool:
                for batch in pool.imap(_worker_run, chunks):
                    absorb(batch)
        else:
            _worker_init(seed, checker.workdir)
            for chunk in chunks:
                absorb(_worker_run(chunk))
            _WORKER.clear()
        for found, _ in list(summary.failures.values())[:max_minimise]:
            if found.failure.kind != "timeout":  # each try could take as long again
                found.minimised = minimise(checker, found.case, found.failure, budget=minimise_budget)
        rng = random.Random(f"virtnet-fuzz-samples/{seed}/{start}/{count}")
        if cli:
            _cli_sample(checker, seed, summary, candidates, rng, cli, progress)
        if netns:
            why = netns_available()
            if why:
                summary.notes.append(f"pre-create scripts were not run in namespaces: {why}")
            else:
                _netns_sample(checker, seed, summary, candidates, rng, netns, progress)
    finally:
        checker.close()
    summary.seconds = time.monotonic() - began
    return summary


def _cli_sample(checker, seed, summary, candidates, rng, budget, progress):
    accepted, refused = candidates["accepted"], candidates["refused"]
    picks = []
    while len(picks) < budget and (accepted or refused):
        pool = accepted if accepted and (not refused or rng.random() < 0.75) else refused
        picks.append(pool[rng.randrange(len(pool))])
    runs, turn = 0, rng.randrange(len(CLI_CHECKS))
    for index in picks:
        if runs >= budget:
            break
        case = generate(seed, index)
        which = CLI_CHECKS[turn % len(CLI_CHECKS)]
        turn += 1
        if which == "define" and runs + 5 > budget:
            which = "validate"
        failure, n = cli_check(checker, case, which)
        runs += n
        if failure is not None:
            summary.add_failure(Found(case, failure))
    summary.cli_runs += runs
    if progress:
        progress(f"virtnet fuzz: {runs} CLI runs done")


def _netns_sample(checker, seed, summary, candidates, rng, budget, progress):
    sandbox = Sandbox(checker.workdir / "sandbox")
    picks = list(candidates["payload"])
    rng.shuffle(picks)
    rest = list(candidates["taps"])
    rng.shuffle(rest)
    picks = (picks[: max(1, budget * 3 // 4)] + rest)[:budget]
    if len(picks) < budget:
        picks += [i for i in candidates["payload"] if i not in picks][: budget - len(picks)]
    try:
        for index in picks:
            case = generate(seed, index)
            verdict = checker.check(case)
            if verdict.script is None or verdict.failure is not None:
                continue
            problem = sandbox.run_script(verdict.script, verdict.taps)
            summary.netns_runs += 1
            if problem:
                failure = Failure("netns", "plan-sh run", f"{problem}\n--- script:\n{verdict.script}",
                                  ("netns", problem.split(":")[0], problem.split(": ", 1)[-1][:30]))
                summary.add_failure(Found(case, failure))
    finally:
        left = sandbox.leftovers()
        for ns in left:
            subprocess.run([sandbox.ip, "netns", "delete", ns], capture_output=True)
        if left:
            raise RuntimeError(f"namespaces left behind (now deleted): {left}")
    if progress:
        progress(f"virtnet fuzz: {summary.netns_runs} scripts run in network namespaces")


# --- command line ----------------------------------------------------------------------------------------


def show(seed, index, minimise_it=True):
    """Print one document, its mutations and its verdict; exit status 1 when it fails."""
    case = generate(seed, index)
    print(f"# seed {seed} index {index}, from {case.base}")
    for op in case.ops:
        print(f"# mutation: {op}")
    sys.stdout.write(visible_xml(case.text))  # control characters as character references
    with Checker() as checker:
        verdict = checker.check(case, keep=True)
        if verdict.failure is None:
            state = "accepted" if verdict.accepted else f"refused: {verdict.errors['load'][1]}"
            print(f"# verdict: passes ({state}; later refusals: {verdict.late or 'none'}; taps: {list(verdict.taps)})")
            return 0
        found = Found(case, verdict.failure)
        if minimise_it:
            found.minimised = minimise(checker, case, verdict.failure)
        print(found.report())
        return 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tools/fuzz.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="documents to generate and check (default 1000)")
    parser.add_argument("--seed", type=int, default=None, help="the campaign seed (default: a random one, printed)")
    parser.add_argument("--start", type=int, default=0, help="first document index (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--cli", type=int, default=0, metavar="N", help="CLI subprocess runs on a sample")
    parser.add_argument("--netns", type=int, default=0, metavar="N",
                        help="pre-create scripts to run in network namespaces (root)")
    parser.add_argument("--index", type=int, default=None, help="show and check one document of --seed")
    parser.add_argument("--no-minimise", action="store_true", help="with --index: do not minimise a failure")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    if args.index is not None:
        return show(args.seed, args.index, not args.no_minimise)
    print(f"virtnet fuzz: seed {args.seed}, {args.count} documents, {args.jobs} job(s) "
          f"(reproduce: python tools/fuzz.py --seed {args.seed} --count {args.count})", flush=True)
    summary = run(args.seed, args.count, jobs=args.jobs, cli=args.cli, netns=args.netns, start=args.start,
                  progress=lambda line: print(line, flush=True))
    print(summary.text())
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
