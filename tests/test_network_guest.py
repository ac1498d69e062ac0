"""Virtual networks proven by packets through real guests (root): the tiny guest (tests/guest.py's
`lab`, each test in its own namespace) on <interface type='network'>, and an "outside" host in a
second namespace joined to the lab's by a veth (the lab's end, `uplink`, is where traffic leaves).

- NAT (libvirt's default network, examples/default-network.xml, with a <dns><host>; the domain as
  `virt-install --network network=default` writes it): the guest gets a DHCP lease from the
  network's dnsmasq (its MAC and address in net-dhcp-leases and `domifaddr --source lease`),
  resolves the <dns><host> name, and reaches the outside host, which sees the host's address, not
  the guest's;
- route: the outside host sees the guest's own address; the network's <mtu> is the tap's and
  dnsmasq tells the guest;
- isolated: two guests reach each other, not the outside;
- <port isolated='yes'>: two guests cannot reach each other, but reach the gateway.
After each, net-destroy leaves no bridge, dnsmasq, nftables table or file behind.
"""

import subprocess
import uuid

import pytest

from hostcases import REPO, ip, ok, virtnet, write
from test_guest_packets import Listener
from test_guest_scenarios import virt_install_xml
from test_network_host import assert_clean, dnsmasq_pids, nft_tables
from guest import Guest, cmdline_for

OUTSIDE_ADDRESS, UPLINK_ADDRESS = "198.51.100.2", "198.51.100.1"
PORT = 7000
MAC, MAC2 = "52:54:00:5e:00:01", "52:54:00:5e:00:02"


@pytest.fixture
def outside(ns):
    """A second namespace, the "outside" host at 198.51.100.2, joined to the lab's namespace by a
    veth whose lab end (uplink, 198.51.100.1) is where the networks' traffic leaves."""
    name = f"vnt-out-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        ip("-n", ns, "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", name)
        ip("-n", ns, "addr", "add", f"{UPLINK_ADDRESS}/24", "dev", "uplink")
        ip("-n", ns, "link", "set", "uplink", "up")
        ip("-n", name, "addr", "add", f"{OUTSIDE_ADDRESS}/24", "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        ip("netns", "del", name, check=False)


def network_nic(mac, network):
    """An interface as virt-install's `--network network=NETWORK` writes it."""
    return (f"    <interface type='network'>\n      <source network='{network}'/>\n      <mac address='{mac}'/>\n"
            "      <model type='virtio'/>\n    </interface>\n")


@pytest.fixture(autouse=True)
def _networks_destroyed(lab):
    """Whatever network a failed test left active is destroyed (its dnsmasq would outlive the test)."""
    yield
    for guest in lab.guests:
        if guest.running:
            guest.destroy()
    running = lab.d.state / "networks" / "running"
    for record in running.glob("*.json") if running.exists() else []:
        virtnet(lab.d, "net-destroy", record.stem)


def define_network(lab, xml, name):
    path = write(lab.tmp_path / f"net-{name}.xml", xml)
    ok(virtnet(lab.d, "net-define", path))
    ok(virtnet(lab.d, "net-start", name, netns=lab.ns))


def destroy_all(lab, network, bridge):
    for guest in lab.guests:
        guest.destroy()
    ok(virtnet(lab.d, "net-destroy", network))
    assert_clean(lab.ns, lab.d, bridge)


def test_nat_network_lease_dns_name_and_outside_sees_the_hosts_address(lab, outside):
    """libvirt's default network with a DNS host, and the virt-install domain of --network network=default."""
    ns, d, image = lab.ns, lab.d, lab.image
    xml = (REPO / "examples" / "default-network.xml").read_text().replace(
        "  <ip ", "  <dns>\n    <host ip='192.168.122.53'>\n      <hostname>db</hostname>\n    </host>\n  </dns>\n  <ip ")
    define_network(lab, xml, "default")
    listener = Listener(outside, OUTSIDE_ADDRESS, PORT)
    try:
        name = "vi-net"
        serial = lab.tmp_path / f"{name}.serial"
        disk = lab.tmp_path / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(4 * 1024 * 1024)
        cmdline = cmdline_for(name, {"ip": "dhcp", "resolve": "db@192.168.122.1",
                                     "connect": f"{OUTSIDE_ADDRESS}:{PORT}"})
        path = write(lab.tmp_path / f"{name}.xml", virt_install_xml(
            name, image.domain_type, "q35", image.kernel, image.initrd, cmdline, disk, serial,
            network_nic(MAC, "default"), graphics=False))
        ok(virtnet(d, "define", path))
        guest = Guest(image, d, name, serial, ns)
        lab.guests.append(guest)
        guest.start()
        report = guest.report()
        dhcp = report.fields("dhcp")
        leased = dhcp["ip"]
        assert dhcp["router"] == "192.168.122.1" and dhcp["server"] == "192.168.122.1", report
        assert leased.startswith("192.168.122.") and 2 <= int(leased.rsplit(".", 1)[1]) <= 254, report
        assert report["resolve db"].startswith("192.168.122.53 "), report
        assert report.answer(f"{OUTSIDE_ADDRESS}:{PORT}") == f"host got hello from {name}", report
        # Masqueraded: the outside host sees the address of the host's way out, not the guest's.
        assert listener.result() == f"got 'hello from {name}' from {UPLINK_ADDRESS}"
    finally:
        listener.close()
    leases = ok(virtnet(d, "net-dhcp-leases", "default")).splitlines()
    rows = [line.split() for line in leases[2:]]
    assert [(r[2], r[3], r[4]) for r in rows] == [(MAC, "ipv4", f"{leased}/24")], leases
    tap = d.record(name)["taps"]["net0"]
    shown = ok(virtnet(d, "domifaddr", name, "--source", "lease")).splitlines()
    assert shown[2].split() == [tap, MAC, "ipv4", f"{leased}/24"], shown
    # The tap is a port of the network's bridge.
    master = subprocess.run(["ip", "-n", ns, "-o", "link", "show", tap], capture_output=True, text=True).stdout
    assert "master virbr0" in master
    destroy_all(lab, "default", "virbr0")


ROUTED = """<network>
  <name>routed</name>
  <forward mode='route' dev='uplink'/>
  <bridge name='vnrt0' stp='off'/>
  <mtu size='1400'/>
  <ip address='192.0.2.1' prefix='24'>
    <dhcp>
      <range start='192.0.2.10' end='192.0.2.20'/>
      <host mac='52:54:00:5e:00:01' name='fixed' ip='192.0.2.15'/>
    </dhcp>
  </ip>
</network>
"""


def test_routed_network_forwards_without_nat(lab, outside):
    define_network(lab, ROUTED, "routed")
    ip("-n", outside, "route", "add", "192.0.2.0/24", "via", UPLINK_ADDRESS)
    listener = Listener(outside, OUTSIDE_ADDRESS, PORT)
    try:
        guest = lab.boot("rt", network_nic(MAC, "routed"), {"ip": "dhcp", "dhcpopt": "mtu",
                                                             "connect": f"{OUTSIDE_ADDRESS}:{PORT}"})
        report = guest.report()
        dhcp = report.fields("dhcp")
        assert dhcp["ip"] == "192.0.2.15", report  # the <dhcp><host> entry
        assert dhcp["mtu"] == "1400", report  # the network's <mtu>, told by dnsmasq
        tap = lab.d.record("rt")["taps"]["net0"]
        assert "mtu 1400 " in subprocess.run(["ip", "-n", lab.ns, "-o", "link", "show", tap], capture_output=True,
                                             text=True).stdout  # and the tap's, the bridge's
        assert report.answer(f"{OUTSIDE_ADDRESS}:{PORT}") == "host got hello from rt", report
        assert listener.result() == "got 'hello from rt' from 192.0.2.15"  # the guest's own address
    finally:
        listener.close()
    destroy_all(lab, "routed", "vnrt0")


ISOLATED = """<network>
  <name>{name}</name>
  <bridge name='{bridge}' stp='off'/>
{port}  <ip address='192.0.2.1' prefix='24'/>
</network>
"""


def test_isolated_network_guests_reach_each_other_but_not_outside(lab, outside):
    define_network(lab, ISOLATED.format(name="iso", bridge="vniso0", port=""), "iso")
    ip("-n", outside, "route", "add", "192.0.2.0/24", "via", UPLINK_ADDRESS)
    guests = [lab.boot(f"iso{i}", network_nic(mac, "iso"),
                       {"ip": f"192.0.2.1{i}/24", "gw": "192.0.2.1", "tries": 5,
                        "ping": f"192.0.2.1{3 - i},{OUTSIDE_ADDRESS}"})
              for i, mac in ((1, MAC), (2, MAC2))]
    for i, guest in enumerate(guests, start=1):
        report = guest.report()
        assert report[f"ping 192.0.2.1{3 - i}"].startswith("ok "), report
        assert report[f"ping {OUTSIDE_ADDRESS}"].startswith("fail "), report
    destroy_all(lab, "iso", "vniso0")


def test_isolated_ports_reach_the_gateway_but_not_each_other(lab):
    define_network(lab, ISOLATED.format(name="ports", bridge="vnpi0", port="  <port isolated='yes'/>\n"), "ports")
    guests = [lab.boot(f"pi{i}", network_nic(mac, "ports"),
                       {"ip": f"192.0.2.1{i}/24", "tries": 5, "ping": f"192.0.2.1,192.0.2.1{3 - i}"})
              for i, mac in ((1, MAC), (2, MAC2))]
    for i, guest in enumerate(guests, start=1):
        report = guest.report()
        assert report["ping 192.0.2.1"].startswith("ok "), report
        assert report[f"ping 192.0.2.1{3 - i}"].startswith("fail "), report
        tap = lab.d.record(guest.name)["taps"]["net0"]
        detail = subprocess.run(["ip", "-n", lab.ns, "-d", "link", "show", tap], capture_output=True, text=True).stdout
        assert "isolated on" in detail
    destroy_all(lab, "ports", "vnpi0")
    assert nft_tables(lab.ns) == [] and dnsmasq_pids(lab.d.runtime) == []
