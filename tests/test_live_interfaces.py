"""The interfaces of a running guest: domif-setlink, domif-getlink, domifstat and domifaddr.

In the tiny guest (tools/tiny-guest.py through tests/guest.py's `lab`): a link set down stops
packets both ways and set up again lets them through, the live XML follows; the tap's counters,
seen from the guest's side, grow by what the guest sent and received; the guest agent (qemu-ga,
tg.agent=1) gives the guest's address, and so does the host's neighbour table once packets have
passed. On a paused QEMU (no guest needed): the errors for interfaces without a tap, a domain
without an agent channel and an agent that does not answer. Without root: the command line's
arguments and its errors for domains that are not running, and virsh's table.
"""

import json
import re
import socket
import threading
import time

import pytest

from hostcases import domain_xml, fails, ok, virtnet, write
from test_guest_packets import MAC, host_ping, link_stats, virtio
from virtnet import ifaddr
from virtnet.qemu.agent import AgentClient, AgentError

AGENT_CHANNEL = "    <channel type='unix'>\n      <target type='virtio' name='org.qemu.guest_agent.0'/>\n    </channel>\n"
TAP_NIC = virtio(MAC, "      <source>\n        <ip address='192.0.2.1' family='ipv4' prefix='24'/>\n      </source>\n"
                      "      <target dev='gtap0'/>\n")
STAT_NAMES = ["rx_bytes", "rx_packets", "rx_errs", "rx_drop", "tx_bytes", "tx_packets", "tx_errs", "tx_drop"]


def domifstat(d, name, iface):
    """virsh's lines `IFACE FIELD N`, in virsh's order, as {FIELD: N}."""
    lines = ok(virtnet(d, "domifstat", name, iface)).splitlines()
    assert [line.split()[:2] for line in lines] == [[iface, field] for field in STAT_NAMES], lines
    return {field: int(value) for _, field, value in (line.split() for line in lines)}


def table_rows(text):
    """The rows of domifaddr's table (after its two header lines), split into words."""
    lines = text.splitlines()
    assert lines[0].split() == ["Name", "MAC", "address", "Protocol", "Address"], text
    assert lines[1] == "-" * 79, text
    return [line.split() for line in lines[2:]]


def live_link(d, name):
    return re.findall(r"<link state='(\w+)'/>", ok(virtnet(d, "dumpxml", name)))


# --- in the tiny guest -----------------------------------------------------------------------------


def test_setlink_stops_and_restores_packets_and_the_counters_and_xml_follow(lab):
    ns, d = lab.ns, lab.d
    guest = lab.boot("live", TAP_NIC, {"ip": "192.0.2.2/24", "ping": "192.0.2.1", "agent": "1"},
                     devices=AGENT_CHANNEL)
    report = guest.report()
    assert report["ping 192.0.2.1"].startswith("ok "), report
    assert report["agent"].endswith(" ok"), report

    assert ok(virtnet(d, "domif-getlink", "live", "gtap0")) == "gtap0 up\n"
    assert live_link(d, "live") == []
    # What the guest sent by the time it reported (its own counter) reached the tap: the guest's tx.
    sent = int(report.fields("stats")["tx_packets"])
    before = domifstat(d, "live", "gtap0")
    assert before["tx_packets"] >= sent > 0, (before, report)
    # The same counters as the kernel shows them for the tap, the other way round.
    tap = link_stats(ns, "gtap0")
    assert tap["rx"]["packets"] >= before["tx_packets"] and tap["tx"]["packets"] >= before["rx_packets"]

    # Three echo requests in, three replies out: both directions grow by at least three.
    assert host_ping(ns, "192.0.2.2", count=3).stdout.strip() == "3/3"
    after = domifstat(d, "live", "gtap0")
    assert after["rx_packets"] >= before["rx_packets"] + 3 and after["tx_packets"] >= before["tx_packets"] + 3
    assert after["rx_bytes"] >= before["rx_bytes"] + 3 * 98 and after["tx_bytes"] >= before["tx_bytes"] + 3 * 98
    assert after["rx_errs"] == after["tx_errs"] == 0

    # Down: not one packet either way, and the live XML, getlink and dumpxml say so.
    assert ok(virtnet(d, "domif-setlink", "live", "gtap0", "down")) == "Device updated successfully\n"
    assert ok(virtnet(d, "domif-getlink", "live", "gtap0")) == "gtap0 down\n"
    assert ok(virtnet(d, "domif-getlink", "live", MAC.upper())) == f"{MAC.upper()} down\n"
    assert live_link(d, "live") == ["down"]
    assert "<link state='down'/>" not in ok(virtnet(d, "dumpxml", "live", "--inactive"))
    down = domifstat(d, "live", "gtap0")
    assert host_ping(ns, "192.0.2.2", count=3).stdout.strip() == "0/3"
    assert domifstat(d, "live", "gtap0")["tx_packets"] == down["tx_packets"]  # the guest sent nothing through

    # Up again (named by its MAC this time): packets pass, and the live XML says up, as libvirt's does.
    assert ok(virtnet(d, "domif-setlink", "live", MAC, "up")) == "Device updated successfully\n"
    assert ok(virtnet(d, "domif-getlink", "live", "gtap0")) == "gtap0 up\n"
    assert live_link(d, "live") == ["up"]
    reply = host_ping(ns, "192.0.2.2", count=3, wait=2.0)
    assert reply.stdout.strip() == "3/3", reply.stdout + reply.stderr
    assert domifstat(d, "live", "gtap0")["tx_packets"] >= down["tx_packets"] + 3

    # The guest's addresses: from its agent (its own names, with prefixes) ...
    rows = table_rows(ok(virtnet(d, "domifaddr", "live", "--source", "agent")))
    assert ["eth0", MAC, "ipv4", "192.0.2.2/24"] in rows, rows
    assert ["lo", "00:00:00:00:00:00", "ipv4", "127.0.0.1/8"] in rows, rows
    only = table_rows(ok(virtnet(d, "domifaddr", "live", "--source", "agent", "--interface", "eth0", "--full")))
    assert only and all(row[:2] == ["eth0", MAC] for row in only), only
    # ... and from the host's neighbour table, under the tap's name, as libvirt shows it (prefix 0).
    assert table_rows(ok(virtnet(d, "domifaddr", "live", "--source", "arp"))) == \
        [["gtap0", MAC, "ipv4", "192.0.2.2/0"]]

    # Unknown interfaces: one line each, exit 1.
    assert "no interface 'eth9'" in fails(virtnet(d, "domif-setlink", "live", "eth9", "down"))
    assert "no interface with MAC address 52:54:00:00:00:99" in fails(virtnet(d, "domifstat", "live",
                                                                              "52:54:00:00:00:99"))
    assert "no interface 'eth9'" in fails(virtnet(d, "domif-getlink", "live", "eth9"))

    guest.destroy()
    # Stopped: the verbs that need a running guest say so; getlink reads the definition, as virsh does.
    for argv in (("domifstat", "live", "gtap0"), ("domifaddr", "live", "--source", "arp")):
        assert fails(virtnet(d, *argv)) == "virtnet: error: domain 'live' is not running"
    assert ok(virtnet(d, "domif-getlink", "live", "gtap0")) == "gtap0 up\n"


# --- on a paused QEMU ------------------------------------------------------------------------------

USER_MAC = "52:54:00:d0:00:07"


def test_interfaces_without_a_tap_a_missing_agent_channel_and_a_silent_agent(ns, dirs, tmp_path):
    d = dirs
    nics = (f"    <interface type='user'>\n      <mac address='{USER_MAC}'/>\n      <model type='virtio'/>\n"
            "    </interface>\n"
            "    <interface type='ethernet'>\n      <mac address='52:54:00:d0:00:08'/>\n"
            "      <target dev='ptap0'/>\n      <model type='virtio'/>\n    </interface>\n")
    write(tmp_path / "noagent.xml", domain_xml("noagent", nics))
    ok(virtnet(d, "define", tmp_path / "noagent.xml"))
    ok(virtnet(d, "start", "noagent", "--paused", netns=ns))
    write(tmp_path / "silent.xml", domain_xml("silent", AGENT_CHANNEL))
    ok(virtnet(d, "define", tmp_path / "silent.xml"))
    ok(virtnet(d, "start", "silent", "--paused", netns=ns))
    try:
        error = fails(virtnet(d, "domifstat", "noagent", USER_MAC))
        assert error == (f"virtnet: error: domain 'noagent': interface '{USER_MAC}' is <interface type='user'>, "
                         "which has no tap on the host, so there are no counters to read")
        error = fails(virtnet(d, "domifaddr", "noagent", "--source", "agent"))
        assert error.startswith("virtnet: error: domain 'noagent' has no guest agent channel; give it <channel "
                                "type='unix'>"), error
        error = fails(virtnet(d, "domifaddr", "noagent"))  # virsh's default source: the leases
        assert "no interface is on a virtnet network" in error and "--source agent" in error and \
            "--source arp" in error, error
        # No guest runs, so no agent answers: an error once the agent's time is up, not a hang.
        started = time.monotonic()
        error = fails(virtnet(d, "domifaddr", "silent", "--source", "agent"))
        assert f"did not answer guest-sync-delimited within {ifaddr.AGENT_TIMEOUT:g} s" in error, error
        assert time.monotonic() - started < ifaddr.AGENT_TIMEOUT + 10

        # The tap's counters and the link, on a QEMU whose vCPUs never ran: nothing sent yet.
        assert domifstat(d, "noagent", "ptap0")["tx_packets"] == 0
        assert ok(virtnet(d, "domif-setlink", "noagent", "ptap0", "down")) == "Device updated successfully\n"
        assert ok(virtnet(d, "domif-getlink", "noagent", "ptap0")) == "ptap0 down\n"
        assert ok(virtnet(d, "domif-getlink", "noagent", USER_MAC)) == f"{USER_MAC} up\n"
        assert live_link(d, "noagent") == ["down"]
        # --config changes the definition only, even while the domain runs.
        assert ok(virtnet(d, "domif-setlink", "noagent", USER_MAC, "down", "--config")) == \
            "Device updated successfully\n"
        assert ok(virtnet(d, "domif-getlink", "noagent", USER_MAC)) == f"{USER_MAC} up\n"
        assert ok(virtnet(d, "domif-getlink", "noagent", USER_MAC, "--config")) == f"{USER_MAC} down\n"
        assert ok(virtnet(d, "domif-getlink", "noagent", "ptap0", "--config")) == "ptap0 up\n"
        assert live_link(d, "noagent") == ["down"]
        # The ARP source finds nothing for a guest that sent nothing: the header alone.
        assert table_rows(ok(virtnet(d, "domifaddr", "noagent", "--source", "arp"))) == []
    finally:
        virtnet(d, "destroy", "noagent")
        virtnet(d, "destroy", "silent")


# --- without a running guest -----------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ("domif-setlink", "web", "vnet0"),  # no state
    ("domif-setlink", "web", "vnet0", "sideways"),
    ("domif-getlink", "web"),
    ("domifstat", "web"),
    ("domifaddr", "web", "--source", "dhcp"),
    ("domifaddr",),
])
def test_usage_errors_exit_2(dirs, argv):
    result = virtnet(dirs, *argv)
    assert result.returncode == 2 and "usage: virtnet " + argv[0] in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_errors_for_unknown_and_stopped_domains_and_getlink_from_the_definition(dirs, tmp_path):
    d = dirs
    error = fails(virtnet(d, "domif-setlink", "nosuch", "vnet0", "down"))
    assert error == "virtnet: error: no domain named 'nosuch' is defined (see `virtnet list --all`)"
    nics = (f"    <interface type='ethernet'>\n      <mac address='{MAC}'/>\n      <target dev='stap0'/>\n"
            "      <link state='down'/>\n    </interface>\n"
            f"    <interface type='user'>\n      <mac address='{USER_MAC}'/>\n    </interface>\n")
    write(tmp_path / "off.xml", domain_xml("off", nics))
    ok(virtnet(d, "define", tmp_path / "off.xml"))
    for argv in (("domifstat", "off", "stap0"), ("domifaddr", "off"), ("domifaddr", "off", "--source", "agent")):
        assert fails(virtnet(d, *argv)) == "virtnet: error: domain 'off' is not running"
    # As virsh: the state of the stored definition, the interface named as it was given.
    assert ok(virtnet(d, "domif-getlink", "off", "stap0")) == "stap0 down\n"
    assert ok(virtnet(d, "domif-getlink", "off", "52:54:00:D0:0:1")) == "52:54:00:D0:0:1 down\n"
    assert ok(virtnet(d, "domif-getlink", "off", USER_MAC)) == f"{USER_MAC} up\n"
    # ... and setlink changes the definition of a domain that is not running, as virsh does.
    assert ok(virtnet(d, "domif-setlink", "off", "stap0", "up")) == "Device updated successfully\n"
    assert ok(virtnet(d, "domif-setlink", "off", USER_MAC, "down")) == "Device updated successfully\n"
    assert re.findall(r"<link state='(\w+)'/>", ok(virtnet(d, "dumpxml", "off"))) == ["up", "down"]
    assert ok(virtnet(d, "domif-getlink", "off", "stap0")) == "stap0 up\n"
    assert "no interface 'nosuch'" in fails(virtnet(d, "domif-setlink", "off", "nosuch", "up"))
    error = fails(virtnet(d, "domif-getlink", "off", "bad\nname"))
    assert error == ("virtnet: error: domain 'off' has no interface 'bad\\nname' (give its target dev or MAC "
                     "address); `virtnet domiflist off` lists them")


@pytest.mark.parametrize("verb", ["domif-setlink", "domif-getlink", "domifstat", "domifaddr"])
def test_every_verb_has_a_description_and_an_example(dirs, verb):
    text = ok(virtnet(dirs, verb, "--help"))
    assert "virsh" in text and f"example:\n  virtnet {verb} " in text, text


def test_virsh_table_and_what_the_agent_may_send():
    reply = [{"name": "lo", "hardware-address": "00:00:00:00:00:00",
              "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]},
             {"name": "eth0", "hardware-address": "52:54:00:d0:00:01",
              "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "192.0.2.2", "prefix": 24},
                               {"ip-address-type": "ipv6", "ip-address": "fe80::1", "prefix": 64},
                               {"ip-address-type": "ipv4", "ip-address": "not an address", "prefix": 24},
                               {"ip-address-type": "ipv4", "ip-address": "10.0.0.1", "prefix": 99}]},
             {"name": "eth0:1", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.9.9.9", "prefix": 8}]},
             {"name": "ev\nil", "hardware-address": "x\ty"},
             "not an object", {"name": 5}]
    found = ifaddr.parse_agent_interfaces(reply)
    assert [(f.name, f.mac, f.addresses) for f in found] == [
        ("lo", "00:00:00:00:00:00", [("ipv4", "127.0.0.1", 8)]),
        ("eth0", "52:54:00:d0:00:01", [("ipv4", "192.0.2.2", 24), ("ipv6", "fe80::1", 64), ("ipv4", "10.9.9.9", 8)]),
        ("ev\\nil", "x\\ty", [])]
    assert ifaddr.table(found) == (
        " Name       MAC address          Protocol     Address\n"
        + "-" * 79 + "\n"
        " lo         00:00:00:00:00:00    ipv4         127.0.0.1/8\n"
        " eth0       52:54:00:d0:00:01    ipv4         192.0.2.2/24\n"
        " -          -                    ipv6         fe80::1/64\n"
        " -          -                    ipv4         10.9.9.9/8\n"
        " ev\\nil     x\\ty                 N/A          N/A\n")
    assert ifaddr.table(found, only="eth0", full=True).splitlines()[2:] == [
        " eth0       52:54:00:d0:00:01    ipv4         192.0.2.2/24",
        " eth0       52:54:00:d0:00:01    ipv6         fe80::1/64",
        " eth0       52:54:00:d0:00:01    ipv4         10.9.9.9/8"]


def test_agent_client_drops_a_stale_reply_before_the_sync_delimiter(tmp_path):
    """The agent's side of the line, as qemu-ga speaks it: a reply left from an earlier client that
    gave up comes first; guest-sync-delimited's 0xFF marks where the answers to this client begin."""
    path = str(tmp_path / "agent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    requests, finished = [], threading.Event()

    def agent():
        conn, _ = server.accept()
        with conn, conn.makefile("rb") as lines:
            sync = json.loads(lines.readline())
            requests.append(sync)
            conn.sendall(b'{"return": [{"name": "stale"}]}\n\xff' + json.dumps(
                {"return": sync["arguments"]["id"]}).encode() + b"\n")
            requests.append(json.loads(lines.readline()))
            conn.sendall(b'{"return": [{"name": "eth0"}]}\n')
            requests.append(json.loads(lines.readline()))
            conn.sendall(b'{"error": {"class": "CommandNotFound", "desc": "no such command"}}\n')
            lines.readline()
            finished.wait(10)  # silence, the connection open: the client's time runs out

    thread = threading.Thread(target=agent, daemon=True)
    thread.start()
    try:
        with AgentClient(path, timeout=2.0) as client:
            assert client.execute("guest-network-get-interfaces") == [{"name": "eth0"}]
            with pytest.raises(AgentError, match="refused guest-bogus: no such command"):
                client.execute("guest-bogus")
            with pytest.raises(AgentError, match="did not answer guest-info within 2 s"):
                client.execute("guest-info")
    finally:
        finished.set()
        server.close()
        thread.join(5)
    assert requests[0]["execute"] == "guest-sync-delimited" and isinstance(requests[0]["arguments"]["id"], int)
    assert [r["execute"] for r in requests[1:]] == ["guest-network-get-interfaces", "guest-bogus"]
