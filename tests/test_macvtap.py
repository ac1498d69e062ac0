"""<interface type='direct'> (macvtap) for real: macvtaps made over netlink on a veth in a fresh
namespace, QEMU started with their fds, and real guests whose packets show what each mode does.

The lower device is one end of a veth; the other end (in a second namespace, `peer`) plays the
switch port and a host on it. A macvtap in bridge mode reaches its siblings on the same lower device
inside the kernel; in vepa mode everything goes out to the switch, so siblings reach each other only
when the switch sends frames back out of the port they came in on (a bridge port in hairpin mode);
in private mode not even then. The host cannot reach its guests through the lower device itself,
hence the peer on the far end.
"""

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import uuid

import pytest

from guest import Guest, cmdline_for
from hostcases import (
    QEMU,
    assert_clean,
    domain_xml,
    fails,
    ip,
    ip_json,
    links,
    live_pids,
    ok,
    snapshot,
    user_workspace,
    virtnet,
    write,
)
from test_guest_packets import host_ping
from test_guest_scenarios import DISK_TEXT, virt_install_xml
from test_hotplug import acpi_xml, peripherals

from virtnet.host import macvtap, tun

MAC1, MAC2 = "52:54:00:d1:00:01", "52:54:00:d1:00:02"


def direct(mac, lower="mvl0", mode=None, extra="", model="virtio"):
    mode = f" mode='{mode}'" if mode else ""
    return (f"    <interface type='direct'>\n      <mac address='{mac}'/>\n      <source dev='{lower}'{mode}/>\n"
            f"{extra}      <model type='{model}'/>\n    </interface>\n")


def veth(ns, lower="mvl0", far="mvl1", far_ns=None):
    """A veth: LOWER in NS, FAR in FAR_NS (default NS too), both up."""
    ip("-n", ns, "link", "add", lower, "type", "veth", "peer", "name", far, *(["netns", far_ns] if far_ns else []))
    ip("-n", ns, "link", "set", lower, "up")
    ip("-n", far_ns or ns, "link", "set", far, "up")


def link_info(ns, name):
    [dev] = ip_json(ns, "-d", "link", "show", "dev", name)
    return dev


def device_number(ns, name):
    """The dev_t of macvtap NAME's character device, as the namespace's sysfs gives it."""
    text = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"cat /sys/class/net/{name}/macvtap/tap*/dev"],
                          capture_output=True, text=True, check=True).stdout
    major, minor = map(int, text.strip().split(":"))
    return os.makedev(major, minor)


def fds_on(pid, number):
    """How many fds of process PID are open on character device NUMBER."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            info = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        count += stat.S_ISCHR(info.st_mode) and info.st_rdev == number
    return count


def fd_flags(fd):
    return tun._IFREQ.unpack(fcntl.ioctl(fd, tun.TUNGETIFF, tun._IFREQ.pack(b"", 0)))[1]


@pytest.fixture
def peer():
    """A second namespace: the far side of the lower device's veth."""
    name = f"vnt-peer-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        ip("netns", "del", name, check=False)


# --- plan ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["sh", "networkd"])
def test_plan_formats_for_an_administrator_say_there_is_nothing_to_pre_create(fmt):
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "direct.xml")
    result = subprocess.run([sys.executable, "-m", "virtnet", "plan", "--format", fmt, "--owner", "root", example],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "# interface net0 (type='direct' on mvl0): virtnet start (as root) creates the macvtap" in result.stdout
    assert "there is no tap to pre-create" not in result.stdout
    if fmt == "sh":
        assert subprocess.run(["sh", "-n"], input=result.stdout, text=True).returncode == 0
        assert not [line for line in result.stdout.splitlines() if line.startswith("ip ")]


# --- the host side ------------------------------------------------------------------------------


def test_start_makes_each_macvtap_with_the_guests_mac_one_fd_per_queue_and_destroy_deletes_it(ns, dirs, tmp_path):
    d = dirs
    veth(ns)
    before = snapshot(ns)
    nics = (direct(MAC1, mode="bridge", extra="      <driver queues='2'/>\n")
            + direct(MAC2, extra="      <target dev='mvt%d'/>\n", model="rtl8139"))
    ok(virtnet(d, "define", write(tmp_path / "mv.xml", domain_xml("mv", nics))))
    ok(virtnet(d, "start", "mv", "--paused", netns=ns))
    pid = d.live("mv").pid

    assert d.record("mv")["taps"] == {"net0": "macvtap0", "net1": "mvt0"}
    for name, mac, mode in (("macvtap0", MAC1, "bridge"), ("mvt0", MAC2, "vepa")):  # vepa: libvirt's default
        info = link_info(ns, name)
        assert info["linkinfo"]["info_kind"] == "macvtap" and info["linkinfo"]["info_data"]["mode"] == mode, info
        # The guest's own MAC (a tap gets fe:...), on the lower device, and down while the vCPUs are
        # stopped (--paused), as libvirt keeps it.
        assert (info["address"], info["link"], "UP" in info["flags"]) == (mac, "mvl0", False), info
    # Up once the vCPUs run, down while they are suspended (libvirt's rule).
    for verb, up in (("resume", True), ("suspend", False), ("resume", True)):
        ok(virtnet(d, verb, "mv", netns=ns))
        assert ["UP" in link_info(ns, name)["flags"] for name in ("macvtap0", "mvt0")] == [up, up], verb
    # QEMU holds one fd per queue on each macvtap's own character device.
    assert fds_on(pid, device_number(ns, "macvtap0")) == 2
    assert fds_on(pid, device_number(ns, "mvt0")) == 1
    live = ok(virtnet(d, "dumpxml", "mv"))
    assert "<target dev='macvtap0'/>" in live and "<target dev='mvt0'/>" in live
    assert "macvtap0" not in ok(virtnet(d, "dumpxml", "mv", "--inactive"))
    assert ok(virtnet(d, "domiflist", "mv")).splitlines()[2].split()[:3] == ["macvtap0", "direct", "mvl0"]
    ok(virtnet(d, "domif-setlink", "mv", "macvtap0", "down", netns=ns))
    assert ok(virtnet(d, "domif-getlink", "mv", "macvtap0", netns=ns)) == "macvtap0 down\n"

    ok(virtnet(d, "destroy", "mv"))
    assert_clean(ns, d, "mv", before, pid)


def test_queues_get_vnet_hdr_and_multi_queue_per_fd_as_libvirt_sets_them(netlink, netns):
    ip("-n", netns, "link", "add", "mvl0", "type", "veth", "peer", "name", "mvl1")
    netlink.add_macvtap("mvq0", "mvl0", MAC1, "bridge")
    # A macvtap fd starts with IFF_VNET_HDR: a model without vnet headers must have it turned off.
    for queues, vnet_hdr in ((2, True), (1, False), (3, False)):
        fds = macvtap.open_queues("mvq0", queues, vnet_hdr=vnet_hdr)
        try:
            assert len(fds) == queues
            for fd in fds:
                flags = fd_flags(fd)
                assert bool(flags & tun.IFF_VNET_HDR) == vnet_hdr, (queues, vnet_hdr, hex(flags))
                assert bool(flags & tun.IFF_MULTI_QUEUE) == (queues > 1), (queues, vnet_hdr, hex(flags))
        finally:
            for fd in fds:
                os.close(fd)
    netlink.delete("mvq0")


def test_dev_tap_of_another_namespaces_macvtap_is_never_opened(ns, inside, peer):
    """ifindexes count per namespace, /dev is global: /dev/tap50 below is the peer namespace's
    macvtap, and opening it by name (as libvirt does) would give our guest the other one's queue."""
    for where in (peer, ns):  # the peer's first, so /dev/tap50 is its device
        veth(where)
        ip("-n", where, "link", "add", "link", "mvl0", "name", "mvt0", "index", "50", "type", "macvtap", "mode", "bridge")
    ours, theirs = device_number(ns, "mvt0"), device_number(peer, "mvt0")
    assert ours != theirs and os.stat("/dev/tap50").st_rdev != ours
    fds = macvtap.open_queues("mvt0", 2, vnet_hdr=True)  # the test process is inside NS
    try:
        assert [os.fstat(fd).st_rdev for fd in fds] == [ours, ours]
    finally:
        for fd in fds:
            os.close(fd)
    assert not [e for e in os.listdir("/dev") if e.startswith(".virtnet-macvtap-")]  # the private node is gone


def test_an_administrators_macvtap_is_opened_as_ethernet_managed_no_and_left_untouched(ns, dirs, tmp_path):
    """libvirt's way to use a pre-created macvtap: <interface type='ethernet'> with
    <target managed='no'>; it is opened through its tap device, nothing on it changes."""
    d = dirs
    veth(ns)
    ip("-n", ns, "link", "add", "link", "mvl0", "name", "mvadm", "address", "02:00:00:00:0a:01", "type", "macvtap",
       "mode", "bridge")
    ip("-n", ns, "link", "set", "mvadm", "up")
    before = snapshot(ns)
    nic = ("    <interface type='ethernet'>\n      <mac address='52:54:00:d1:00:09'/>\n"
           "      <target dev='mvadm' managed='no'/>\n      <model type='virtio'/>\n      <driver queues='2'/>\n"
           "    </interface>\n")
    ok(virtnet(d, "define", write(tmp_path / "adm.xml", domain_xml("adm", nic))))
    ok(virtnet(d, "start", "adm", "--paused", netns=ns))
    pid = d.live("adm").pid
    assert fds_on(pid, device_number(ns, "mvadm")) == 2
    assert snapshot(ns) == before  # not one attribute changed, the MAC included
    ok(virtnet(d, "destroy", "adm"))
    assert "mvadm" in links(ns)
    assert_clean(ns, d, "adm", before, pid)


def test_an_ordinary_user_starts_a_domain_on_an_administrators_macvtap(ns, unprivileged_user):
    """As for a tap: root creates the macvtap and gives the user its character device; the user's
    virtnet opens it without privileges and changes nothing."""
    user = unprivileged_user
    veth(ns)
    index = next(i for i in range(3000, 4000) if not os.path.exists(f"/dev/tap{i}"))  # no other macvtap's node
    ip("-n", ns, "link", "add", "link", "mvl0", "name", "mvusr", "index", str(index), "type", "macvtap", "mode",
       "bridge")
    ip("-n", ns, "link", "set", "mvusr", "up")
    number = device_number(ns, "mvusr")
    assert os.stat(f"/dev/tap{index}").st_rdev == number
    before = snapshot(ns)
    nic = ("    <interface type='ethernet'>\n      <mac address='52:54:00:d1:00:0a'/>\n"
           "      <target dev='mvusr' managed='no'/>\n      <model type='virtio'/>\n      <driver queues='2'/>\n"
           "    </interface>\n")
    with user_workspace(user, ns, "vnt-mvu-") as space:
        os.chown(f"/dev/tap{index}", space.uid, -1)
        xml = write(space.work / "um.xml", domain_xml("um", nic), mode=0o644)
        ok(space.virtnet("define", xml))
        ok(space.virtnet("start", "um", "--paused"))
        pid = json.loads((space.state / "running" / "um.json").read_text())["pid"]
        assert os.stat(f"/proc/{pid}").st_uid == space.uid  # QEMU runs as the user
        assert fds_on(pid, number) == 2
        assert snapshot(ns) == before
        ok(space.virtnet("destroy", "um"))
    assert snapshot(ns) == before


def test_passthrough_lends_the_guests_mac_to_the_lower_device_until_destroy(ns, dirs, tmp_path):
    d = dirs
    veth(ns)
    own = links(ns)["mvl0"].mac
    before = snapshot(ns)
    ok(virtnet(d, "define", write(tmp_path / "pt.xml", domain_xml("pt", direct(MAC1, mode="passthrough")))))
    ok(virtnet(d, "start", "pt", "--paused", netns=ns))
    pid = d.live("pt").pid
    assert links(ns)["mvl0"].mac == MAC1 != own
    info = link_info(ns, "macvtap0")
    assert info["linkinfo"]["info_data"]["mode"] == "passthru" and info["address"] == MAC1, info
    ok(virtnet(d, "destroy", "pt"))
    assert links(ns)["mvl0"].mac == own
    assert_clean(ns, d, "pt", before, pid)


def test_a_failed_start_deletes_the_macvtaps_it_made(ns, dirs, tmp_path):
    d = dirs
    veth(ns)
    before = snapshot(ns)
    nics = direct(MAC1, mode="bridge") + direct(MAC2, lower="nosuchdev0", mode="bridge")
    ok(virtnet(d, "define", write(tmp_path / "fl.xml", domain_xml("fl", nics))))
    line = fails(virtnet(d, "start", "fl", netns=ns))
    assert "nosuchdev0" in line and "<source dev>" in line, line
    assert_clean(ns, d, "fl", before)


def test_a_macvtap_is_hot_plugged_and_destroy_deletes_it(ns, dirs, tmp_path):
    d = dirs
    veth(ns)
    before = snapshot(ns)
    ok(virtnet(d, "define", write(tmp_path / "hp.xml", acpi_xml("hp"))))
    ok(virtnet(d, "start", "hp", "--paused", netns=ns))
    pid = d.live("hp").pid
    ok(virtnet(d, "attach-interface", "hp", "direct", "mvl0", "--source-mode", "bridge", "--model", "virtio",
               "--mac", MAC2, netns=ns))
    devices, network = peripherals(d, "hp")
    assert "net1" in devices and network["net1"] == ["hostnet1"]
    assert d.live("hp").taps["net1"] == "macvtap0"
    info = link_info(ns, "macvtap0")
    # Plugged into a paused guest: down until its vCPUs run.
    assert (info["address"], info["link"], "UP" in info["flags"]) == (MAC2, "mvl0", False), info
    assert fds_on(pid, device_number(ns, "macvtap0")) == 1
    ok(virtnet(d, "resume", "hp", netns=ns))
    assert "UP" in link_info(ns, "macvtap0")["flags"]
    ok(virtnet(d, "destroy", "hp"))
    assert_clean(ns, d, "hp", before, pid)


# --- packets through real guests -------------------------------------------------------------------

MODES = [
    # mode, the far side a bridge port in hairpin mode, whether the two guests reach each other
    pytest.param("bridge", False, True, id="bridge"),
    pytest.param("vepa", False, False, id="vepa"),
    pytest.param("vepa", True, True, id="vepa-hairpin-switch"),
    pytest.param("private", True, False, id="private-hairpin-switch"),
]


@pytest.mark.parametrize("mode, hairpin, reach", MODES)
def test_two_guests_on_one_lower_device(lab, peer, mode, hairpin, reach):
    ns, d = lab.ns, lab.d
    veth(ns, far_ns=peer)
    if hairpin:
        ip("-n", peer, "link", "add", "pbr0", "type", "bridge")
        ip("-n", peer, "link", "set", "mvl1", "master", "pbr0")
        ip("-n", peer, "link", "set", "mvl1", "type", "bridge_slave", "hairpin", "on")
        ip("-n", peer, "link", "set", "pbr0", "up")
    ip("-n", peer, "addr", "add", "10.0.5.254/24", "dev", "pbr0" if hairpin else "mvl1")
    before = snapshot(ns)

    # The second guest first, so that it is up (its address set, the peer pinged) when the first
    # one tries to reach it.
    second = lab.boot("mv2", direct(MAC2, mode=mode), {"ip": "10.0.5.2/24", "ping": "10.0.5.254"})
    assert second.report()["ping 10.0.5.254"].startswith("ok "), second.report()
    first = lab.boot("mv1", direct(MAC1, mode=mode),
                     {"ip": "10.0.5.1/24", "ping": "10.0.5.254,10.0.5.2", "tries": "10" if reach else "4"})
    report = first.report()

    assert report.nic == {"": "eth0", "mac": MAC1, "mtu": "1500", "carrier": "1"}, report
    assert report["ping 10.0.5.254"].startswith("ok "), report
    assert report["ping 10.0.5.2"].startswith("ok " if reach else "fail "), report
    # The peer reaches both guests through the lower device, in every mode.
    for address in ("10.0.5.1", "10.0.5.2"):
        reply = host_ping(peer, address)
        assert reply.stdout.strip() == "2/2", (address, reply.stdout + reply.stderr)
    for guest, mac in ((first, MAC1), (second, MAC2)):
        info = link_info(ns, d.record(guest.name)["taps"]["net0"])
        assert (info["address"], info["link"], info["linkinfo"]["info_data"]["mode"]) == (mac, "mvl0", mode), info

    first.destroy()
    second.destroy()
    assert_clean(ns, d, "mv1", before, first.pid)


def test_virt_install_direct_domain_boots_and_reaches_the_peer(lab, peer):
    """`virt-install --network type=direct,source=mvl0` writes <source dev='mvl0' mode='vepa'/>
    (virt-install's default mode) into its usual q35 domain."""
    ns, d, tmp_path, image = lab.ns, lab.d, lab.tmp_path, lab.image
    veth(ns, far_ns=peer)
    ip("-n", peer, "addr", "add", "10.0.6.254/24", "dev", "mvl1")
    before = snapshot(ns)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.write(f"{DISK_TEXT}\n".encode())
        f.truncate(4 * 1024 * 1024)
    name, serial = "vi-direct", tmp_path / "vi-direct.serial"
    cmdline = cmdline_for(name, {"ip": "10.0.6.2/24", "ping": "10.0.6.254", "disk": "vda"})
    nic = direct(MAC1, mode="vepa")
    ok(virtnet(d, "define", write(tmp_path / f"{name}.xml", virt_install_xml(
        name, image.domain_type, "q35", image.kernel, image.initrd, cmdline, disk, serial, nic, graphics=False))))
    guest = Guest(image, d, name, serial, ns)
    lab.guests.append(guest)
    guest.start()
    report = guest.report()

    assert report.nic["mac"] == MAC1 and report.nic["carrier"] == "1", report
    assert report["disk"] == f"vda sectors 8192 first {DISK_TEXT}", report
    assert report["ping 10.0.6.254"].startswith("ok "), report
    reply = host_ping(peer, "10.0.6.2")
    assert reply.stdout.strip() == "2/2", reply.stdout + reply.stderr
    assert link_info(ns, d.record(name)["taps"]["net0"])["linkinfo"]["info_data"]["mode"] == "vepa"

    guest.destroy()
    assert_clean(ns, d, name, before, guest.pid)


def test_a_macvtap_hot_plugged_into_a_running_guest_carries_its_pings_and_detach_deletes_it(lab, peer):
    ns, d = lab.ns, lab.d
    veth(ns, far_ns=peer)
    ip("-n", peer, "addr", "add", "10.0.7.254/24", "dev", "mvl1")
    before = snapshot(ns)
    guest = lab.boot("mvhp", "", {"watch": 1, "hotip": "10.0.7.1/24", "hotping": "10.0.7.254"})
    guest.wait_for("done$")

    ok(virtnet(d, "attach-interface", "mvhp", "direct", "mvl0", "--source-mode", "bridge", "--model", "virtio",
               "--mac", MAC1, netns=ns))
    dev = guest.wait_for(f"hotplug (eth\\d+) mac {MAC1}$").split()[1]
    assert guest.wait_for(f"hotping {dev} 10.0.7.254 ").split()[3] == "ok", guest.diagnostics()
    macvtap_name = d.live("mvhp").taps["net0"]
    assert link_info(ns, macvtap_name)["address"] == MAC1

    assert ok(virtnet(d, "detach-interface", "mvhp", "direct", "--mac", MAC1, netns=ns)) == \
        "Interface detached successfully\n"
    guest.wait_for(f"unplug {dev}$", timeout=30)
    assert macvtap_name not in links(ns)
    assert snapshot(ns) == before
    guest.destroy()
    assert_clean(ns, d, "mvhp", before, guest.pid)


def test_a_start_killed_after_making_the_macvtaps_is_undone_by_the_next_command(ns, dirs, tmp_path):
    """A macvtap outlives the process that made it (unlike a tap), and passthrough changed the
    lower device's MAC: both are in the runtime record before they happen, so the next command
    undoes them when the start is killed while QEMU hangs."""
    from test_interrupted_start import hanging_emulator, spawn_start, wait_for

    d = dirs
    veth(ns)
    veth(ns, "mvp0", "mvp1")
    before = snapshot(ns)
    emulator = hanging_emulator(tmp_path)
    xml = domain_xml("mvk", direct(MAC1, mode="bridge") + direct(MAC2, lower="mvp0", mode="passthrough"))
    ok(virtnet(d, "define", write(tmp_path / "mvk.xml", xml.replace(f"<emulator>{QEMU}</emulator>",
                                                                    f"<emulator>{emulator}</emulator>"))))
    start = spawn_start(d, "mvk", ns)
    try:
        assert wait_for(lambda: live_pids(str(emulator))), start.stderr and start.stderr.read()
        host = links(ns)
        assert {"macvtap0", "macvtap1"} <= set(host) and host["mvp0"].mac == MAC2
    finally:
        start.send_signal(signal.SIGKILL)
        start.wait()
    listing = virtnet(d, "list", "--all")
    ok(listing)
    assert "domain 'mvk': its start (virtnet pid" in listing.stderr, listing.stderr
    assert_clean(ns, d, "mvk", before)


def test_a_passthrough_guest_reaches_the_peer_with_the_mac_it_lends_the_device(lab, peer):
    ns, d = lab.ns, lab.d
    veth(ns, far_ns=peer)
    ip("-n", peer, "addr", "add", "10.0.8.254/24", "dev", "mvl1")
    own = links(ns)["mvl0"].mac
    before = snapshot(ns)
    guest = lab.boot("mvpt", direct(MAC1, mode="passthrough"), {"ip": "10.0.8.1/24", "ping": "10.0.8.254"})
    report = guest.report()

    assert report.nic["mac"] == MAC1 and report["ping 10.0.8.254"].startswith("ok "), report
    reply = host_ping(peer, "10.0.8.1")
    assert reply.stdout.strip() == "2/2", reply.stdout + reply.stderr
    # The peer learnt the guest's MAC, which the lower device carries meanwhile.
    neighbours = {n["dst"]: n.get("lladdr") for n in ip_json(peer, "neigh", "show", "dev", "mvl1")}
    assert neighbours.get("10.0.8.1") == MAC1 and links(ns)["mvl0"].mac == MAC1 != own

    guest.destroy()
    assert links(ns)["mvl0"].mac == own
    assert_clean(ns, d, "mvpt", before, guest.pid)
