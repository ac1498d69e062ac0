"""libvirt's own network test corpus as a judge of virtnet.

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

Statuses: match · differs (which properties) · virtnet-rejects (its message) · both-reject
(libvirt expects an error and virtnet refuses too) · virtnet-stricter (virtnet refuses an input on
purpose, see STRICTER) · virtnet-accepts (libvirt expects an error, virtnet does not) ·
virtnet-crashes (an unexpected exception) · out-of-scope (see OUT_OF_SCOPE).
"""

import argparse
import difflib
import json
import os
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

def find_corpus(explicit=None):
    """The corpus directory: EXPLICIT, else DEFAULT_CORPUS next to the repository or the cwd."""
    if explicit:
        path = Path(explicit)
        if not (path / "xml2argv").is_dir():
            raise UsageError(f"{explicit}: not a libvirt corpus (no xml2argv/ folder inside)")
        return path
    candidates = [REPO / DEFAULT_CORPUS, Path.cwd() / DEFAULT_CORPUS]
    for path in candidates:
        if (path / "xml2argv").is_dir():
            return path
    raise UsageError("libvirt's corpus was not found in " + " or ".join(str(p) for p in candidates)
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


def virtnet_network_argv(path):
    """virtnet's network options for a domain file, as xml2argv --network-only builds them."""
    from virtnet.conf.load import load_file
    from virtnet.qemu.argv import ArgvOptions, build_argv
    from virtnet.runpaths import DomainPaths

    domain = load_file(str(path)).domain
    options = ArgvOptions(network_only=True, host_caps=HOST_CAPS)
    return domain, build_argv(domain, DomainPaths(RUNTIME_DIR, domain.name), options)


def virtnet_canonical_xml(path):
    from virtnet.conf.format import format_domain
    from virtnet.conf.load import load_file

    return format_domain(load_file(str(path)).domain)


def _first_line(text):
    return text.strip().splitlines()[0] if text.strip() else ""


def check_argv_case(corpus, case):
    if case in OUT_OF_SCOPE:
        return Result("argv", case, "out-of-scope", OUT_OF_SCOPE[case])
    expected_path, expected_kind = argv_expectation(corpus, case)
    source = Path(corpus) / "xml2argv" / (case + ".xml")
    try:
        domain, argv = virtnet_network_argv(source)
    except VirtnetError as e:
        if expected_kind == "err":
            return Result("argv", case, "both-reject",
                          f"libvirt: {_first_line(expected_path.read_text())} | virtnet: {_message(e)}")
        if case in STRICTER:
            return Result("argv", case, "virtnet-stricter", f"{_message(e)} [{STRICTER[case]}]")
        return Result("argv", case, "virtnet-rejects", _message(e))
    except Exception as e:  # a crash is a finding of its own, reported rather than raised
        return Result("argv", case, "virtnet-crashes", f"{type(e).__name__}: {e}")
    if expected_kind == "err":
        return Result("argv", case, "virtnet-accepts", f"libvirt: {_first_line(expected_path.read_text())}")
    notes = []
    if expected_path.name.endswith(".x86_64-7.2.0.args"):
        notes.append("QEMU 7.2 expectation")
    kvm = domain.type == "kvm"
    theirs = normalise(network_options(args_file_tokens(expected_path.read_text())),
                       libvirt_side=True, kvm=kvm, notes=notes)
    ours = normalise(network_options(argv), libvirt_side=False, kvm=kvm, notes=notes)
    diffs = compare_options(theirs, ours)
    if diffs:
        return Result("argv", case, "differs", "; ".join(diffs), notes)
    return Result("argv", case, "match", "", notes)


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
        changed = [line for line in difflib.unified_diff(canonical_lines(a), canonical_lines(b), lineterm="", n=0)
                   if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        if changed:
            theirs_only = "".join(line[1:].strip() for line in changed if line[0] == "-")
            ours_only = "".join(line[1:].strip() for line in changed if line[0] == "+")
            parts = ([f"libvirt has {theirs_only}"] if theirs_only else []) + (
                [f"virtnet has {ours_only}"] if ours_only else [])
            diffs.append(f"interface {index}: " + ", ".join(parts))
    return diffs, notes


def check_xml_case(corpus, case):
    if case in OUT_OF_SCOPE:
        return Result("xml", case, "out-of-scope", OUT_OF_SCOPE[case])
    source = Path(corpus) / "xml2argv" / (case + ".xml")
    expected = Path(corpus) / "xml2xml" / (case + ".x86_64-latest.xml")
    try:
        ours = virtnet_canonical_xml(source)
    except VirtnetError as e:
        if case in STRICTER:
            return Result("xml", case, "virtnet-stricter", f"{_message(e)} [{STRICTER[case]}]")
        return Result("xml", case, "virtnet-rejects", _message(e))
    except Exception as e:
        return Result("xml", case, "virtnet-crashes", f"{type(e).__name__}: {e}")
    diffs, notes = compare_interfaces(_parse(source.read_bytes()), _parse(expected.read_bytes()),
                                      _parse(ours.encode()))
    if diffs:
        return Result("xml", case, "differs", "; ".join(diffs), notes)
    return Result("xml", case, "match", "", notes)


# -- the whole corpus, the table and the baseline ----------------------------------------------------

def run_corpus(corpus):
    results = [check_argv_case(corpus, c) for c in argv_cases(corpus)]
    return results + [check_xml_case(corpus, c) for c in xml_cases(corpus)]


def totals(results):
    lines = []
    for kind, label in (("argv", "xml2argv"), ("xml", "xml2xml")):
        mine = [r for r in results if r.kind == kind]
        counts = Counter(r.status for r in mine)
        in_scope = [r for r in mine if r.status != "out-of-scope"]
        agree = sum(1 for r in in_scope if r.status in GOOD)
        stricter = counts["virtnet-stricter"]
        parts = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
        lines.append(f"{label}: {len(mine)} cases: {parts}; in scope: {agree}/{len(in_scope)} agree with "
                     f"libvirt" + (f", {stricter} stricter on purpose" if stricter else ""))
    return lines


def format_table(results):
    width = max([len(r.case) for r in results] + [4])
    lines = [f"{'kind':<5} {'case':<{width}} {'status':<16} detail"]
    for r in results:
        detail = r.detail + (f" [{'; '.join(r.notes)}]" if r.notes else "")
        lines.append(f"{r.kind:<5} {r.case:<{width}} {r.status:<16} {detail}".rstrip())
    return "\n".join(lines + [""] + totals(results)) + "\n"


TSV_HEADER = """\
# virtnet against libvirt's net test corpus: kind, case, status (see tools/conformance.py).
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
    out = out or sys.stdout
    corpus = find_corpus(directory)
    results = run_corpus(corpus)
    out.write(format_tsv(results) if tsv else format_table(results))
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
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return e.code
    try:
        return report(args.dir, tsv=args.tsv, baseline=args.baseline)
    except VirtnetError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"{PROG}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
