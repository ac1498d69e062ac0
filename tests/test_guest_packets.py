"""Packets through real guests: the tiny guest (tools/tiny-guest.py, booted by `virtnet start` in
a fresh network namespace per test) configures its NIC, pings, connects, listens, and reports on
its serial console what it saw; the host side is read with `ip`, `bridge` and plain sockets.

Each guest's test is on its kernel command line (tg.ip, tg.ping, tg.connect, tg.listen; see
tools/tiny-guest.py). A guest stays up after its last report until the test destroys it, so that
the host can still reach it and the teardown is virtnet's own `destroy`. The fixtures `lab` and
`tiny_guest` come from tests/guest.py (through conftest).
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from hostcases import SEED, assert_clean, ip, links, precreate_taps, routable, snapshot

MAC = "52:54:00:d0:00:01"
MAC2 = "52:54:00:d0:00:02"

# A TCP peer in the namespace: accepts one connection, reads a line, answers `host got LINE`,
# prints what it got (after `listening`, printed once it listens).
LISTENER = r"""
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(1)
server.settimeout(float(sys.argv[3]))
print("listening", flush=True)
conn, peer = server.accept()
conn.settimeout(10)
line = conn.makefile().readline().strip()
conn.sendall(f"host got {line}\n".encode())
conn.close()
print(f"got {line!r} from {peer[0]}", flush=True)
"""

# A TCP client in the namespace: sends a line, prints the first line answered.
CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as conn:
    conn.sendall(b"hello from the host\n")
    print(conn.makefile().readline().strip())
"""


class Listener:
    def __init__(self, ns, address, port, timeout=120):
        self.process = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER, address, str(port),
                                         str(timeout)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "listening", self.process.stderr.read()

    def result(self):
        out, err = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, err
        return out.strip()

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def listeners():
    made = []

    def listen(ns, address, port):
        made.append(Listener(ns, address, port))
        return made[-1]

    yield listen
    for listener in made:
        listener.close()


# ICMP echo from the namespace (Debian's ping is not among the test's packages): COUNT requests
# of SIZE payload bytes, never fragmented (IP_PMTUDISC_DO), each answered within WAIT seconds or
# not at all. Prints `RECEIVED/COUNT` (and why a send failed); exit status 0 when all came back.
PING = r"""
import os, socket, struct, sys, time
address, count, size, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER: IP_PMTUDISC_DO

def checksum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF

ident, received = os.getpid() & 0xFFFF, 0
for seq in range(count):
    payload = bytes(size)
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload
    try:
        sock.sendto(packet, (address, 0))
    except OSError as e:
        print(f"send: {e.strerror}")
        continue
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, peer = sock.recvfrom(65535)
        except socket.timeout:
            break
        start = (data[0] & 15) * 4
        kind, _, _, their_ident, their_seq = struct.unpack("!BBHHH", data[start:start + 8])
        if (kind, their_ident, their_seq, peer[0]) == (0, ident, seq, address):
            received += 1
            break
print(f"{received}/{count}")
sys.exit(0 if received == count else 1)
"""


def host_ping(ns, address, size=56, count=2, wait=1.0):
    """Ping ADDRESS from namespace NS; the CompletedProcess (returncode 0: every reply came back)."""
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PING, address, str(count), str(size),
                           str(wait)], capture_output=True, text=True, timeout=60)


def link_stats(ns, dev):
    [link] = json.loads(ip("-n", ns, "-s", "-j", "link", "show", "dev", dev).stdout)
    return link["stats64"]


def virtio(mac, body, kind="ethernet"):
    return (f"    <interface type='{kind}'>\n      <mac address='{mac}'/>\n{body}"
            "      <model type='virtio'/>\n    </interface>\n")


# --- taps ------------------------------------------------------------------------------------------


def test_managed_tap_with_mtu_and_host_address_carries_pings_both_ways(lab):
    ns, d = lab.ns, lab.d
    before = snapshot(ns)
    nic = virtio(MAC, "      <source>\n        <ip address='192.0.2.1' family='ipv4' prefix='24'/>\n      </source>\n"
                      "      <target dev='gtap0'/>\n      <mtu size='1400'/>\n")
    guest = lab.boot("tapmtu", nic, {"ip": "192.0.2.2/24", "ping": "192.0.2.1"})
    report = guest.report()

    # The guest's NIC: the MAC of the XML, the MTU of <mtu> (virtio's host_mtu), a carrier.
    assert report.nic == {"": "eth0", "mac": MAC, "mtu": "1400", "carrier": "1"}, report
    assert report["ping 192.0.2.1"].startswith("ok "), report
    # The host side: the address of <source><ip> on the tap, which has learnt the guest's MAC from
    # its packets; full-size (1400-byte, unfragmented) pings reach the guest and come back.
    tap = links(ns)["gtap0"]
    assert (tap.mtu, tap.mac) == (1400, "fe:54:00:d0:00:01")
    neighbours = json.loads(ip("-n", ns, "-j", "neigh", "show", "dev", "gtap0").stdout)
    assert {n["dst"]: n.get("lladdr") for n in neighbours}.get("192.0.2.2") == MAC
    reply = host_ping(ns, "192.0.2.2", size=1400 - 28)
    assert reply.stdout.strip() == "2/2", reply.stdout + reply.stderr

    guest.destroy()
    assert_clean(ns, d, "tapmtu", before, guest.pid)


def test_two_guests_on_a_bridge_ping_each_other(lab):
    ns, d = lab.ns, lab.d
    ip("-n", ns, "link", "add", "br0", "type", "bridge")
    ip("-n", ns, "link", "set", "br0", "address", "02:00:00:00:0b:00", "up")
    before = snapshot(ns)
    guests = [lab.boot(f"br{i}", virtio(mac, "      <source bridge='br0'/>\n", kind="bridge"),
                       {"ip": f"10.0.1.{i}/24", "ping": f"10.0.1.{3 - i}"})
              for i, mac in ((1, MAC), (2, MAC2))]
    reports = [g.report() for g in guests]

    for i, (report, mac) in enumerate(zip(reports, (MAC, MAC2)), start=1):
        assert report.nic["mac"] == mac and report.nic["carrier"] == "1", report
        assert report[f"ping 10.0.1.{3 - i}"].startswith("ok "), report
    # Both taps are ports of br0, and the bridge learnt each guest's MAC on its port.
    taps = {g.name: d.record(g.name)["taps"]["net0"] for g in guests}
    assert {links(ns)[tap].master for tap in taps.values()} == {"br0"}
    fdb = json.loads(subprocess.run(["bridge", "-n", ns, "-j", "fdb", "show", "br", "br0"], capture_output=True,
                                    text=True, check=True).stdout)
    learnt = {entry["mac"]: entry["ifname"] for entry in fdb if "permanent" not in entry.get("state", "")}
    assert learnt.get(MAC) == taps["br1"] and learnt.get(MAC2) == taps["br2"], fdb

    for guest in guests:
        guest.destroy()
    assert_clean(ns, d, "br1", before)


def test_link_state_down_the_guest_has_no_carrier_and_nothing_passes(lab):
    ns, d = lab.ns, lab.d
    before = snapshot(ns)
    nic = virtio(MAC, "      <source>\n        <ip address='192.0.2.1' family='ipv4' prefix='24'/>\n      </source>\n"
                      "      <target dev='gtap0'/>\n      <link state='down'/>\n")
    guest = lab.boot("down", nic, {"ip": "192.0.2.2/24", "ping": "192.0.2.1", "tries": "5"})
    guest.wait_for("addr ")
    # While the guest tries to ping the host (5 s), the host tries to ping the guest.
    assert host_ping(ns, "192.0.2.2", count=3).stdout.strip() == "0/3"
    report = guest.report()

    assert report.nic == {"": "eth0", "mac": MAC, "mtu": "1500", "carrier": "0"}, report
    assert report["ping 192.0.2.1"].startswith("fail "), report
    # Not one packet either way: the guest sent and received none, and none reached the host.
    assert report.fields("stats") == {"": "eth0", "rx_packets": "0", "tx_packets": "0"}, report
    assert link_stats(ns, "gtap0")["rx"]["packets"] == 0
    neighbours = json.loads(ip("-n", ns, "-j", "neigh", "show", "dev", "gtap0").stdout)
    assert not [n for n in neighbours if n.get("lladdr")], neighbours

    guest.destroy()
    assert_clean(ns, d, "down", before, guest.pid)


def test_seed_precreated_tap_carries_the_guests_packets_and_is_left_untouched(lab):
    """The seed case as root: the administrator's tap (from `plan --format sh`), given an address
    by the administrator; the guest pings it through the tap virtnet only opened."""
    ns, d, tmp_path = lab.ns, lab.d, lab.tmp_path
    precreate_taps(d, ns, SEED, "root", tmp_path)
    ip("-n", ns, "addr", "add", "192.0.2.1/24", "dev", "mytap0")
    before = snapshot(ns)

    guest = lab.boot("QEMUGuest1", test={"ip": "192.0.2.2/24", "ping": "192.0.2.1"}, xml=SEED.read_text())
    report = guest.report()
    assert report.nic == {"": "eth0", "mac": "fe:11:22:33:44:55", "mtu": "1500", "carrier": "1"}, report
    assert report["ping 192.0.2.1"].startswith("ok "), report
    assert host_ping(ns, "192.0.2.2").stdout.strip() == "2/2"
    assert link_stats(ns, "mytap0")["rx"]["packets"] > 0

    guest.destroy()
    assert "mytap0" in links(ns)
    assert_clean(ns, d, "QEMUGuest1", before, guest.pid)  # mytap0 exactly as the administrator left it


# --- a disk ----------------------------------------------------------------------------------------------


def test_virtio_disk_the_guest_reads_size_first_line_and_checksum(lab, tmp_path):
    """A raw image file as <disk type='file'> on the virtio bus: the guest sees it as vda, with
    the image's size in sectors, its first line, and the md5 of its first MiB as the host has it."""
    ns, d = lab.ns, lab.d
    marker = f"virtnet-disk-{os.urandom(8).hex()}"
    data = (marker + "\n").encode() + os.urandom(2 * 1024 * 1024 + 3 * 512 - len(marker) - 1)
    image = tmp_path / "disk.raw"
    image.write_bytes(data)
    assert len(data) % 512 == 0
    disk = ("    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n"
            f"      <source file='{image}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n")
    before = snapshot(ns)
    guest = lab.boot("disk", devices=disk, test={"disk": "vda", "disksum": "vda:1024"})
    report = guest.report()

    assert report.fields("disk") == {"": "vda", "sectors": str(len(data) // 512), "first": marker}, report
    assert report.fields("disksum") == {"": "vda", "kib": "1024",
                                        "md5": hashlib.md5(data[:1024 * 1024]).hexdigest()}, report
    assert report.nic == {"": "none"}, report
    assert image.read_bytes() == data  # the guest only read it

    guest.destroy()
    assert_clean(ns, d, "disk", before, guest.pid)


# --- user-mode networking ----------------------------------------------------------------------------


def test_slirp_gives_the_guest_its_address_by_dhcp_and_a_way_to_the_host(lab, listeners):
    ns, d = lab.ns, lab.d
    before = snapshot(ns)
    listener = listeners(ns, "127.0.0.1", 5000)
    guest = lab.boot("slirp", virtio(MAC, "", kind="user"), {"ip": "dhcp", "connect": "10.0.2.2:5000"})
    report = guest.report()

    dhcp = report.fields("dhcp")
    assert (dhcp["ip"], dhcp["mask"], dhcp["router"], dhcp["server"]) == ("10.0.2.15", "24", "10.0.2.2", "10.0.2.2")
    assert report["addr"] == "10.0.2.15/24", report
    # 10.0.2.2 is the host's loopback: QEMU connected to the listener in the namespace for the guest.
    assert report.answer("10.0.2.2:5000") == "host got hello from slirp", report
    assert listener.result() == "got 'hello from slirp' from 127.0.0.1"

    guest.destroy()
    assert_clean(ns, d, "slirp", before, guest.pid)


def test_passt_dhcp_port_forward_into_the_guest_and_tcp_out_to_the_host(lab, listeners, passt_bin):
    """With each passt (conftest's passt_bin, first in PATH): Debian 12's and a current one. The
    guest's `connect` stops nc once the answer line is in instead of waiting for the peer's FIN
    (see ask() in tools/tiny-guest.py's /init): Debian 12's passt (2023) loses the FIN of a
    connection the guest half-closed first; a current passt does not, and passes the same way."""
    ns, d = lab.ns, lab.d
    d.runtime.chmod(0o711)  # passt runs as nobody and must reach its socket directory
    routable(ns)  # passt needs an interface with an address and a default route
    before = snapshot(ns)
    listener = listeners(ns, "127.0.0.1", 5001)
    nic = virtio(MAC, "      <portForward proto='tcp' address='127.0.0.1'><range start='2222' to='22'/></portForward>\n",
                 kind="user").replace("</interface>", "  <backend type='passt'/>\n    </interface>")
    guest = lab.boot("passt", nic, {"ip": "dhcp", "listen": "22", "connect": "198.51.100.2:5001"})
    guest.wait_for("listening 22")
    # The passt serving the NIC is the one this test selected (or its .avx2 twin).
    [entry] = d.live("passt").passts
    assert os.readlink(f"/proc/{entry.pid}/exe") in (passt_bin.path, passt_bin.path + ".avx2"), passt_bin
    # Host to guest: the forwarded port, 127.0.0.1:2222 in the namespace, reaches the guest's port 22.
    answer = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, "127.0.0.1", "2222"],
                            capture_output=True, text=True, timeout=60)
    assert answer.stdout.strip() == "guest passt got hello from the host", answer.stderr
    report = guest.report()

    # passt's DHCP hands the guest the namespace's own address and gateway.
    dhcp = report.fields("dhcp")
    assert (dhcp["ip"], dhcp["mask"], dhcp["router"]) == ("198.51.100.1", "24", "198.51.100.2"), report
    assert report["addr"] == "198.51.100.1/24" and report["route default via"] == "198.51.100.2", report
    assert report["accepted"] == "22", report
    # Guest to host: the gateway address stands for the host, so the listener sees a loopback peer.
    assert report.answer("198.51.100.2:5001") == "host got hello from passt", report
    assert listener.result() == "got 'hello from passt' from 127.0.0.1"

    guest.destroy()
    assert_clean(ns, d, "passt", before, guest.pid)


# --- socket backends: two guests, one virtual wire ----------------------------------------------------


SOCKETS = {
    "mcast": ("<interface type='mcast'>", "<source address='230.0.0.1' port='5558'/>",
              "<interface type='mcast'>", "<source address='230.0.0.1' port='5558'/>"),
    "udp": ("<interface type='udp'>", "<source address='127.0.0.1' port='5571'><local address='127.0.0.1' "
            "port='5570'/></source>", "<interface type='udp'>", "<source address='127.0.0.1' port='5570'><local "
            "address='127.0.0.1' port='5571'/></source>"),
    "server-client": ("<interface type='server'>", "<source address='127.0.0.1' port='5580'/>",
                      "<interface type='client'>", "<source address='127.0.0.1' port='5580'/>"),
}


@pytest.mark.parametrize("backend", sorted(SOCKETS))
def test_socket_backend_connects_two_guests(lab, backend):
    ns, d = lab.ns, lab.d
    if backend == "mcast":
        # QEMU joins the group on the interface the route to it names: loopback, made multicast.
        ip("-n", ns, "link", "set", "lo", "multicast", "on")
        ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "lo")
    before = snapshot(ns)
    open1, source1, open2, source2 = SOCKETS[backend]
    nics = [f"    {opening}\n      <mac address='{mac}'/>\n      {source}\n      <model type='virtio'/>\n"
            "    </interface>\n" for opening, source, mac in ((open1, source1, MAC), (open2, source2, MAC2))]
    # In order: the server listens once its QEMU runs, before the client's QEMU connects.
    guests = [lab.boot(f"{backend[:4]}{i}", nic, {"ip": f"10.0.3.{i}/24", "ping": f"10.0.3.{3 - i}"})
              for i, nic in enumerate(nics, start=1)]
    reports = [g.report() for g in guests]

    for i, (report, mac) in enumerate(zip(reports, (MAC, MAC2)), start=1):
        assert report.nic["mac"] == mac and report.nic["carrier"] == "1", report
        assert report[f"ping 10.0.3.{3 - i}"].startswith("ok "), report

    for guest in guests:
        guest.destroy()
    assert_clean(ns, d, guests[0].name, before)
