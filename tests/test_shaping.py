"""<bandwidth>: the plan's shaping actions, their tc commands compared with libvirt's, the rules,
domiftune, and (as root, in a fresh namespace) real tc on real taps: applied at start, removed at
destroy and on rollback, the same from `plan --format sh` as from virtnet itself.

libvirt's expected tc command lines are read at test time from its virnetdevbandwidthtest.c in
../shared/conformance/libvirt/bandwidth/ (never copied here).
"""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hostcases import QEMU, assert_clean, cli_env, domain_xml, fails, ok, snapshot, virtnet, write
from virtnet.conf.load import load_text
from virtnet.errors import VirtnetError
from virtnet.host import shaping
from virtnet.host.plan import ShapeInbound, ShapeOutbound, build_plan
from virtnet.host.planformat import render_plan
from virtnet.iftune import parse_rates, set_rates

REPO = Path(__file__).resolve().parent.parent
LIBVIRT_TEST = REPO.parent / "shared" / "conformance" / "libvirt" / "bandwidth" / "virnetdevbandwidthtest.c"
IFB, POLICE, SFQ = frozenset({shaping.CAP_IFB}), frozenset({shaping.CAP_POLICE}), frozenset({shaping.CAP_SFQ})


def iface_xml(bandwidth, *, kind="ethernet", target="", mac="52:54:00:c0:00:01", extra=""):
    return (f"<interface type='{kind}'>\n  <mac address='{mac}'/>\n{extra}  <bandwidth>\n{bandwidth}  </bandwidth>\n"
            f"{target}  <model type='virtio'/>\n</interface>\n")


def domain_of(interfaces):
    return load_text(domain_xml("shaped", interfaces), "shaped.xml").domain


def plan_of(interfaces, caps=IFB):
    return build_plan(domain_of(interfaces), host_caps=caps)


BOTH = "    <inbound average='1000' peak='2000' burst='64'/>\n    <outbound average='500'/>\n"


# --- the plan ----------------------------------------------------------------------------------------

def test_a_managed_tap_is_shaped_once_it_is_up_and_the_ifb_device_goes_at_teardown():
    plan = plan_of(iface_xml(BOTH))
    kinds = [a.kind for a in plan.setup]
    assert kinds[:5] == ["create-tap", "set-mac", "set-up", "shape-inbound", "shape-outbound"], kinds
    inbound, outbound = plan.setup[3], plan.setup[4]
    assert (inbound.ifname, inbound.average, inbound.peak, inbound.burst) == ("vnet0", 1000, 2000, 64)
    assert (outbound.average, outbound.ifb) == (500, "ifb-vnet0")
    # The tap's own qdiscs go with the tap; the ifb device would outlive it, so teardown removes it.
    teardown = [a.kind for a in plan.teardown]
    assert "unshape-outbound" in teardown and "unshape-inbound" not in teardown, teardown
    text = render_plan("text", domain_of(iface_xml(BOTH)), plan, None)
    assert "shape vnet0 egress (to the guest): htb rate 1000kbps ceil 2000kbps burst 64kb quantum 85" in text
    assert "shape vnet0 ingress (from the guest) through ifb ifb-vnet0: htb rate 500kbps quantum 42" in text


def test_without_ifb_outbound_is_policed_as_libvirt_does_and_the_plan_says_so():
    plan = plan_of(iface_xml(BOTH), POLICE)
    [outbound] = [a for a in plan.setup if isinstance(a, ShapeOutbound)]
    assert outbound.ifb is None
    assert "police vnet0 ingress (from the guest): rate 500kbps burst 500kb" in outbound.line()
    assert outbound.inverse() is None  # nothing outlives a managed tap


def test_an_administrators_tap_gets_every_change_undone_at_teardown():
    plan = plan_of(iface_xml(BOTH, target="  <target dev='admtap0' managed='no'/>\n"))
    teardown = [(a.kind, a.ifname) for a in plan.teardown if a.kind.startswith("unshape")]
    assert sorted(teardown) == [("unshape-inbound", "admtap0"), ("unshape-outbound", "admtap0")]


def test_interfaces_virtnet_cannot_shape_get_a_warning_not_silence():
    plan = build_plan(domain_of(iface_xml(BOTH, kind="bridge", extra="  <source bridge='br0'/>\n")),
                      bridge_helper="/usr/lib/qemu/qemu-bridge-helper")
    assert not [a for a in plan.setup if isinstance(a, (ShapeInbound, ShapeOutbound))]
    assert any("<bandwidth> is not applied" in w for w in plan.warnings), plan.warnings
    # On SLIRP there is no tap: xml2argv names the element as not rendered.
    from virtnet.qemu.argv import unrendered

    dropped = [d.what for d in unrendered(domain_of(iface_xml(BOTH, kind="user")))]
    assert "<interface type='user'><bandwidth>" in dropped, dropped
    assert not [d for d in unrendered(domain_of(iface_xml(BOTH))) if "bandwidth" in d.what]


def test_sfq_leaf_only_where_the_kernel_has_it():
    [with_sfq] = [a for a in plan_of(iface_xml(BOTH), IFB | SFQ).setup if isinstance(a, ShapeInbound)]
    [without] = [a for a in plan_of(iface_xml(BOTH), IFB).setup if isinstance(a, ShapeInbound)]
    assert any("sfq" in c for c in shaping.inbound_commands(with_sfq))
    assert not any("sfq" in c for c in shaping.inbound_commands(without))


@pytest.mark.parametrize("bandwidth, message", [
    ("    <inbound average='100' floor='50'/>\n", "floor is only supported on interfaces of type 'network'"),
    ("    <outbound average='100' floor='50'/>\n", "floor is only accepted in <inbound>"),
    ("    <inbound peak='100'/>\n", "needs a non-zero average"),
])
def test_rates_libvirt_refuses_are_refused_with_the_line(tmp_path, bandwidth, message):
    path = tmp_path / "bad.xml"
    path.write_text(domain_xml("bad", iface_xml(bandwidth)))
    result = subprocess.run([sys.executable, "-m", "virtnet", "validate", str(path)], env=cli_env(),
                            capture_output=True, text=True)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "bound " in text)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"virtnet: error: {path}:{line}: "), result.stderr
    assert message in result.stderr and len(result.stderr.splitlines()) == 1


# --- libvirt's tc command lines ------------------------------------------------------------------

def libvirt_cases():
    """[(bandwidth XML or None, expected tc lines or None)] of virnetdevbandwidthtest.c's DO_TEST_SET
    cases: C arguments split at the commas outside string literals, adjacent literals joined, and
    the TC macro (tc's path) written as `tc`."""
    source = LIBVIRT_TEST.read_text()
    cases = []
    for match in re.finditer(r"DO_TEST_SET\((.*?)\);\n", source, re.S):
        args = [""]
        for token in re.finditer(r'"((?:[^"\\]|\\.)*)"|(,)|\bTC\b|\bNULL\b|\bOVS_VSCTL\b', match.group(1)):
            if token.group(2):
                args.append("")
            elif token.group(1) is not None:
                args[-1] += token.group(1).encode().decode("unicode_escape")
            elif token.group(0) == "TC":
                args[-1] += "tc"
            elif token.group(0) == "NULL":
                args[-1] = None
        cases.append((args[0], args[1]))
    return cases


def test_the_tc_commands_are_libvirts(capsys):
    if not LIBVIRT_TEST.exists():
        pytest.skip(f"libvirt's bandwidth test is not at {LIBVIRT_TEST}")
    from lxml import etree

    cases = libvirt_cases()
    assert len(cases) == 6, cases
    compared = 0
    for band, expected in cases:
        node = etree.fromstring(band) if band else None
        inbound = node.find("inbound") if node is not None else None
        outbound = node.find("outbound") if node is not None else None

        def rate(element, name):
            value = element.get(name) if element is not None else None
            return int(value) if value else None

        commands = []
        if inbound is not None:
            commands += shaping.inbound_commands(ShapeInbound("net0", "eth0", rate(inbound, "average"),
                                                              rate(inbound, "peak"), rate(inbound, "burst"), sfq=True))
        if outbound is not None:
            commands += shaping.outbound_commands(ShapeOutbound("net0", "eth0", rate(outbound, "average"),
                                                                rate(outbound, "peak"), rate(outbound, "burst")))
        ours = shaping.shell_lines(commands)
        # libvirt first clears the device (qdisc del root/ingress, qdisc show) and adds an `fw` filter for
        # packets marked 1; virtnet clears over netlink, and HTB's `default 1` already classifies every packet.
        theirs = [line for line in (expected or "").splitlines()
                  if " qdisc del " not in line and " qdisc show " not in line and " fw flowid " not in line]
        assert ours == theirs, f"{band}:\nvirtnet: {ours}\nlibvirt: {theirs}"
        compared += bool(theirs)
    assert compared == 4
    with capsys.disabled():
        print(f"\n  libvirt's tc lines: {compared} bandwidth cases identical (its clearing and fw lines aside)")


# --- the administrator's script -----------------------------------------------------------------

def test_the_sh_script_shapes_the_tap_it_creates_with_quoted_words():
    domain = domain_of(iface_xml(BOTH, target="  <target dev='admtap0' managed='no'/>\n"))
    plan = build_plan(domain, host_caps=IFB)
    script = render_plan("sh", domain, plan, "root")
    lines = [line.strip() for line in script.splitlines()]
    assert "tc qdisc add dev admtap0 root handle 1: htb default 1" in lines
    assert "tc filter add dev admtap0 parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect " \
           "dev ifb-admtap0" in lines
    # Inside the branch that creates the tap: an existing tap is only checked, never changed.
    assert script.index("ip tuntap add") < script.index("tc qdisc add") < script.rindex("\nfi")
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0


def test_ifb_names_fit_an_interface_name():
    assert shaping.ifb_name("vnet0") == "ifb-vnet0"
    long = shaping.ifb_name("a-very-long-tap")
    assert len(long) <= 15 and long != shaping.ifb_name("a-very-long-taq")


# --- domiftune's parts ----------------------------------------------------------------------------

def test_domiftune_rates_parse_as_virsh_takes_them():
    assert parse_rates("1000,2000,64", "--inbound") == {"average": 1000, "peak": 2000, "burst": 64}
    assert parse_rates("1000,,64", "--outbound") == {"average": 1000, "burst": 64}
    for bad in ("fast", "1,2,3,4", "-1", "99999999999", "\u00b2", "1 "):
        with pytest.raises(VirtnetError):
            parse_rates(bad, "--outbound")


def test_domiftune_writes_bandwidth_in_libvirts_place_and_clears_it_with_zero():
    from lxml import etree

    node = etree.fromstring("<interface type='ethernet'><mac address='52:54:00:00:00:01'/><target dev='t'/>"
                            "<model type='virtio'/></interface>")
    set_rates(node, "outbound", {"average": 5})
    set_rates(node, "inbound", {"average": 7, "burst": 3})
    assert [c.tag for c in node] == ["mac", "bandwidth", "target", "model"]
    assert etree.tostring(node.find("bandwidth")).decode() == \
        '<bandwidth><inbound average="7" burst="3"/><outbound average="5"/></bandwidth>'
    set_rates(node, "inbound", {"average": 0})
    set_rates(node, "outbound", {})
    assert node.find("bandwidth") is None


# --- real tc, as root ---------------------------------------------------------------------------------

def tc(ns, *args):
    return subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True, text=True,
                          check=True).stdout


def htb_class(ns, dev):
    """(rate, ceil, burst, quantum) of class 1:1 on DEV, as `tc -d class show` prints them."""
    text = tc(ns, "-d", "class", "show", "dev", dev)
    found = re.search(r"class htb 1:1 .*quantum (\d+) rate (\S+) ceil (\S+) .*?burst (\S+)", text)
    assert found, text
    return found.group(2), found.group(3), found.group(4).split("/")[0], int(found.group(1))


def qdiscs(ns, dev):
    return [line.split()[1] for line in tc(ns, "qdisc", "show", "dev", dev).splitlines() if line.strip()]


def shaped_domain(tmp_path, name, target):
    return write(tmp_path / f"{name}.xml", domain_xml(name, iface_xml(BOTH, target=target)))


def test_start_applies_bandwidth_with_tc_and_destroy_removes_it(dirs, ns, tmp_path):
    subprocess.run(["ip", "-n", ns, "tuntap", "add", "admtap0", "mode", "tap", "vnet_hdr"], check=True)
    before = snapshot(ns)
    interfaces = (iface_xml(BOTH, target="  <target dev='admtap0' managed='no'/>\n")
                  + iface_xml(BOTH, mac="52:54:00:c0:00:02", target="  <target dev='mtap0'/>\n"))
    path = write(tmp_path / "web.xml", domain_xml("web", interfaces))
    ok(virtnet(dirs, "define", path))
    ok(virtnet(dirs, "start", "web", "--paused", netns=ns))
    for tap in ("admtap0", "mtap0"):
        # 1000 kilobytes/s is tc's 8Mbit, peak 16Mbit; quantum as libvirt computes it.
        assert htb_class(ns, tap) == ("8Mbit", "16Mbit", "64Kb", 85)
        assert qdiscs(ns, tap)[:2] == ["htb", "ingress"], qdiscs(ns, tap)
        assert htb_class(ns, f"ifb-{tap}")[:2] == ("4Mbit", "4Mbit")
        assert "mirred (Egress Redirect to device ifb-" + tap in tc(ns, "filter", "show", "dev", tap, "ingress")
    ok(virtnet(dirs, "destroy", "web"))
    # The administrator's tap has its own qdisc again, and both ifb devices are gone.
    assert "htb" not in qdiscs(ns, "admtap0") and "ingress" not in qdiscs(ns, "admtap0")
    assert_clean(ns, dirs, "web", before)


def test_a_failed_start_rolls_the_shaping_and_filter_back(dirs, ns, tmp_path):
    subprocess.run(["ip", "-n", ns, "tuntap", "add", "admtap0", "mode", "tap", "vnet_hdr"], check=True)
    before = snapshot(ns)
    xml = domain_xml("broken", iface_xml(BOTH, target="  <target dev='admtap0' managed='no'/>\n", extra=CLEAN))
    path = write(tmp_path / "broken.xml", xml.replace(QEMU, "/bin/false"))
    ok(virtnet(dirs, "define", path))
    assert "QEMU exited" in fails(virtnet(dirs, "start", "broken", netns=ns))  # after the shaping
    assert "htb" not in qdiscs(ns, "admtap0")
    assert "ingress" not in qdiscs(ns, "admtap0")
    assert subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True,
                          text=True).stdout == ""
    assert_clean(ns, dirs, "broken", before)


def test_the_administrators_script_shapes_as_virtnet_does(dirs, ns, tmp_path, outside_netns):
    path = shaped_domain(tmp_path, "adm", "  <target dev='admtap0' managed='no'/>\n")
    script = ok(virtnet(dirs, "plan", "--format", "sh", "--owner", "root", path))
    subprocess.run(["ip", "netns", "exec", ns, "sh", "-e"], input=script, text=True, check=True)
    by_script = (htb_class(ns, "admtap0"), htb_class(ns, "ifb-admtap0"))
    subprocess.run(["ip", "-n", ns, "link", "del", "ifb-admtap0"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "del", "admtap0"], check=True)
    subprocess.run(["ip", "-n", ns, "tuntap", "add", "admtap0", "mode", "tap", "vnet_hdr"], check=True)
    ok(virtnet(dirs, "define", path))
    ok(virtnet(dirs, "start", "adm", "--paused", netns=ns))
    assert (htb_class(ns, "admtap0"), htb_class(ns, "ifb-admtap0")) == by_script
    ok(virtnet(dirs, "destroy", "adm"))


def test_domiftune_prints_changes_and_persists_like_virsh(dirs, ns, tmp_path):
    before = snapshot(ns)
    path = shaped_domain(tmp_path, "tune", "  <target dev='ttap0'/>\n")
    ok(virtnet(dirs, "define", path))
    ok(virtnet(dirs, "start", "tune", "--paused", netns=ns))
    assert ok(virtnet(dirs, "domiftune", "tune", "ttap0")) == textwrap.dedent("""\
        inbound.average: 1000
        inbound.peak   : 2000
        inbound.burst  : 64
        inbound.floor  : 0
        outbound.average: 500
        outbound.peak  : 0
        outbound.burst : 0
        """)
    # Live: the tap's tc setup follows at once; outbound 0 removes that limit and its ifb device.
    assert ok(virtnet(dirs, "domiftune", "tune", "ttap0", "--inbound", "300,,16", "--outbound", "0")) == ""
    assert htb_class(ns, "ttap0")[:3] == ("2400Kbit", "2400Kbit", "16Kb")
    assert "ingress" not in qdiscs(ns, "ttap0")
    assert "ifb-ttap0" not in subprocess.run(["ip", "-n", ns, "-br", "link"], capture_output=True, text=True).stdout
    live = ok(virtnet(dirs, "dumpxml", "tune"))
    assert "<inbound average='300' burst='16'/>" in live and "<outbound" not in live
    assert "<outbound average='500'/>" in ok(virtnet(dirs, "dumpxml", "tune", "--inactive"))
    # --config: the definition (by the running interface's MAC), not the tap.
    ok(virtnet(dirs, "domiftune", "tune", "ttap0", "--outbound", "100,200", "--config"))
    assert "<outbound average='100' peak='200'/>" in ok(virtnet(dirs, "dumpxml", "tune", "--inactive"))
    assert "ingress" not in qdiscs(ns, "ttap0")
    ok(virtnet(dirs, "domiftune", "tune", "ttap0", "--outbound", "100"))
    assert "ingress" in qdiscs(ns, "ttap0")
    # Refused: malformed values (usage, exit 2) and floor outside a libvirt network.
    assert "is not a number" in fails(virtnet(dirs, "domiftune", "tune", "ttap0", "--inbound", "x"), code=2)
    assert "floor" in fails(virtnet(dirs, "domiftune", "tune", "ttap0", "--inbound", "1,2,3,4"), code=2)
    ok(virtnet(dirs, "destroy", "tune"))
    assert_clean(ns, dirs, "tune", before)


# --- <coalesce> ---------------------------------------------------------------------------------------

COALESCE = "  <coalesce>\n    <rx>\n      <frames max='{}'/>\n    </rx>\n  </coalesce>\n"


def coalesced(frames, target=""):
    return (f"<interface type='ethernet'>\n  <mac address='52:54:00:c0:00:05'/>\n{target}  <model type='virtio'/>\n"
            f"{COALESCE.format(frames)}</interface>\n")


def test_coalesce_is_set_on_a_tap_virtnet_creates_and_named_where_it_is_not():
    plan = plan_of(coalesced(32))
    [action] = [a for a in plan.setup if a.kind == "set-coalesce"]
    assert (action.ifname, action.frames) == ("vnet0", 32) and action.inverse() is None
    plan = plan_of(coalesced(32, "  <target dev='admtap0' managed='no'/>\n"))
    assert not [a for a in plan.setup if a.kind == "set-coalesce"]
    assert any("<coalesce> is not applied" in w and "managed='no'" in w for w in plan.warnings), plan.warnings


def ethtool_rx_frames(ns, dev):
    """rx-frames of DEV read with the test's own ETHTOOL_GCOALESCE (struct ethtool_coalesce)."""
    code = ("import array, fcntl, socket, struct, sys\n"
            "data = array.array('I', [0x0e] + [0] * 22)\n"
            "sock = socket.socket()\n"
            "fcntl.ioctl(sock.fileno(), 0x8946, struct.pack('16sP', sys.argv[1].encode(), data.buffer_info()[0]))\n"
            "print(data[2])\n")
    return int(subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, dev], capture_output=True,
                              text=True, check=True).stdout)


def test_coalesce_reaches_the_tap_and_what_it_cannot_do_is_a_warning(dirs, ns, tmp_path):
    interfaces = (coalesced(32, "  <target dev='ctap0'/>\n")
                  + coalesced(100, "  <target dev='ctap1'/>\n").replace("c0:00:05", "c0:00:06"))
    path = write(tmp_path / "co.xml", domain_xml("co", interfaces))
    ok(virtnet(dirs, "define", path))
    result = virtnet(dirs, "start", "co", "--paused", netns=ns)
    ok(result)
    try:
        assert ethtool_rx_frames(ns, "ctap0") == 32
        # A tap batches at most 64 frames: the start says so rather than keeping quiet.
        assert ethtool_rx_frames(ns, "ctap1") == 64
        assert "warning: net1: <coalesce><rx><frames max='100'/>: 'ctap1' keeps 64" in result.stderr, result.stderr
    finally:
        ok(virtnet(dirs, "destroy", "co"))


def test_a_device_without_coalescing_gets_a_clear_warning(netns):
    from virtnet.host import coalesce

    subprocess.run(["ip", "link", "add", "cbr0", "type", "bridge"], check=True)
    warning = coalesce.set_rx_frames("cbr0", 8)
    assert warning == ("<coalesce><rx><frames max='8'/> is not applied: 'cbr0' does not support interrupt "
                       "coalescing (Operation not supported)")


# --- <filterref> ----------------------------------------------------------------------------------------

def filtered(filterref, kind="ethernet", extra=""):
    return (f"<interface type='{kind}'>\n  <mac address='52:54:00:C0:00:07'/>\n{extra}  <model type='virtio'/>\n"
            f"{filterref}</interface>\n")


CLEAN = "  <filterref filter='clean-traffic'>\n    <parameter name='IP' value='192.0.2.7'/>\n  </filterref>\n"


def test_clean_traffic_becomes_a_table_of_the_domains_own_removed_at_teardown():
    [action] = [a for a in plan_of(filtered(CLEAN)).setup if a.kind == "apply-filter"]
    assert (action.family, action.table, action.mac, action.ips) == ("netdev", "virtnet-shaped-net0",
                                                                      "52:54:00:c0:00:07", ["192.0.2.7"])
    assert action.inverse().kind == "remove-filter"
    rules = shaping_free_rules(action)
    assert 'type filter hook ingress device "vnet0" priority -200; policy accept;' in rules
    assert "ether saddr != 52:54:00:c0:00:07 counter drop" in rules
    assert "ip saddr != { 192.0.2.7 } counter drop" in rules
    [bridged] = [a for a in plan_of(filtered(CLEAN, "bridge", "  <source bridge='br0'/>\n")).setup
                 if a.kind == "apply-filter"]
    assert bridged.family == "bridge" and 'iifname "vnet0" ether saddr' in shaping_free_rules(bridged)


def shaping_free_rules(action):
    from virtnet.host import nwfilter

    return nwfilter.ruleset(action.family, action.table, action.ifname, action.mac, action.ips)


def test_nothing_reaches_the_rules_unchecked():
    from virtnet.host import nwfilter

    for ifname, mac, ips in (('t"0', "52:54:00:00:00:01", []), ("t0", "52:54:00:00:00:01\n", []),
                             ("t0", "52:54:00:00:00:01", ["1.2.3.4 } accept"])):
        with pytest.raises(VirtnetError, match="cannot be written into an nftables rule"):
            nwfilter.ruleset("netdev", "virtnet-x-net0", ifname, mac, ips)
    assert nwfilter.table_name("web 1/ü", "net0").startswith("virtnet-web_1__")
    assert nwfilter.table_name("a.b", "net0") != nwfilter.table_name("a_b", "net0")


@pytest.mark.parametrize("filterref, message", [
    ("  <filterref filter='no-arp-spoofing'/>\n", "<filterref filter='no-arp-spoofing'> is not supported"),
    ("  <filterref filter='clean-traffic'>\n    <parameter name='MAC' value='x'/>\n  </filterref>\n",
     "parameter 'MAC' is not supported; accepted: IP"),
    ("  <filterref filter='clean-traffic'>\n    <parameter name='IP' value='10.0.0.300'/>\n  </filterref>\n",
     "IP='10.0.0.300' is not an IPv4 address"),
])
def test_other_filters_and_parameters_are_refused_with_the_line(tmp_path, filterref, message):
    path = tmp_path / "bad.xml"
    path.write_text(domain_xml("bad", filtered(filterref)))
    result = subprocess.run([sys.executable, "-m", "virtnet", "validate", str(path)], env=cli_env(),
                            capture_output=True, text=True)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert re.match(rf"virtnet: error: {re.escape(str(path))}:\d+: ", result.stderr) and message in result.stderr


def test_policing_where_the_kernel_has_no_police_action_fails_clearly_and_leaves_nothing(netns):
    """libvirt's way for outbound (plans choose it when the kernel has no ifb). On a kernel with the
    police action it is applied; on one without, the error says so and the tap is as it was."""
    subprocess.run(["ip", "tuntap", "add", "ptap0", "mode", "tap"], check=True)
    action = ShapeOutbound("net0", "ptap0", 100, burst=8)
    if shaping.CAP_POLICE in shaping.probe():
        assert shaping.shape_outbound(action)
        shown = subprocess.run(["tc", "filter", "show", "dev", "ptap0", "ingress"], capture_output=True, text=True)
        assert "police" in shown.stdout and "rate 800Kbit burst 8Kb" in shown.stdout, shown.stdout
        shaping.unshape_outbound("ptap0", None)
    else:
        with pytest.raises(VirtnetError, match="this kernel lacks that queueing discipline or action"):
            shaping.shape_outbound(action)
    assert "ingress" not in subprocess.run(["tc", "qdisc", "show", "dev", "ptap0"], capture_output=True,
                                           text=True).stdout


def test_a_user_starts_on_the_administrators_shaped_tap_and_leaves_the_shaping_alone(ns, dirs, unprivileged_user):
    """Without CAP_NET_ADMIN virtnet cannot shape; the administrator's script has done it (as `plan
    --format sh --owner USER` writes it), and the user's start and destroy take it as it is."""
    from hostcases import user_workspace

    user = unprivileged_user
    with user_workspace(user, ns, "vnt-sh-", tun=True) as space:
        xml = write(space.work / "adm.xml", domain_xml("adm", iface_xml(BOTH, target="  <target dev='utap0' "
                                                                                   "managed='no'/>\n")))
        xml.chmod(0o644)
        script = ok(virtnet(dirs, "plan", "--format", "sh", "--owner", user, xml))
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-e"], input=script, text=True, check=True)
        shaped = (htb_class(ns, "utap0"), htb_class(ns, "ifb-utap0"), qdiscs(ns, "utap0"))
        ok(space.virtnet("define", xml))
        ok(space.virtnet("start", "adm", "--paused"))
        assert (htb_class(ns, "utap0"), htb_class(ns, "ifb-utap0"), qdiscs(ns, "utap0")) == shaped
        ok(space.virtnet("destroy", "adm"))
        assert (htb_class(ns, "utap0"), htb_class(ns, "ifb-utap0"), qdiscs(ns, "utap0")) == shaped
        # Without the administrator's shaping, the user's start fails and says how to get it.
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "utap0", "root"], check=True)
        error = fails(space.virtnet("start", "adm", "--paused"))
        assert "shaping needs CAP_NET_ADMIN" in error and "virtnet plan --format sh" in error, error
        assert "ingress" in qdiscs(ns, "utap0")  # the administrator's outbound shaping is untouched


def test_a_hot_plugged_nic_is_shaped_and_filtered_and_destroy_removes_both(dirs, ns, tmp_path):
    before = snapshot(ns)
    xml = domain_xml("hp", "").replace("  <devices>", "  <features><acpi/></features>\n  <devices>", 1)
    ok(virtnet(dirs, "define", write(tmp_path / "hp.xml", xml)))
    ok(virtnet(dirs, "start", "hp", "--paused", netns=ns))
    nic = write(tmp_path / "nic.xml", iface_xml(BOTH, target="  <target dev='hptap0'/>\n", extra=CLEAN))
    ok(virtnet(dirs, "attach-device", "hp", nic, netns=ns))
    assert htb_class(ns, "hptap0")[:2] == ("8Mbit", "16Mbit") and htb_class(ns, "ifb-hptap0")[:2] == ("4Mbit", "4Mbit")
    tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True, text=True)
    assert tables.stdout.split() == ["table", "netdev", "virtnet-hp-net0"], tables.stdout
    ok(virtnet(dirs, "destroy", "hp"))
    tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True, text=True)
    assert tables.stdout == ""
    assert_clean(ns, dirs, "hp", before)


def test_clean_traffic_drops_each_kind_of_spoofed_frame_and_passes_the_guests_own(netns):
    """Frames written into a tap as a guest sends them, against the rules loaded into the kernel:
    each rule's counter says what it dropped."""
    import fcntl
    import os
    import struct

    from virtnet.host import nwfilter
    from virtnet.host.plan import ApplyFilter

    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"ftap0", 0x0002 | 0x1000))  # TUNSETIFF: IFF_TAP|IFF_NO_PI
        subprocess.run(["ip", "link", "set", "ftap0", "up"], check=True)
        nwfilter.apply(ApplyFilter("net0", "ftap0", "netdev", "virtnet-t-net0", "52:54:00:c0:00:07", ["192.0.2.7"]))
        guest, other = bytes.fromhex("525400c00007"), bytes.fromhex("525400c00099")

        def arp(src_mac, sender_mac, sender_ip):
            body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, sender_mac, bytes(map(int, sender_ip.split("."))),
                               bytes(6), bytes([192, 0, 2, 1]))
            return b"\xff" * 6 + src_mac + b"\x08\x06" + body

        ipv6 = b"\xff" * 6 + guest + b"\x86\xdd" + bytes(40)
        for frame in (arp(guest, guest, "192.0.2.7"),  # the guest's own: passes
                      arp(other, other, "192.0.2.7"),  # another MAC
                      arp(guest, other, "192.0.2.7"),  # ARP naming another MAC
                      arp(guest, guest, "192.0.2.8"),  # ARP naming another address
                      ipv6):  # not IPv4 nor ARP
            os.write(fd, frame)
        listed = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout
    finally:
        os.close(fd)
    counts = {rule.split(" counter")[0].strip(): int(re.search(r"packets (\d+)", rule).group(1))
              for rule in listed.splitlines() if "counter packets" in rule}
    assert counts == {"ether saddr != 52:54:00:c0:00:07": 1, "arp saddr ether != 52:54:00:c0:00:07": 1,
                      "arp saddr ip != 192.0.2.7": 1, "ip saddr != 192.0.2.7": 0, "ip daddr 224.0.0.0/4": 0,
                      "ether type != { ip, arp }": 1}, listed
    nwfilter.remove("netdev", "virtnet-t-net0")
    assert subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout == ""


def test_a_bridges_tap_is_filtered_in_the_bridge_family_and_shaped(dirs, ns, tmp_path):
    # A MAC of its own, so that the bridge does not take its port's and lose it again with it.
    subprocess.run(["ip", "-n", ns, "link", "add", "fbr0", "address", "02:00:00:00:0f:01", "type", "bridge"],
                   check=True)
    before = snapshot(ns)
    nic = iface_xml(BOTH, kind="bridge", target="  <target dev='fbtap0'/>\n",
                    extra="  <source bridge='fbr0'/>\n" + CLEAN)
    ok(virtnet(dirs, "define", write(tmp_path / "fb.xml", domain_xml("fb", nic))))
    ok(virtnet(dirs, "start", "fb", "--paused", netns=ns))
    listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True,
                            text=True).stdout
    assert "table bridge virtnet-fb-net0 {" in listed and "type filter hook prerouting priority filter;" in listed
    assert 'iifname "fbtap0" ether saddr != 52:54:00:c0:00:01 counter packets 0 bytes 0 drop' in listed, listed
    assert htb_class(ns, "fbtap0")[:2] == ("8Mbit", "16Mbit")
    ok(virtnet(dirs, "destroy", "fb"))
    assert subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True,
                          text=True).stdout == ""
    assert_clean(ns, dirs, "fb", before)


def test_a_tap_name_nft_cannot_quote_is_refused_when_planning():
    with pytest.raises(VirtnetError, match="cannot be written into an nftables rule"):
        plan_of(filtered(CLEAN, extra="  <target dev='t$x\"0'/>\n"))


def test_a_start_killed_after_shaping_and_filtering_is_undone_by_the_next_command(ns, dirs, tmp_path):
    """The ifb device, an administrator's tap's qdiscs and the nftables table outlive a killed start
    (a tap virtnet made does not): they are journaled before they are made, and the next command
    removes them."""
    import signal
    import time

    from hostcases import cli_argv, live_pids, wait_dead

    subprocess.run(["ip", "-n", ns, "tuntap", "add", "admtap0", "mode", "tap", "vnet_hdr"], check=True)
    before = snapshot(ns)
    emulator = write(tmp_path / "hang-emulator", f"#!{sys.executable}\nimport time\ntime.sleep(600)\n", mode=0o755)
    nic = iface_xml(BOTH, target="  <target dev='admtap0' managed='no'/>\n", extra=CLEAN)
    ok(virtnet(dirs, "define", write(tmp_path / "k.xml", domain_xml("k", nic).replace(QEMU, str(emulator)))))
    start = subprocess.Popen(cli_argv(dirs, "start", "k", "--paused", netns=ns), env=cli_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not live_pids(str(emulator)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert live_pids(str(emulator)), start.stderr.read() if start.poll() is not None else "no emulator"
        assert "ifb-admtap0" in subprocess.run(["ip", "-n", ns, "-br", "link"], capture_output=True, text=True).stdout
    finally:
        start.send_signal(signal.SIGKILL)
        start.wait()
        start.stderr.close()
    emulators = live_pids(str(emulator))
    listing = virtnet(dirs, "list", "--all")
    ok(listing)
    assert "was interrupted" in listing.stderr, listing.stderr
    for pid in emulators:
        wait_dead(pid)
    assert "htb" not in qdiscs(ns, "admtap0") and "ingress" not in qdiscs(ns, "admtap0")
    assert subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True,
                          text=True).stdout == ""
    assert_clean(ns, dirs, "k", before)
