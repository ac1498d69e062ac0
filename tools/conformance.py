"""libvirt's own test corpus (its network cases and its domain/ guest cases) as a judge of virtnet.

    python tools/conformance.py [DIR] [--baseline FILE] [--tsv]      (or: make conformance)

A development tool, not part of the virtnet package: it runs virtnet's public functions
(virtnet.conf.load, virtnet.qemu.argv, virtnet.conf.format) on the corpus.

The corpus (see its INDEX.md) holds libvirt's test inputs `xml2argv/NAME.xml`, the command lines
libvirt's QEMU driver builds for them (`NAME.x86_64-latest.args`, ...), the errors it reports
(`NAME.err`) and the canonical XML it writes back (`xml2xml/NAME.x86_64-latest.xml`). virtnet is
run on every input and compared, case by case:

argv cases
    Only the network options are compared: every `-netdev`, every `-device` that has a `netdev`
    property (the NIC) and every `-chardev` a netdev refers to (vhost-user). Each option is parsed
    into a flat property set (JSON or keyval alike: nested keys dotted, booleans on/off) and the
    options are matched by id, so option order and syntax do not matter. virtnet runs with the
    host capabilities libvirt's test assumed: its mock hands out vhost-net descriptors for every
    virtio tap, so `vhost-net` is always available. Where libvirt has an expectation for QEMU
    7.2 (`NAME.x86_64-7.2.0.args`), the QEMU virtnet targets, it is used instead of the latest.

    Normalisations, applied before comparing and named in the table when they changed something:
    fd numbers    `fd`, `fds`, `vhostfd`, `vhostfds` compare by count, not by number.
    vhost mock    libvirt's test mock opens vhost-net for every virtio tap, even for TCG domains,
                  where libvirt itself (qemuInterfaceOpenVhostNet) and virtnet use none: for
                  domains other than type='kvm', libvirt's vhost/vhostfd(s) are dropped.
    reconnect-ms  QEMU 9.2 renamed the chardev's `reconnect` (seconds) to `reconnect-ms`; QEMU
                  7.2 only knows the former, so `reconnect-ms=N000` reads as `reconnect=N`.
    passt socket  the path of passt's socket (`-netdev stream` addr.path) is the host's runtime
                  directory, not something the XML says: compared as a placeholder.

xml2xml cases
    The `<interface>` elements of virtnet's canonical XML are compared with libvirt's, ignoring
    attribute order, whitespace and comments (child order does count: both follow libvirt's).
    Two things are compared only where the input wrote them, because they are generated:
    `<mac>` (random in libvirt, derived from the uuid in virtnet) and `<address>`. libvirt
    addresses every device of the domain (controllers, video — the primary video card takes slot
    2 on i440fx — balloon) and puts q35 NICs behind pcie-root-ports; virtnet addresses only NICs,
    around any address written in the input. A generated address that differs is listed as a
    note, not as a difference.

guest cases (domain/: libvirt's qemuxmlconfdata cases for real guests)
    The whole command line is compared, option by option, each parsed into a property set keyed
    by what it is (-machine, -cpu, -smp, -rtc, -boot, each -global, each -device/-chardev/-object
    by id, the pflash -blockdevs, the environment, the <qemu:commandline> words). Where libvirt
    has a QEMU 7.2 expectation it is used. Not compared: libvirt's daemon plumbing (-name, -uuid,
    -S, -mon, -sandbox, -msg, -overcommit, -audiodev, -add-fd, the master-key secret and the RAM
    backend object), and what other parts of virtnet own or report as not rendered — disks and
    their controllers (virtnet.qemu.storage), USB controllers, display and input devices,
    filesystems: the table names them per case.

    Normalisations (named in the table when they changed something):
    -no-shutdown  libvirt always passes it and acts on QEMU's events from its daemon; virtnet has
                  no daemon, so QEMU exits by itself at a guest power-off: never compared.
    set-action    libvirt applies on_reboot='destroy' over QMP; virtnet passes -action
                  reboot=shutdown: the two are read as the same.
    QEMU 7.2      libvirt's 7.2 lines say -no-acpi and -no-hpet, and nothing for ACPI on; virtnet
                  says -machine acpi=on|off and hpet=off (also understood by QEMU 7.2).
    defaults      no -cpu is qemu64 and no -rtc is base=utc (QEMU's defaults, libvirt's too);
                  -machine memory-backend is dropped (libvirt backs all RAM with an object).
    machine alias libvirt resolves 'pc'/'q35' to QEMU's versioned type; read as the XML's alias.
    sockets/files libvirt passes listening sockets as fd=N and files through /dev/fdset: a
                  listening socket's path, a file's path and its append flag are not compared.
    NVRAM path    a generated variable store lives in libvirt's nvram dir or virtnet's state dir.
    balloon stats libvirt sets the polling interval over QMP, virtnet on the -device.

disk cases (domain/: the cases with disks or controllers, or on q35; kinds disk and disk-xml)
    The disk and controller options are compared: every -blockdev of a disk (not the firmware's)
    by node name, every disk and controller -device (root ports and bridges included) by id.
    And the <disk> elements of the canonical XML, in order, and the <controller> elements of
    types pci, scsi, sata and ide matched by type and index. libvirt's expectations are for QEMU
    10.0 (the corpus has no 7.2 one with a disk but clock-hpet-off, which is used).

    Normalisations and notes (named in the table):
    raw format    libvirt leaves a raw image's format node out for QEMU >= 9.1 only; for 7.2 it
                  writes one (clock-hpet-off.x86_64-7.2.0.args), as virtnet does: libvirt's
                  newer line is read in its 7.2 form.
    not rendered  what virtnet reports as not rendered (network disks, floppies, USB disks, a
                  <wwn>, an ibmvscsi controller, <qemu:override> properties) is not compared.
    placement     where the input gives no PCI address, the slot is each one's own choice among
                  all the devices it renders — libvirt renders USB controllers, video, input and
                  filesystems too — so a different slot, root port count or implicit controller
                  (libvirt's q35 SATA, the PCI root) is a note. Addresses the input gives count.
    host_cdrom    libvirt asks a CD-ROM's block device whether it is a CD-ROM drive (its test mock
                  answers yes for /dev/cdrom only); virtnet goes by the names /dev/cdrom, /dev/srN.
    other refusal when virtnet refuses the input for something not about storage, it is read
                  without its other devices (STORAGE_KEPT_DEVICES), and a note says so.

Statuses: match · differs (which properties) · virtnet-rejects (its message) · both-reject
(libvirt expects an error and virtnet refuses too) · virtnet-stricter (virtnet refuses an input on
purpose, see STRICTER) · virtnet-accepts (libvirt expects an error, virtnet does not) ·
virtnet-crashes (an unexpected exception) · out-of-scope (see OUT_OF_SCOPE).
"""

import argparse
import difflib
import json
import os
import re
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: judge the virtnet of this checkout

from lxml import etree

from virtnet.errors import UsageError, VirtnetError
from virtnet.qemu.render import flatten

PROG = "conformance.py"
# Relative to the repository root, else to the working directory.
DEFAULT_CORPUS = Path("..") / "shared" / "conformance" / "libvirt"
HOST_CAPS = frozenset({"vhost-net"})
RUNTIME_DIR = "/run/virtnet"

# The one list of cases virtnet does not try to handle, with why. Applies to both comparisons.
_HOSTDEV = "type='hostdev': an SR-IOV VF passed through with vfio-pci (no -netdev); virtnet does no PCI passthrough"
_VDPA = "type='vdpa': a vhost-vdpa character device passed with -add-fd; virtnet has no vDPA support"
OUT_OF_SCOPE = {
    "net-hostdev": _HOSTDEV,
    "net-hostdev-bootorder": _HOSTDEV,
    "net-hostdev-fail": _HOSTDEV,
    "net-hostdev-multidomain": _HOSTDEV,
    "net-hostdev-vfio": _HOSTDEV,
    "net-hostdev-vfio-multidomain": _HOSTDEV,
    "net-virtio-teaming": "the teaming's transient partner is an <interface type='hostdev'> (" + _HOSTDEV + ")",
    "net-vdpa": _VDPA,
    "net-vdpa-multiqueue": _VDPA,
    "net-virtio-ccw": "s390x guest: virtio-ccw addresses on the s390-ccw-virtio machine; virtnet builds x86 PCI NICs",
}

# Inputs libvirt accepts but virtnet refuses on purpose: QEMU would refuse libvirt's command line
# anyway (libvirt's tests never start QEMU), or libvirt silently accepts something that cannot do
# what it says. Checked by tests/test_conformance.py.
STRICTER = {
    "net-mcast": "mcast address 192.0.0.1 is not multicast; QEMU 7.2 refuses the argv: 'specified "
                 "mcastaddr 192.0.0.1 (0xc0000001) does not contain a multicast address'",
    "net-many-models": "four NICs share MAC 00:11:22:33:44:58; virtnet refuses duplicate MACs in a domain "
                       "(they collide on any shared segment); libvirt and QEMU accept them",
    "tap-vhost-incorrect": "<driver queues='5'> on an e1000, which has one queue: libvirt silently drops it, "
                           "virtnet refuses it so the setting is not silently without effect",
}

GOOD = ("match", "both-reject")
STATUSES = ("match", "both-reject", "virtnet-stricter", "differs", "virtnet-rejects", "virtnet-accepts",
            "virtnet-crashes", "out-of-scope")
FD_KEYS = ("fd", "vhostfd")
FD_LIST_KEYS = ("fds", "vhostfds")
LEAD_KEYS = {"-netdev": "type", "-device": "driver", "-chardev": "backend"}


@dataclass
class Result:
    kind: str  # "argv" or "xml"
    case: str
    status: str
    detail: str = ""
    notes: list = field(default_factory=list)


# -- locating the corpus and its cases ------------------------------------------------------------

def find_corpus(explicit=None, default=DEFAULT_CORPUS, marker="xml2argv", what="a libvirt corpus"):
    """The corpus directory: EXPLICIT, else DEFAULT next to the repository or the cwd; a corpus is
    known by its MARKER folder (network_conformance.py looks for libvirt's network corpus so)."""
    if explicit:
        path = Path(explicit)
        if not (path / marker).is_dir():
            raise UsageError(f"{explicit}: not {what} (no {marker}/ folder inside)")
        return path
    candidates = [REPO / default, Path.cwd() / default]
    for path in candidates:
        if (path / marker).is_dir():
            return path
    raise UsageError(f"{what[0].upper()}{what[1:]} was not found in " + " or ".join(str(p) for p in candidates)
                     + "; pass its directory")


def argv_expectation(corpus, case):
    """(path, 'args'|'err') of libvirt's expected outcome for xml2argv/CASE.xml, or None."""
    base = Path(corpus) / "xml2argv"
    for suffix in (".x86_64-7.2.0.args", ".x86_64-latest.args", ".s390x-latest.args"):
        if (base / (case + suffix)).exists():
            return base / (case + suffix), "args"
    for suffix in (".x86_64-latest.err", ".err"):
        if (base / (case + suffix)).exists():
            return base / (case + suffix), "err"
    return None


def argv_cases(corpus):
    base = Path(corpus) / "xml2argv"
    names = sorted(p.name[:-4] for p in base.glob("*.xml"))
    return [n for n in names if argv_expectation(corpus, n) is not None]


def xml_cases(corpus):
    suffix = ".x86_64-latest.xml"
    names = sorted(p.name[: -len(suffix)] for p in (Path(corpus) / "xml2xml").glob("*" + suffix))
    return [n for n in names if (Path(corpus) / "xml2argv" / (n + ".xml")).exists()]


# -- command lines as property sets ---------------------------------------------------------------

def split_keyval(text):
    """QEMU keyval items: split at single commas, a doubled comma is a literal one."""
    items, current, i = [], [], 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    items.append("".join(current))
    return items


def _scalar(value):
    if value is True:
        return "on"
    if value is False:
        return "off"
    return str(value)


def parse_option(option, value):
    """One -netdev/-device/-chardev value (JSON or keyval) as a flat {key: str} dict."""
    if value.lstrip().startswith("{"):
        return {key: _scalar(v) for key, v in flatten(json.loads(value))}
    items = split_keyval(value)
    props = {}
    if items and "=" not in items[0]:
        props[LEAD_KEYS[option]] = items.pop(0)
    for item in items:
        key, sep, val = item.partition("=")
        props[key] = val if sep else "on"
    return props


def args_file_tokens(text):
    """The words of a libvirt .args file (a shell command with backslash-newline continuations)."""
    return shlex.split(text.replace("\\\n", " "))


def network_option_words(tokens):
    """[(option, value)] for the network options in an argv: netdevs, NICs, their chardevs."""
    words = [(tok, tokens[i + 1]) for i, tok in enumerate(tokens[:-1]) if tok in LEAD_KEYS]
    parsed = [parse_option(o, v) for o, v in words]
    chardevs = {p["chardev"] for (o, _), p in zip(words, parsed) if o == "-netdev" and "chardev" in p}
    return [(o, v) for (o, v), p in zip(words, parsed)
            if o == "-netdev" or (o == "-device" and "netdev" in p) or (o == "-chardev" and p.get("id") in chardevs)]


def network_options(tokens):
    """[(option, props)] for the network options in an argv (see network_option_words)."""
    return [(o, parse_option(o, v)) for o, v in network_option_words(tokens)]


def normalise(options, *, libvirt_side, kvm, notes):
    """Apply the module docstring's normalisations in place; record which ones mattered in NOTES."""
    for option, props in options:
        for key in FD_KEYS:
            if key in props:
                props[key] = "<fd>"
        for key in FD_LIST_KEYS:
            if key in props:
                props[key] = ":".join("<fd>" for _ in props[key].split(":"))
        if "reconnect-ms" in props:
            ms = props.pop("reconnect-ms")
            props["reconnect"] = str(int(ms) // 1000) if ms.isdigit() and int(ms) % 1000 == 0 else ms + "ms"
            _note(notes, "reconnect-ms read as reconnect seconds")
        if option == "-netdev" and props.get("type") == "stream" and props.get("addr.type") == "unix":
            props["addr.path"] = "<passt socket>"
            _note(notes, "passt socket path not compared")
        if libvirt_side and not kvm and option == "-netdev" and props.get("type") == "tap":
            dropped = [k for k in ("vhost", "vhostfd", "vhostfds") if props.pop(k, None) is not None]
            if dropped:
                _note(notes, "vhost fds of libvirt's test mock dropped (not a kvm domain)")
    return options


def _note(notes, text):
    if text not in notes:
        notes.append(text)


def _keyed(options):
    keyed = {}
    for option, props in options:
        ident = props.get("id", "?")
        keyed[f"{option} {ident}"] = props
    return keyed


def compare_options(libvirt, virtnet):
    """Human-readable differences between two lists of (option, props); empty when they match."""
    ours, theirs = _keyed(virtnet), _keyed(libvirt)
    diffs = []
    for key in theirs:
        if key not in ours:
            diffs.append(f"virtnet has no {key}")
    for key in ours:
        if key not in theirs:
            diffs.append(f"virtnet adds {key}")
    for key in theirs:
        if key not in ours:
            continue
        a, b = theirs[key], ours[key]
        parts = []
        for prop in a:
            if prop not in b:
                parts.append(f"lacks {prop}={a[prop]}")
            elif a[prop] != b[prop]:
                parts.append(f"{prop}={b[prop]} (libvirt {a[prop]})")
        for prop in b:
            if prop not in a:
                parts.append(f"adds {prop}={b[prop]}")
        if parts:
            diffs.append(f"{key}: " + ", ".join(parts))
    return diffs


# -- running virtnet ------------------------------------------------------------------------------

def _message(error):
    return f"line {error.line}: {error.message}" if error.line else error.message


def virtnet_network_argv(corpus, case, notes):
    """(domain, argv): virtnet's network options for xml2argv/CASE.xml, as xml2argv --network-only
    builds them."""
    from virtnet.conf.load import load_file
    from virtnet.qemu.argv import ArgvOptions, build_argv
    from virtnet.runpaths import DomainPaths

    domain = load_file(str(Path(corpus) / "xml2argv" / (case + ".xml"))).domain
    options = ArgvOptions(network_only=True, host_caps=HOST_CAPS)
    return domain, build_argv(domain, DomainPaths(RUNTIME_DIR, domain.name), options)


def virtnet_canonical_xml(corpus, case, notes):
    from virtnet.conf.format import format_domain
    from virtnet.conf.load import load_file

    return format_domain(load_file(str(Path(corpus) / "xml2argv" / (case + ".xml"))).domain)


def _first_line(text):
    return text.strip().splitlines()[0] if text.strip() else ""


def refused(kind, case, error, expected_path, expected_kind, stricter):
    """The Result of a case virtnet refused with ERROR: libvirt refuses it too, or virtnet is
    stricter on purpose (STRICTER says why), or it refuses what libvirt takes."""
    if expected_kind == "err":
        return Result(kind, case, "both-reject",
                      f"libvirt: {_first_line(expected_path.read_text())} | virtnet: {_message(error)}")
    if case in stricter:
        return Result(kind, case, "virtnet-stricter", f"{_message(error)} [{stricter[case]}]")
    return Result(kind, case, "virtnet-rejects", _message(error))


def check_case(kind, corpus, case, *, out_of_scope, stricter, expectation, convert, compare):
    """The Result of one case of KIND, whatever the corpus: out of scope (OUT_OF_SCOPE says why),
    refused by virtnet (see refused(); STRICTER), a crash, accepted where libvirt refuses, or else
    the differences COMPARE(corpus, case, made, expected_path, notes) finds in what
    CONVERT(corpus, case, notes) made. EXPECTATION(corpus, case) gives libvirt's
    (expected_path, 'args'|'err'|'xml'); it is asked only for a case in scope."""
    if case in out_of_scope:
        return Result(kind, case, "out-of-scope", out_of_scope[case])
    expected_path, expected_kind = expectation(corpus, case)
    notes = []
    try:
        made = convert(corpus, case, notes)
    except VirtnetError as e:
        return refused(kind, case, e, expected_path, expected_kind, stricter)
    except Exception as e:  # a crash is a finding of its own, reported rather than raised
        return Result(kind, case, "virtnet-crashes", f"{type(e).__name__}: {e}")
    if expected_kind == "err":
        return Result(kind, case, "virtnet-accepts", f"libvirt: {_first_line(expected_path.read_text())}")
    diffs = compare(corpus, case, made, expected_path, notes)
    return Result(kind, case, "differs" if diffs else "match", "; ".join(diffs), notes)


def is_seven_two(expected_path):
    """Whether libvirt's expectation is the one for QEMU 7.2 (kept where latest has none)."""
    return expected_path.name.endswith(".x86_64-7.2.0.args")


def check_argv_case(corpus, case):
    return check_case("argv", corpus, case, out_of_scope=OUT_OF_SCOPE, stricter=STRICTER,
                      expectation=argv_expectation, convert=virtnet_network_argv, compare=compare_network_argv)


def compare_network_argv(corpus, case, made, expected_path, notes):
    domain, argv = made
    if is_seven_two(expected_path):
        notes.append("QEMU 7.2 expectation")
    kvm = domain.type == "kvm"
    theirs = normalise(network_options(args_file_tokens(expected_path.read_text())),
                       libvirt_side=True, kvm=kvm, notes=notes)
    ours = normalise(network_options(argv), libvirt_side=False, kvm=kvm, notes=notes)
    return compare_options(theirs, ours)


# -- canonical XML ----------------------------------------------------------------------------------

def _interfaces(root):
    devices = root.find("devices")
    return [] if devices is None else devices.findall("interface")


def canonical_lines(element, depth=0):
    """An element as indented lines: attributes sorted, no comments, whitespace-only text dropped."""
    attrs = "".join(f" {k}='{v}'" for k, v in sorted(element.attrib.items()))
    text = (element.text or "").strip()
    children = [c for c in element if isinstance(c.tag, str)]
    pad = "  " * depth
    if not children:
        return [f"{pad}<{element.tag}{attrs}>{text}</{element.tag}>" if text else f"{pad}<{element.tag}{attrs}/>"]
    lines = [f"{pad}<{element.tag}{attrs}>" + text]
    for child in children:
        lines += canonical_lines(child, depth + 1)
    return lines + [f"{pad}</{element.tag}>"]


def _parse(data):
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True)
    return etree.fromstring(data, parser)


def _address_text(element):
    addr = element.find("address")
    if addr is None:
        return "none"
    return ",".join(f"{k}={addr.get(k)}" for k in ("type", "bus", "slot", "function") if addr.get(k) is not None)


def _drop(element, tag):
    node = element.find(tag)
    if node is not None:
        element.remove(node)


def compare_interfaces(source_root, libvirt_root, virtnet_root):
    """(differences, notes) between the <interface> elements of libvirt's and virtnet's output."""
    inputs, theirs, ours = (_interfaces(r) for r in (source_root, libvirt_root, virtnet_root))
    diffs, notes = [], []
    if len(theirs) != len(ours):
        diffs.append(f"{len(ours)} interfaces (libvirt {len(theirs)})")
    for index, (src, a, b) in enumerate(zip(inputs, theirs, ours)):
        if src.find("address") is None:
            if _address_text(a) != _address_text(b):
                notes.append(f"interface {index}: generated address {_address_text(b)} (libvirt {_address_text(a)})")
            _drop(a, "address")
            _drop(b, "address")
        if src.find("mac") is None:
            for element in (a, b):
                mac = element.find("mac")
                if mac is not None:
                    mac.set("address", "<generated>")
        changed = changed_lines(canonical_lines(a), canonical_lines(b))
        if changed:
            theirs_only = "".join(line[1:].strip() for line in changed if line[0] == "-")
            ours_only = "".join(line[1:].strip() for line in changed if line[0] == "+")
            parts = ([f"libvirt has {theirs_only}"] if theirs_only else []) + (
                [f"virtnet has {ours_only}"] if ours_only else [])
            diffs.append(f"interface {index}: " + ", ".join(parts))
    return diffs, notes


def check_xml_case(corpus, case):
    return check_case("xml", corpus, case, out_of_scope=OUT_OF_SCOPE, stricter=STRICTER,
                      expectation=canonical_xml_expectation, convert=virtnet_canonical_xml,
                      compare=compare_canonical_xml)


def canonical_xml_expectation(corpus, case):
    return Path(corpus) / "xml2xml" / (case + ".x86_64-latest.xml"), "xml"


def compare_canonical_xml(corpus, case, ours, expected_path, notes):
    source = Path(corpus) / "xml2argv" / (case + ".xml")
    diffs, found = compare_interfaces(_parse(source.read_bytes()), _parse(expected_path.read_bytes()),
                                      _parse(ours.encode()))
    notes += found
    return diffs


# -- guest cases: libvirt's domain/ corpus, the whole command line ----------------------------------

# Options that say nothing about the guest virtnet builds (libvirt's daemon plumbing and defaults
# virtnet leaves to QEMU): never compared.
GUEST_IGNORED = frozenset({"-name", "-S", "-uuid", "-display", "-no-user-config", "-nodefaults", "-mon",
                           "-overcommit", "-sandbox", "-msg", "-audiodev", "-add-fd", "-no-shutdown",
                           "-watchdog-action"})
GUEST_FLAGS = frozenset({"-S", "-no-user-config", "-nodefaults", "-no-shutdown", "-no-reboot", "-no-acpi",
                         "-no-hpet", "-enable-kvm"})
# libvirt's environment for every QEMU it runs (its test mock's values): not the domain's.
LIBVIRT_ENV = frozenset({"LC_ALL", "PATH", "HOME", "USER", "LOGNAME", "XDG_DATA_HOME", "XDG_CACHE_HOME",
                         "XDG_CONFIG_HOME"})
# -device drivers of disks, their controllers, USB and video: the storage and display parts, compared
# by their own owners (virtnet.qemu.storage) or not rendered; listed in the detail, not compared.
OTHER_AREA_DRIVERS = ("ide-", "scsi-", "virtio-blk", "virtio-scsi", "lsi", "megasas", "mptsas", "pvscsi", "ahci",
                      "pcie-root-port", "pci-bridge", "pcie-pci-bridge", "floppy", "piix3-usb", "qemu-xhci",
                      "nec-usb", "usb-", "ich9-", "i6300esb", "VGA", "qxl", "cirrus", "virtio-vga", "virtio-gpu",
                      "bochs", "isa-parallel", "pvpanic", "intel-iommu", "vhost-", "isa-debugcon", "virtio-keyboard",
                      "virtio-mouse", "virtio-tablet", "virtio-input", "virtio-9p", "usb-tablet")
# Options of elements virtnet reports as not rendered (a <filesystem>, qemu:deprecation's -compat).
OTHER_AREA_OPTIONS = frozenset({"-fsdev", "-compat", "-parallel"})
GUEST_OUT_OF_SCOPE = {
    "aarch64-virt-virtio": "an aarch64 guest (virt machine, PL011 console); virtnet builds x86 guests",
    "launch-security-sev-direct": "AMD SEV launch security (-object sev-guest, kernel hashes); virtnet renders "
                                  "no <launchSecurity>",
    "cpu-host-model-kvm": "host-model under KVM is the host's CPU as libvirt probed it (EPYC-Rome on its test "
                          "machine); virtnet, which probes nothing, gives QEMU -cpu host",
    "firmware-auto-efi": "<os firmware='efi'> makes libvirt pick firmware from the host's descriptors; virtnet "
                         "needs <loader> and reports the attribute as not rendered",
    "firmware-auto-efi-nvram-path": "<os firmware='efi'>: firmware autoselection (as firmware-auto-efi)",
    "hotplug-base": "a base for libvirt's hot-plug tests; its devices are virtio-scsi and virtio-serial controllers "
                    "only, compared elsewhere",
    "clock-variable": "offset='variable' sets the RTC from the time of start; virtnet's command line does not "
                      "depend on when it is built: base=utc, the adjustment reported as not rendered",
}
GUEST_STRICTER = {
    "chardev-backends": "vc, stdio, spicevmc, qemu-vdagent, dbus and spiceport channels need a display or a "
                        "terminal QEMU does not have under virtnet (stdin is /dev/null): refused at validation; "
                        "TLS on tcp chardevs is not supported",
    "q35-virt-manager-basic": "its spicevmc channel needs SPICE graphics, which virtnet does not render: refused",
}


def guest_cases(corpus):
    base = Path(corpus) / "domain"
    if not base.is_dir():
        return []
    names = sorted(p.name[:-4] for p in base.glob("*.xml") if p.name.count(".") == 1)
    return [n for n in names if guest_expectation(corpus, n) is not None]


def guest_expectation(corpus, case):
    base = Path(corpus) / "domain"
    for suffix, kind in ((".x86_64-7.2.0.args", "args"), (".x86_64-latest.args", "args"),
                         (".aarch64-latest.args", "args"), (".x86_64-latest.err", "err")):
        if (base / (case + suffix)).exists():
            return base / (case + suffix), kind
    return None


def split_command(tokens):
    """(environment {name: value}, [(option, value or None)]) of a whole command line."""
    env, i = {}, 0
    while i < len(tokens) and "=" in tokens[i] and not tokens[i].startswith("/"):
        name, _, value = tokens[i].partition("=")
        env[name] = value
        i += 1
    options, i = [], i + 1  # the emulator
    while i < len(tokens):
        word = tokens[i]
        if word in GUEST_FLAGS or i + 1 >= len(tokens):
            options.append((word, None))
            i += 1
        else:
            options.append((word, tokens[i + 1]))
            i += 2
    return env, options


def _keyval(value, lead):
    props = {}
    for n, item in enumerate(split_keyval(value)):
        key, sep, val = item.partition("=")
        if n == 0 and not sep:
            props[lead] = key
        else:
            props[key] = val if sep else "on"
    return props


def guest_options(tokens, domain, *, libvirt_side, seven_two, notes):
    """{key: props} of the options a guest comparison looks at, normalised (see GUEST_NORMALISATIONS),
    plus [option names] left to other parts of virtnet (storage, display)."""
    env, options = split_command(tokens)
    custom = [arg.value or "" for arg in domain.qemu_commandline.args] if domain.qemu_commandline is not None else []
    keyed, elsewhere = {}, []
    env = {k: v for k, v in env.items() if k not in LIBVIRT_ENV}
    if env:
        keyed["environment"] = env
    words = [w for option, value in options for w in ((option,) if value is None else (option, value))]
    if custom:  # <qemu:commandline> arguments: compared as a run of words, then left out of the options
        for start in range(len(words) - len(custom) + 1):
            if words[start:start + len(custom)] == custom:
                keyed["qemu:commandline"] = {"args": " ".join(custom)}
                del words[start:start + len(custom)]
                break
        env, options = split_command(["/emulator", *words])
    machine = {}
    for option, value in options:
        if option in GUEST_IGNORED:
            continue
        if option in OTHER_AREA_OPTIONS:
            elsewhere.append(option)
            continue
        if option == "-machine":
            machine.update(_keyval(value, "type"))
        elif option == "-no-acpi":
            machine["acpi"] = "off"
        elif option == "-no-hpet":
            machine["hpet"] = "off"
        elif option == "-no-reboot":
            keyed["-action"] = {"reboot": "shutdown"}
        elif option in ("-device", "-object", "-netdev", "-chardev", "-blockdev"):
            props = parse_option(option, value) if option != "-object" else (
                {k: _scalar(v) for k, v in flatten(json.loads(value))} if value.startswith("{") else _keyval(value, "qom-type"))
            ident = props.get("id") or props.get("node-name") or "?"
            if option == "-chardev" and ident == "charmonitor":
                continue
            if option == "-object" and props.get("qom-type") in ("secret", "memory-backend-ram",
                                                                 "memory-backend-memfd"):
                continue
            if option == "-blockdev" and not ident.startswith("libvirt-pflash"):
                elsewhere.append(option)
                continue
            if option == "-device" and (props.get("driver", "").startswith(OTHER_AREA_DRIVERS) or "drive" in props):
                elsewhere.append(f"-device {props.get('driver')}")
                continue
            keyed[f"{option} {ident}"] = props
        elif option == "-global":
            if value.startswith("driver="):
                props = _keyval(value, "")
                keyed[f"-global {props.get('driver')}.{props.get('property')}"] = {"value": props.get("value")}
            else:
                name, _, val = value.partition("=")
                if name.startswith(("isa-fdc.", "ICH9-LPC.noreboot")):
                    elsewhere.append(f"-global {name}")
                    continue
                keyed[f"-global {name}"] = {"value": val}
        elif option == "-cpu":
            keyed["-cpu"] = _keyval(value, "model")
        elif option in ("-smp", "-boot", "-rtc", "-m", "-action"):
            keyed[option] = {**keyed.get(option, {}), **_keyval(value, "value")}
        else:
            keyed[option] = {"value": value}
    machine.pop("memory-backend", None)  # libvirt always backs RAM with an object; virtnet only shared RAM
    if libvirt_side and seven_two and "acpi" not in machine:
        machine["acpi"] = "on"  # libvirt for QEMU 7.2: -no-acpi when off, nothing when on
    keyed["-machine"] = machine
    _normalise_guest(keyed, domain, libvirt_side, notes)
    return keyed, elsewhere


def _normalise_guest(keyed, domain, libvirt_side, notes):
    machine = keyed["-machine"]
    alias = {"pc": "pc-i440fx-", "q35": "pc-q35-"}.get(domain.machine or "pc")
    if libvirt_side and alias and machine.get("type", "").startswith(alias):
        machine["type"] = domain.machine or "pc"  # libvirt resolves the alias to QEMU's versioned type
        _note(notes, "machine alias: libvirt's versioned type read as the XML's")
    if "-cpu" not in keyed:
        keyed["-cpu"] = {"model": "qemu64"}  # QEMU's default model for pc and q35, libvirt's too
    if "-rtc" not in keyed:
        keyed["-rtc"] = {"base": "utc"}  # QEMU's default
    if libvirt_side and domain.on_reboot == "destroy" and "-action" not in keyed:
        keyed["-action"] = {"reboot": "shutdown"}  # libvirt: QMP set-action once QEMU runs
        _note(notes, "on_reboot=destroy: libvirt's QMP set-action read as -action reboot=shutdown")
    for key, props in keyed.items():
        if key.startswith("-chardev "):
            if props.get("server") == "on" and ("fd" in props or "path" in props):
                props.pop("fd", None)
                props["path"] = "<listening socket>"
            for path_key, append_key in (("path", "append"), ("logfile", "logappend")):
                if props.get(path_key, "").startswith("/dev/fdset/") or (
                        not libvirt_side and path_key in props and props.get("backend") == "file" or
                        not libvirt_side and path_key == "logfile" and path_key in props):
                    props[path_key] = "<file>"
                    props.pop(append_key, None)
        if key.startswith("-device ") and not libvirt_side and "guest-stats-polling-interval" in props:
            del props["guest-stats-polling-interval"]
            _note(notes, "balloon stats period: libvirt sets it over QMP, virtnet on -device")
        if key == "-blockdev libvirt-pflash1-storage" and domain.os is not None and (
                domain.os.nvram is None or not domain.os.nvram.text):
            props["filename"] = "<per-domain NVRAM>"  # libvirt's nvram dir, virtnet's state dir


def check_guest_case(corpus, case):
    return check_case("guest", corpus, case, out_of_scope=GUEST_OUT_OF_SCOPE, stricter=GUEST_STRICTER,
                      expectation=guest_expectation, convert=virtnet_guest_command, compare=compare_guest_command)


def compare_guest_command(corpus, case, made, expected_path, notes):
    domain, command = made
    seven_two = is_seven_two(expected_path)
    if seven_two:
        notes.append("QEMU 7.2 expectation")
    ours_tokens = [f"{k}={v}" for k, v in command.env.items()] + command.argv
    theirs, elsewhere = guest_options(args_file_tokens(expected_path.read_text()), domain, libvirt_side=True,
                                      seven_two=seven_two, notes=notes)
    ours, _ = guest_options(ours_tokens, domain, libvirt_side=False, seven_two=seven_two, notes=notes)
    # virtnet's own view of what it drops (disks, display devices, ...) decides what else is not compared.
    if elsewhere:
        notes.append("not compared: " + ", ".join(sorted(set(elsewhere))))
    return [d.replace("-machine -machine", "-machine").replace("-cpu -cpu", "-cpu")
            for d in compare_options(_as_options(theirs), _as_options(ours))]


def _as_options(keyed):
    """compare_options' (option, props) form: the option, and the rest of the key as the id."""
    out = []
    for key, props in keyed.items():
        option, _, ident = key.partition(" ")
        out.append((option, {**props, "id": ident or option}))
    return out


def virtnet_guest_command(corpus, case, notes):
    """(domain, command): virtnet's whole command line (argv and environment) for domain/CASE.xml,
    as xml2argv builds it."""
    from virtnet.conf.load import load_file
    from virtnet.qemu.argv import ArgvOptions, build_command
    from virtnet.runpaths import DomainPaths

    domain = load_file(str(Path(corpus) / "domain" / (case + ".xml"))).domain
    options = ArgvOptions(host_caps=HOST_CAPS)
    return domain, build_command(domain, DomainPaths(RUNTIME_DIR, domain.name), options)


# -- storage cases: libvirt's domain/ corpus, disks, their controllers and the PCI layout -----------

# The domain/ cases with disks or controllers, or on q35 (root ports): their disk and controller
# options and elements, compared here (the guest comparison above leaves them to this one).
STORAGE_DRIVERS = ("ide-hd", "ide-cd", "scsi-hd", "scsi-cd", "scsi-block", "virtio-blk-pci", "floppy",
                   "usb-storage", "lsi", "megasas", "mptsas1068", "pvscsi", "virtio-scsi-pci", "spapr-vscsi", "ahci",
                   "pcie-root-port", "ioh3420", "pci-bridge", "pcie-pci-bridge", "i82801b11-bridge", "x3130-upstream",
                   "xio3130-downstream", "pxb", "pxb-pcie")
PCI_CONTROLLER_DRIVERS = ("pcie-root-port", "ioh3420", "pci-bridge", "pcie-pci-bridge", "i82801b11-bridge",
                          "x3130-upstream", "xio3130-downstream", "pxb", "pxb-pcie")
PLACEMENT = ("bus", "addr", "multifunction")
# Devices of a domain/ input that neither the storage comparison nor the PCI layout of what virtnet
# renders depends on: left out of the input before virtnet reads it, so that what other parts of
# virtnet refuse (a spicevmc channel, say) does not hide how its disks compare.
STORAGE_KEPT_DEVICES = ("emulator", "disk", "controller", "interface", "video", "memballoon", "rng")
STORAGE_OUT_OF_SCOPE = {
    "aarch64-virt-virtio": "an aarch64 guest (virt machine, virtio-mmio); virtnet builds x86 guests",
    "firmware-auto-efi-nvram-path": "<os firmware='efi'> with an <nvram> but no <loader>: refused by virtnet's "
                                    "firmware rules before its disks are looked at (firmware autoselection is out "
                                    "of scope, see the guest table)",
}
HOST_CDROM_NAMES = re.compile(r"/dev/sr\d+")
STORAGE_STRICTER = {
    name: "<address type='drive' unit='2'> on an IDE bus: QEMU 7.2 refuses libvirt's line ('Can't create IDE unit 2, "
          "bus supports only 2 units'); virtnet refuses the XML"
    for name in ("disk-blockio", "disk-serial", "disk-source-pool")
}


def storage_cases(corpus):
    """The domain/ cases with a <disk> or <controller>, or on q35."""
    found = []
    for case in guest_cases(corpus):
        root = _parse((Path(corpus) / "domain" / (case + ".xml")).read_bytes())
        machine = root.find("os/type")
        q35 = machine is not None and "q35" in (machine.get("machine") or "")
        if q35 or root.find("devices/disk") is not None or root.find("devices/controller") is not None:
            found.append(case)
    return found


def storage_input(corpus, case):
    """The domain/ input as virtnet reads it for this comparison (see STORAGE_KEPT_DEVICES), as bytes."""
    root = _parse((Path(corpus) / "domain" / (case + ".xml")).read_bytes())
    devices = root.find("devices")
    for child in list(devices if devices is not None else []):
        if child.tag not in STORAGE_KEPT_DEVICES:
            devices.remove(child)
    return etree.tostring(root)


def _storage_domain(corpus, case, notes=None):
    """virtnet's domain for the case: the input as it is, or, when virtnet refuses something that
    is not storage (a spicevmc channel, say), the input without the devices STORAGE_KEPT_DEVICES
    leaves out (a note says so); storage refusals stand."""
    from virtnet.conf.load import load_file, load_text

    try:
        return load_file(str(Path(corpus) / "domain" / (case + ".xml"))).domain
    except VirtnetError as e:
        reduced = load_text(storage_input(corpus, case).decode(), f"{case}.xml").domain
        if notes is not None:
            notes.append(f"read without its other devices (virtnet refuses {_message(e)})")
        return reduced


def storage_options(tokens):
    """{key: props} of the disk and controller options of a command line: each -blockdev of a disk
    (not the firmware's) by node name, each disk and controller -device by id, each -drive."""
    keyed = {}
    words = [(tok, tokens[i + 1]) for i, tok in enumerate(tokens[:-1]) if tok in ("-blockdev", "-device", "-drive")]
    for option, value in words:
        if option == "-drive":
            keyed[f"-drive {value}"] = _keyval(value, "file")
            continue
        props = parse_option(option, value)
        if option == "-blockdev":
            node = props.get("node-name", "?")
            if node.startswith("libvirt-") and not node.startswith("libvirt-pflash"):
                keyed[f"-blockdev {node}"] = props
        elif props.get("driver", "").startswith(STORAGE_DRIVERS) or "drive" in props:
            keyed[f"-device {props.get('id', '?')}"] = props
    return keyed


def _with_raw_format_layer(keyed, notes):
    """libvirt for QEMU ≥ 9.1 leaves the raw format node out; for QEMU 7.2 (its .x86_64-7.2.0
    expectations) it writes one, as virtnet does: the protocol node opens the image auto-read-only
    with discard='unmap', and read-only, discard and detect-zeroes go to the raw format node."""
    formats = {props.get("file") for key, props in keyed.items() if key.startswith("-blockdev ") and "file" in props}
    for key in [k for k in keyed if k.startswith("-blockdev ") and k.endswith("-storage")]:
        storage = keyed[key]
        node = storage["node-name"]
        if node in formats:
            continue
        fmt_node = node[: -len("storage")] + "format"
        fmt = {"node-name": fmt_node, "read-only": storage.pop("read-only", "off")}
        for prop in ("discard", "detect-zeroes"):
            if prop in storage:
                fmt[prop] = storage.pop(prop)
        cache = {k: v for k, v in storage.items() if k.startswith("cache.")}
        fmt.update(cache)
        fmt.update({"driver": "raw", "file": node})
        storage.update({"auto-read-only": "on", "discard": "unmap"})
        keyed[f"-blockdev {fmt_node}"] = fmt
        for props in keyed.values():
            if props.get("drive") == node:
                props["drive"] = fmt_node
        _note(notes, "raw format node: libvirt's layout for QEMU 7.2")


def _input_addresses(corpus, case):
    """The input's own PCI addresses: target dev of disks, (type, index) of controllers, that have one."""
    root = _parse((Path(corpus) / "domain" / (case + ".xml")).read_bytes())
    disks = {d.find("target").get("dev") for d in root.iterfind("devices/disk")
             if d.find("address") is not None and d.find("target") is not None}
    controllers = {(c.get("type"), c.get("index")) for c in root.iterfind("devices/controller")
                   if c.find("address") is not None}
    explicit_pci = {c.get("index") for c in root.iterfind("devices/controller") if c.get("type") == "pci"}
    return disks, controllers, explicit_pci


def check_storage_argv_case(corpus, case):
    return check_case("disk", corpus, case, out_of_scope=STORAGE_OUT_OF_SCOPE, stricter=STORAGE_STRICTER,
                      expectation=guest_expectation, convert=virtnet_storage_argv, compare=compare_storage_argv)


def virtnet_storage_argv(corpus, case, notes):
    from virtnet.qemu.argv import ArgvOptions, build_argv
    from virtnet.runpaths import DomainPaths

    domain = _storage_domain(corpus, case, notes)
    return domain, build_argv(domain, DomainPaths(RUNTIME_DIR, domain.name), ArgvOptions(host_caps=HOST_CAPS))


def compare_storage_argv(corpus, case, made, expected_path, notes):
    domain, argv = made
    theirs = storage_options(args_file_tokens(expected_path.read_text()))
    ours = storage_options(argv)
    if not is_seven_two(expected_path):
        _with_raw_format_layer(theirs, notes)
    from virtnet.qemu import storage

    # A CD-ROM's block device: libvirt asks the device whether it is the host's CD-ROM drive (its
    # test mock says yes for /dev/cdrom only); virtnet goes by Linux's names, /dev/cdrom and /dev/srN.
    for props in ours.values():
        if props.get("driver") == "host_cdrom" and HOST_CDROM_NAMES.fullmatch(props.get("filename", "")):
            props["driver"] = "host_device"
            _note(notes, "host_cdrom for /dev/srN (libvirt's test mock knows only /dev/cdrom as a CD-ROM drive)")
    _drop_overrides(corpus, case, theirs, notes)
    # Disks and controllers virtnet does not render (it says so): their options are not compared.
    dropped = {}
    for controller in domain.controllers:
        if controller.alias and not storage.controller_rendered(domain, controller):
            if theirs.pop(f"-device {controller.alias}", None) is not None:
                dropped[controller.alias] = f"<controller type='{controller.type}' model='{controller.model}'>"
    for disk in domain.disks:
        why = storage.why_unrendered(domain, disk)
        if why is not None and disk.ids is not None:
            dropped[disk.ids.alias] = why
            nodes = {f"-blockdev {disk.ids.storage_node}", f"-blockdev {disk.ids.format_node}"}
            for key in [k for k, p in theirs.items() if k == f"-device {disk.ids.alias}" or k in nodes]:
                del theirs[key]
    for key in [k for k in theirs if k.startswith("-drive ")]:
        del theirs[key]
        dropped.setdefault(key, "a legacy -drive")
    if dropped:
        notes.append("not rendered: " + ", ".join(f"{k} ({v})" for k, v in dropped.items()))
    _compare_placement(corpus, case, domain, theirs, ours, notes)
    return compare_options(_as_options(theirs), _as_options(ours))


def _drop_overrides(corpus, case, theirs, notes):
    """<qemu:override> sets properties of a device's -device: virtnet does not render it (and says
    so), so those properties are not compared."""
    root = _parse((Path(corpus) / "domain" / (case + ".xml")).read_bytes())
    ns = "{http://libvirt.org/schemas/domain/qemu/1.0}"
    for device in root.iter(ns + "device"):
        props = theirs.get(f"-device {device.get('alias')}")
        for prop in device.iter(ns + "property"):
            if props is not None and props.pop(prop.get("name"), None) is not None:
                _note(notes, f"<qemu:override> of {device.get('alias')} not rendered")


def _compare_placement(corpus, case, domain, theirs, ours, notes):
    """Where the input gave no address, the PCI slot is libvirt's and virtnet's own choice among all
    the devices each renders (libvirt renders USB, video, input, ... too): a different slot is a
    note. So are the root ports libvirt or virtnet added for them (compared by count)."""
    disks, controllers, explicit_pci = _input_addresses(corpus, case)
    explicit_ids = {d.ids.alias for d in domain.disks if d.ids is not None and d.target_dev in disks}
    explicit_ids |= {c.alias for c in domain.controllers if (c.type, str(c.index)) in controllers}
    added = {}
    for side, keyed in (("libvirt", theirs), ("virtnet", ours)):
        ports = [k for k, p in keyed.items() if p.get("driver") in PCI_CONTROLLER_DRIVERS
                 and k.split(" ", 1)[1].removeprefix("pci.") not in explicit_pci]
        added[side] = len(ports)
        for key in ports:
            del keyed[key]
    if added["libvirt"] != added["virtnet"]:
        notes.append(f"PCI controllers added: libvirt {added['libvirt']}, virtnet {added['virtnet']} (libvirt also "
                     "places USB, video, input, filesystem devices)")
    moved = []
    for key, props in theirs.items():
        mine = ours.get(key)
        ident = key.split(" ", 1)[1]
        if mine is None or ident in explicit_ids or not key.startswith("-device "):
            continue
        a, b = tuple(props.get(p) for p in PLACEMENT), tuple(mine.get(p) for p in PLACEMENT)
        if a != b:
            moved.append(f"{ident} at {b[0]} {b[1]} (libvirt {a[0]} {a[1]})")
        for p in PLACEMENT:
            props.pop(p, None)
            mine.pop(p, None)
        if props.get("driver") in ("pcie-root-port", "ioh3420") and a != b:
            props.pop("port", None)
            mine.pop("port", None)
    if moved:
        notes.append("generated PCI addresses differ: " + ", ".join(moved))


def _storage_elements(root):
    devices = root.find("devices")
    if devices is None:
        return [], {}
    disks = devices.findall("disk")
    controllers = {(c.get("type"), c.get("index")): c for c in devices.findall("controller")
                   if c.get("type") in ("pci", "scsi", "sata", "ide")}
    return disks, controllers


def check_storage_xml_case(corpus, case):
    """The disk-xml Result of CASE, or None where libvirt has no canonical XML for it."""
    expected, _ = storage_xml_expectation(corpus, case)
    if case not in STORAGE_OUT_OF_SCOPE and not expected.exists():
        return None
    return check_case("disk-xml", corpus, case, out_of_scope=STORAGE_OUT_OF_SCOPE, stricter=STORAGE_STRICTER,
                      expectation=storage_xml_expectation, convert=virtnet_storage_xml, compare=compare_storage_xml)


def storage_xml_expectation(corpus, case):
    return Path(corpus) / "domain" / (case + ".x86_64-latest.xml"), "xml"


def virtnet_storage_xml(corpus, case, notes):
    from virtnet.conf.format import format_domain

    return format_domain(_storage_domain(corpus, case, notes))


def compare_storage_xml(corpus, case, ours, expected, notes):
    source = _parse((Path(corpus) / "domain" / (case + ".xml")).read_bytes())
    disks_in, controllers_in = _storage_elements(source)
    their_disks, their_controllers = _storage_elements(_parse(expected.read_bytes()))
    our_disks, our_controllers = _storage_elements(_parse(ours.encode()))
    diffs = []
    if len(their_disks) != len(our_disks):
        diffs.append(f"{len(our_disks)} disks (libvirt {len(their_disks)})")
    given = {d.find("target").get("dev"): d for d in disks_in if d.find("target") is not None}
    for a, b in zip(their_disks, our_disks):
        dev = a.find("target").get("dev") if a.find("target") is not None else "?"
        src = given.get(dev)
        if src is not None and src.find("address") is None and (a.find("address") is None or
                                                                a.find("address").get("type") == "pci"):
            if _address_text(a) != _address_text(b):
                notes.append(f"disk {dev}: generated address {_address_text(b)} (libvirt {_address_text(a)})")
            _drop(a, "address")
            _drop(b, "address")
        diffs += _element_diff(f"disk {dev}", a, b)
    given_controllers = {(c.get("type"), c.get("index") or "0"): c for c in controllers_in.values()}
    for key in sorted(set(their_controllers) | set(our_controllers)):
        a, b = their_controllers.get(key), our_controllers.get(key)
        label = f"controller {key[0]} {key[1]}"
        if a is None or b is None:
            notes.append(f"{label}: only {'virtnet' if a is None else 'libvirt'} adds it")
            continue
        src = given_controllers.get(key)
        if src is None or src.find("address") is None:
            if _address_text(a) != _address_text(b):
                notes.append(f"{label}: generated address {_address_text(b)} (libvirt {_address_text(a)})")
            for element in (a, b):
                _drop(element, "address")
                target = element.find("target")
                if target is not None and (src is None or src.find("target") is None
                                           or src.find("target").get("port") is None):
                    target.attrib.pop("port", None)  # a root port's port is its slot and function
                    if src is None:
                        target.attrib.pop("chassis", None)
        diffs += _element_diff(label, a, b)
    return diffs


def changed_lines(theirs, ours):
    """The lines of a unified diff from THEIRS to OURS that differ (`-` theirs, `+` ours)."""
    return [line for line in difflib.unified_diff(theirs, ours, lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def _element_diff(label, a, b):
    changed = changed_lines(canonical_lines(a), canonical_lines(b))
    if not changed:
        return []
    theirs_only = "".join(line[1:].strip() for line in changed if line[0] == "-")
    ours_only = "".join(line[1:].strip() for line in changed if line[0] == "+")
    parts = ([f"libvirt has {theirs_only}"] if theirs_only else []) + ([f"virtnet has {ours_only}"] if ours_only else [])
    return [f"{label}: " + ", ".join(parts)]


def storage_results(corpus):
    results = []
    for case in storage_cases(corpus):
        results.append(check_storage_argv_case(corpus, case))
        xml = check_storage_xml_case(corpus, case)
        if xml is not None:
            results.append(xml)
    return results


# -- the whole corpus, the table and the baseline ----------------------------------------------------

def run_corpus(corpus):
    results = [check_argv_case(corpus, c) for c in argv_cases(corpus)]
    results += [check_xml_case(corpus, c) for c in xml_cases(corpus)]
    results += [check_guest_case(corpus, c) for c in guest_cases(corpus)]
    return results + storage_results(corpus)


# The kinds of the domain corpus, with their labels. The guest line first: the net corpus's two
# lines stay the last ones of the table. Kinds marked optional get a line only when they have cases.
DOMAIN_KINDS = (("guest", "guest", True), ("disk", "disk xml2argv", True), ("disk-xml", "disk xml2xml", True),
                ("argv", "xml2argv", False), ("xml", "xml2xml", False))


def totals(results, kinds=DOMAIN_KINDS):
    lines = []
    for kind, label, optional in kinds:
        if optional and not any(r.kind == kind for r in results):
            continue
        mine = [r for r in results if r.kind == kind]
        counts = Counter(r.status for r in mine)
        in_scope = [r for r in mine if r.status != "out-of-scope"]
        agree = sum(1 for r in in_scope if r.status in GOOD)
        stricter = counts["virtnet-stricter"]
        parts = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
        lines.append(f"{label}: {len(mine)} cases: {parts}; in scope: {agree}/{len(in_scope)} agree with "
                     f"libvirt" + (f", {stricter} stricter on purpose" if stricter else ""))
    return lines


def format_table(results, kinds=DOMAIN_KINDS, kind_width=5):
    width = max([len(r.case) for r in results] + [4])
    lines = [f"{'kind':<{kind_width}} {'case':<{width}} {'status':<16} detail"]
    for r in results:
        detail = r.detail + (f" [{'; '.join(r.notes)}]" if r.notes else "")
        lines.append(f"{r.kind:<{kind_width}} {r.case:<{width}} {r.status:<16} {detail}".rstrip())
    return "\n".join(lines + [""] + totals(results, kinds)) + "\n"


TSV_HEADER = """\
# virtnet against libvirt's test corpus (net cases: argv, xml; domain/ cases: guest): kind, case, status
# (see tools/conformance.py).
# tests/test_conformance.py fails when a case moves to any status but match or both-reject.
# Re-record after an intended change: python tools/conformance.py --tsv > tests/conformance_baseline.tsv
"""


def format_tsv(results):
    return TSV_HEADER + "".join(f"{r.kind}\t{r.case}\t{r.status}\n" for r in results)


def read_baseline(path):
    """{(kind, case): status} from a TSV written by format_tsv ('#' lines are comments)."""
    baseline = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[2] not in STATUSES:
            raise UsageError(f"{path}:{number}: expected 'kind<TAB>case<TAB>status', got {line!r}")
        baseline[(parts[0], parts[1])] = parts[2]
    return baseline


def regressions(results, baseline):
    """Problems against BASELINE: a case whose status changed to anything but an agreeing one, a
    case the baseline does not know, and a baseline case that is gone. Improvements pass."""
    problems, seen = [], set()
    for r in results:
        key = (r.kind, r.case)
        seen.add(key)
        before = baseline.get(key)
        if before is None:
            problems.append(f"{r.kind} {r.case}: not in the baseline (now {r.status})")
        elif r.status != before and r.status not in GOOD:
            problems.append(f"{r.kind} {r.case}: {before} -> {r.status}: {r.detail}")
    for kind, case in sorted(set(baseline) - seen):
        problems.append(f"{kind} {case}: in the baseline but no longer in the corpus")
    return problems


def report(directory=None, *, tsv=False, baseline=None, out=None):
    """Run the corpus and write the table (or the TSV) to OUT. Returns the exit status."""
    results = run_corpus(find_corpus(directory))
    return write_report(results, format_tsv(results) if tsv else format_table(results), baseline, out)


def write_report(results, text, baseline=None, out=None):
    """Write TEXT (the table or TSV of RESULTS); with BASELINE, also the regressions from it (exit 1)."""
    out = out or sys.stdout
    out.write(text)
    if baseline:
        problems = regressions(results, read_baseline(baseline))
        if problems:
            out.write(f"\nregressions from {baseline}:\n" + "".join(f"  {p}\n" for p in problems))
            return 1
        out.write(f"no regressions from {os.fspath(baseline)}\n")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="Run virtnet on libvirt's net-* test inputs and compare with libvirt's "
        "expected command lines, errors and XML; print a table and totals.")
    parser.add_argument("dir", metavar="DIR", nargs="?",
                        help="the corpus (default: ../shared/conformance/libvirt from the repository or the cwd)")
    parser.add_argument("--baseline", metavar="FILE", help="also exit 1 on a regression from this case/status TSV")
    parser.add_argument("--tsv", action="store_true", help="print kind, case and status as a baseline TSV")
    return parser


def main(argv=None):
    """The command line. Returns the exit status (0 ok, 1 regression or failure, 2 usage)."""
    return run_main(build_parser(), report, argv)


def run_main(parser, report, argv):
    """A corpus tool's command line: PARSER's arguments (dir, --baseline, --tsv) to REPORT, with
    one-line errors and the exit statuses of main."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code
    try:
        return report(args.dir, tsv=args.tsv, baseline=args.baseline)
    except VirtnetError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"{parser.prog}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
