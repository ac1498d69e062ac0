"""libvirt's network test corpus as a judge of virtnet's virtual networks.

    python tools/network_conformance.py [DIR] [--baseline FILE] [--tsv]   (part of: make conformance)

DIR is libvirt's `network/` corpus (default: ../shared/conformance/libvirt/network). Two kinds:

net-xml   networkxml2xmlin/NAME.xml → virtnet's canonical XML (net-dumpxml), compared with
          networkxml2xmlout/NAME.xml element by element (attribute order, whitespace and comments
          ignored; child order counts). Inputs libvirt's test expects to fail must fail.
net-conf  networkxml2confdata/NAME.xml → virtnet's dnsmasq configuration, compared line by line
          with NAME.conf (its comment lines aside), and the DHCP hosts file with NAME.hostsfile
          where libvirt has one.

Normalisation: the paths of the hosts files (dhcp-hostsfile=, addn-hosts=) are libvirt's
/var/lib/libvirt/dnsmasq/NAME.* there and virtnet's runtime directory here: compared as
placeholders. libvirt's firewall goldens (networkxml2firewalldata) are iptables/nft command
sequences for its own table; tests/test_network.py checks that each of libvirt's rules has one in
virtnet's table matching the same packets with the same verdict.

The status words, the table and the baseline rules are tools/conformance.py's.
"""

import argparse
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
for folder in (TOOLS, REPO):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import conformance  # noqa: E402  (tools/conformance.py: statuses, baseline, element lines)

from virtnet.errors import VirtnetError  # noqa: E402

PROG = "network_conformance.py"
DEFAULT_CORPUS = conformance.DEFAULT_CORPUS / "network"
Result = conformance.Result
PLACEHOLDER = "<virtnet runtime file>"

_POOL = ("a pool of host devices (macvtap private/vepa/passthrough modes, SR-IOV hostdev): virtnet runs "
         "bridged networks only")
# The one list of cases virtnet does not try to handle, with why.
OUT_OF_SCOPE = {
    "8021Qbh-net": _POOL,
    "direct-net": _POOL,
    "vepa-net": _POOL,
    "hostdev": _POOL,
    "hostdev-pf": _POOL,
    "hostdev-pf-driver-model": _POOL,
    "passthrough-pf": _POOL,
    "passthrough-address-crash": _POOL,
    "openvswitch-net": "Open vSwitch <virtualport> and portgroups: virtnet drives Linux bridges only",
}
# Inputs libvirt handles that virtnet refuses on purpose.
STRICTER = {
    "dnsmasq-options": "<dnsmasq:options> are passed to dnsmasq verbatim by libvirt; virtnet writes nothing into "
                       "dnsmasq's configuration it has not checked (the XML round trip keeps them)",
}
# libvirt's expected parse failures (DO_TEST_PARSE_ERROR in networkxml2xmltest.c).
LIBVIRT_REJECTS = ("routed-network-no-dns-extra-elements", "open-network-with-forward-dev", "hostdev-duplicate",
                   "passthrough-duplicate")


def find_corpus(explicit=None):
    return conformance.find_corpus(explicit, DEFAULT_CORPUS, "networkxml2xmlin", "libvirt's network corpus")


def _load(path):
    from virtnet.network.load import load_file

    return load_file(str(path)).network


def _first_line(error):
    return str(error).splitlines()[0]


def check_xml_case(corpus, case):
    from virtnet.network.format import format_network

    source = corpus / "networkxml2xmlin" / f"{case}.xml"
    expected = corpus / "networkxml2xmlout" / f"{case}.xml"
    try:
        ours = format_network(_load(source))
    except VirtnetError as error:
        if case in OUT_OF_SCOPE:
            return Result("net-xml", case, "out-of-scope", OUT_OF_SCOPE[case])
        status = "both-reject" if case in LIBVIRT_REJECTS else "virtnet-rejects"
        return Result("net-xml", case, status, _first_line(error))
    except Exception as e:  # a crash is a finding of its own, reported rather than raised
        return Result("net-xml", case, "virtnet-crashes", f"{type(e).__name__}: {e}")
    if case in OUT_OF_SCOPE:
        return Result("net-xml", case, "out-of-scope", OUT_OF_SCOPE[case] + " (yet virtnet accepted it)")
    if case in LIBVIRT_REJECTS or not expected.exists():
        return Result("net-xml", case, "virtnet-accepts", "libvirt's parser refuses it")
    theirs = conformance.canonical_lines(conformance._parse(expected.read_bytes()))
    mine = conformance.canonical_lines(conformance._parse(ours.encode()))
    if theirs == mine:
        return Result("net-xml", case, "match")
    changed = [line.strip() for line in conformance.changed_lines(theirs, mine)]
    return Result("net-xml", case, "differs", "; ".join(changed)[:300])


def _conf_lines(text):
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, sep, _ = line.partition("=")
        lines.append(f"{key}={PLACEHOLDER}" if sep and key in ("dhcp-hostsfile", "addn-hosts") else line)
    return lines


def check_conf_case(corpus, case):
    from virtnet.network import dnsmasq
    from virtnet.network.paths import NetworkPaths

    base = corpus / "networkxml2confdata"
    try:
        network = _load(base / f"{case}.xml")
        ours = dnsmasq.config(network, NetworkPaths("/run/virtnet", network.name))
        hosts = dnsmasq.hostsfile(network)
    except VirtnetError as error:
        if case in STRICTER:
            return Result("net-conf", case, "virtnet-stricter", STRICTER[case])
        return Result("net-conf", case, "virtnet-rejects", _first_line(error))
    except Exception as e:
        return Result("net-conf", case, "virtnet-crashes", f"{type(e).__name__}: {e}")
    notes = []
    theirs, mine = _conf_lines((base / f"{case}.conf").read_text()), _conf_lines(ours)
    if any(PLACEHOLDER in line for line in theirs):
        notes.append("hosts file paths")
    diffs = [line.strip() for line in conformance.changed_lines(theirs, mine)]
    hostsfile = base / f"{case}.hostsfile"
    if hostsfile.exists() and hostsfile.read_text() != hosts:
        diffs.append("hostsfile differs")
    if diffs:
        return Result("net-conf", case, "differs", "; ".join(diffs)[:300], notes)
    return Result("net-conf", case, "match", "", notes + (["and hostsfile"] if hostsfile.exists() else []))


def xml_cases(corpus):
    return sorted(p.stem for p in (corpus / "networkxml2xmlin").glob("*.xml"))


def conf_cases(corpus):
    base = corpus / "networkxml2confdata"
    return sorted(p.stem for p in base.glob("*.xml") if (base / f"{p.stem}.conf").exists())


def run_corpus(corpus):
    return ([check_xml_case(corpus, c) for c in xml_cases(corpus)]
            + [check_conf_case(corpus, c) for c in conf_cases(corpus)])


NETWORK_KINDS = (("net-xml", "network xml2xml", False), ("net-conf", "network dnsmasq conf", False))


def format_table(results):
    return conformance.format_table(results, NETWORK_KINDS, kind_width=8)


TSV_HEADER = """\
# virtnet against libvirt's network test corpus: kind, case, status (see tools/network_conformance.py).
# tests/test_network.py fails when a case moves to any status but match or both-reject.
# Re-record after an intended change:
#   python tools/network_conformance.py --tsv > tests/network_conformance_baseline.tsv
"""


def report(directory=None, *, tsv=False, baseline=None, out=None):
    results = run_corpus(find_corpus(directory))
    text = TSV_HEADER + "".join(f"{r.kind}\t{r.case}\t{r.status}\n" for r in results) if tsv else format_table(results)
    return conformance.write_report(results, text, baseline, out)


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description="Run virtnet on libvirt's network test inputs and "
                                     "compare the canonical XML and dnsmasq configuration with libvirt's.")
    parser.add_argument("dir", metavar="DIR", nargs="?", help=f"the corpus (default: {DEFAULT_CORPUS})")
    parser.add_argument("--baseline", metavar="FILE", help="also exit 1 on a regression from this TSV")
    parser.add_argument("--tsv", action="store_true", help="print kind, case and status as a baseline TSV")
    return conformance.run_main(parser, report, argv)


if __name__ == "__main__":
    sys.exit(main())
