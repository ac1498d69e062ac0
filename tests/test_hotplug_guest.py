"""Hot-plug seen from inside a real guest (the tiny guest of tests/guest.py): a NIC attached while
the guest runs appears in it, carries its pings, and after detach is gone from the guest, from
QEMU and from the host, with nothing left.

The guest boots without a NIC and watches for new ones (tg.watch=1): each gets 192.0.2.15/24 and
pings 192.0.2.2, which is, in turn, the host side of a managed tap, an administrator's tap
(managed='no'), a bridge, SLIRP's gateway, a small responder at the far end of a socket backend
(it answers ARP and ping in the socket's framing: a 4-byte length, then the frame), and the bridge
of a virtnet network. (tests/test_macvtap.py hot-plugs a macvtap the same way.)
"""

import re
import subprocess
import sys
import time

from hostcases import assert_clean, fails, ip, links, ok, qmp, snapshot, virtnet, write

GUEST_IP, HOST_IP = "192.0.2.15/24", "192.0.2.2"
HOT = {"watch": 1, "hotip": GUEST_IP, "hotping": HOST_IP}
TIMEOUT = 150.0

# The far end of a `server` socket backend: connects to QEMU's listening socket and answers the
# guest's ARP requests and pings for HOST_IP. It prints `frames N` (what it got from the guest) once
# it has answered a ping.
RESPONDER = r"""
import socket, struct, sys, time
host_ip, port = socket.inet_aton(sys.argv[1]), int(sys.argv[2])
my_mac = bytes.fromhex("020000000201")
for _ in range(100):
    try:
        conn = socket.create_connection(("127.0.0.1", port), timeout=60)
        break
    except OSError:
        time.sleep(0.1)
conn.settimeout(120)

def read(n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data

def send(frame):
    conn.sendall(struct.pack(">I", len(frame)) + frame)

def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF

frames = 0
while True:
    frame = read(struct.unpack(">I", read(4))[0])
    frames += 1
    dst, src, kind = frame[:6], frame[6:12], frame[12:14]
    if kind == b"\x08\x06" and frame[20:22] == b"\x00\x01" and frame[38:42] == host_ip:  # ARP who-has
        sender = frame[22:32]
        send(src + my_mac + b"\x08\x06" + frame[14:20] + b"\x00\x02" + my_mac + host_ip + sender)
    elif kind == b"\x08\x00" and frame[23] == 1 and frame[30:34] == host_ip and frame[34] == 8:  # ICMP echo
        ihl = (frame[14] & 0x0F) * 4
        ip_header = bytearray(frame[14:14 + ihl])
        ip_header[12:16], ip_header[16:20] = frame[30:34], frame[26:30]
        ip_header[10:12] = b"\0\0"
        ip_header[10:12] = struct.pack("!H", checksum(bytes(ip_header)))
        icmp = bytearray(frame[14 + ihl:])
        icmp[0], icmp[2:4] = 0, b"\0\0"
        icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
        send(src + my_mac + b"\x08\x00" + bytes(ip_header) + bytes(icmp))
        print(f"frames {frames}", flush=True)
"""


# An isolated network (no forwarding, no DHCP) whose bridge is the host the guest pings.
NETWORK = f"""<network>
  <name>hpnet</name>
  <bridge name='hpnet0'/>
  <ip address='{HOST_IP}' prefix='24'/>
</network>
"""


def count(guest, pattern):
    regex = re.compile(pattern)
    return sum(1 for line in guest.lines() if regex.match(line))


def wait_count(guest, pattern, n, timeout=TIMEOUT):
    """Wait until N report lines match PATTERN."""
    deadline = time.monotonic() + timeout
    while count(guest, pattern) < n:
        assert time.monotonic() < deadline, f"no {n}x `{pattern}` within {timeout:.0f} s\n{guest.diagnostics()}"
        time.sleep(0.1)


def qemu_devices(d, name):
    with qmp(d.live(name).qmp) as client:
        return {p["name"] for p in client.execute("qom-list", {"path": "/machine/peripheral"})}


def test_a_nic_of_each_kind_is_plugged_in_passes_pings_and_goes_again(lab, tmp_path):
    d, ns = lab.d, lab.ns
    ip("-n", ns, "link", "set", "lo", "up")
    # The administrator's tap (managed='no') and a bridge, each with the address the guest pings
    # (only one of them is up at a time: a second 192.0.2.2 would answer for the first).
    ip("-n", ns, "tuntap", "add", "dev", "hpadm0", "mode", "tap", "vnet_hdr")
    ip("-n", ns, "addr", "add", f"{HOST_IP}/24", "dev", "hpadm0")
    ip("-n", ns, "link", "add", "hpbr0", "address", "02:00:00:00:0b:02", "type", "bridge")
    before = snapshot(ns)
    guest = lab.boot("hg", "", HOT)
    guest.wait_for("done$")
    pid = guest.pid

    devices = {
        "managed tap": "<interface type='ethernet'>\n  <mac address='52:54:00:0c:00:01'/>\n"
                       f"  <source><ip address='{HOST_IP}' prefix='24'/></source>\n"
                       "  <model type='virtio'/>\n</interface>\n",
        "managed='no' tap": "<interface type='ethernet'>\n  <mac address='52:54:00:0c:00:02'/>\n"
                            "  <target dev='hpadm0' managed='no'/>\n  <model type='virtio'/>\n</interface>\n",
        "bridge": "<interface type='bridge'>\n  <mac address='52:54:00:0c:00:03'/>\n"
                  "  <source bridge='hpbr0'/>\n  <model type='virtio'/>\n</interface>\n",
        "slirp": "<interface type='user'>\n  <mac address='52:54:00:0c:00:04'/>\n"
                 "  <ip family='ipv4' address='192.0.2.0' prefix='24'/>\n  <model type='virtio'/>\n</interface>\n",
        "socket": "<interface type='server'>\n  <mac address='52:54:00:0c:00:05'/>\n"
                  "  <source address='127.0.0.1' port='5999'/>\n  <model type='virtio'/>\n</interface>\n",
        "network": "<interface type='network'>\n  <mac address='52:54:00:0c:00:06'/>\n"
                   "  <source network='hpnet'/>\n  <model type='virtio'/>\n</interface>\n",
    }
    for cycle, (kind, xml) in enumerate(devices.items(), start=1):
        mac = re.search(r"mac address='([^']+)'", xml).group(1)
        path = write(tmp_path / f"nic{cycle}.xml", xml)
        if kind == "managed='no' tap":
            ip("-n", ns, "link", "set", "hpadm0", "up")
        if kind == "bridge":
            ip("-n", ns, "addr", "add", f"{HOST_IP}/24", "dev", "hpbr0")
            ip("-n", ns, "link", "set", "hpbr0", "up")
        if kind == "network":  # an isolated virtnet network whose bridge has the address
            ok(virtnet(d, "net-define", write(tmp_path / "hpnet.xml", NETWORK)))
            ok(virtnet(d, "net-start", "hpnet", netns=ns))
        responder = None
        if kind == "socket":
            responder = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", RESPONDER, HOST_IP,
                                          "5999"], stdout=subprocess.PIPE, text=True)
        try:
            assert ok(virtnet(d, "attach-device", "hg", path, "--live", netns=ns)) == "Device attached successfully\n"
            alias = "net0"  # one past the highest alias in use (libvirt's rule): the previous NIC went
            assert alias in qemu_devices(d, "hg")
            line = guest.wait_for(f"hotplug (eth\\d+) mac {mac}$")
            dev = line.split()[1]
            ping = guest.wait_for(f"hotping {dev} {HOST_IP} ", timeout=TIMEOUT)
            assert ping.split()[3] == "ok", f"{kind}: the guest's pings through its new NIC failed\n{guest.diagnostics()}"
            if responder is not None:
                assert responder.stdout.readline().startswith("frames "), "the responder answered no ping"
            live = ok(virtnet(d, "dumpxml", "hg"))
            assert f"<alias name='{alias}'/>" in live and mac in live

            assert ok(virtnet(d, "detach-device", "hg", path, "--live", netns=ns)) == "Device detached successfully\n"
            wait_count(guest, f"unplug {dev}$", count(guest, f"hotplug {dev} ") - 0, timeout=30)
            assert alias not in qemu_devices(d, "hg")
            assert mac not in ok(virtnet(d, "dumpxml", "hg"))
            record = d.live("hg")
            assert [a for a in record.teardown if a.device == alias] == [] and alias not in record.taps
            assert [a.kind for a in record.teardown] == ["stop-qemu"]
        finally:
            if responder is not None:
                responder.kill()
                responder.wait()
        if kind == "managed='no' tap":
            tap = links(ns)["hpadm0"]
            assert tap.mac == before["links"]["hpadm0"].mac and tap.mtu == before["links"]["hpadm0"].mtu
            ip("-n", ns, "link", "set", "hpadm0", "down")  # left as the administrator made it: up is ours here
        if kind == "bridge":
            ip("-n", ns, "link", "set", "hpbr0", "down")
            ip("-n", ns, "addr", "del", f"{HOST_IP}/24", "dev", "hpbr0")
        if kind == "network":
            ok(virtnet(d, "net-destroy", "hpnet"))
        assert_unchanged_but_qemu(ns, before)

    guest.destroy()
    assert_clean(ns, d, "hg", before, pid)


def assert_unchanged_but_qemu(ns, before):
    from hostcases import snapshot_diff

    diff = snapshot_diff(before, snapshot(ns))
    assert not diff, f"after a detach the namespace differs from before the attach:\n{diff}"


def test_detach_waits_for_a_guest_that_releases_late_and_renumbers_nothing(lab, tmp_path):
    """A suspended guest cannot release a NIC: detach times out and changes nothing; once resumed,
    the guest acts on QEMU's pending request, and a second detach finishes the job. The other NIC
    keeps its alias, PCI slot and tap throughout."""
    d, ns = lab.d, lab.ns
    before = snapshot(ns)
    guest = lab.boot("hl", "", {"watch": 1})  # nothing to ping: each new NIC is only reported
    guest.wait_for("done$")
    for mac in ("52:54:00:0d:00:01", "52:54:00:0d:00:02"):
        ok(virtnet(d, "attach-interface", "hl", "ethernet", "--mac", mac, "--model", "virtio", netns=ns))
        guest.wait_for(f"hotplug eth\\d mac {mac}$")
    taps = d.live("hl").taps
    kept = re.search(r"<interface type='ethernet'>\s*<mac address='52:54:00:0d:00:02'/>.*?</interface>",
                     ok(virtnet(d, "dumpxml", "hl")), re.S).group(0)
    assert "<alias name='net1'/>" in kept and f"<target dev='{taps['net1']}'/>" in kept

    ok(virtnet(d, "suspend", "hl"))
    line = fails(virtnet(d, "detach-interface", "hl", "ethernet", "--mac", "52:54:00:0d:00:01", "--timeout", "2",
                         netns=ns))
    assert "the guest did not release net0 within 2 s" in line
    assert "net0" in qemu_devices(d, "hl") and taps["net0"] in links(ns)
    ok(virtnet(d, "resume", "hl"))
    guest.wait_for("unplug eth0$")
    deadline = time.monotonic() + 30  # QEMU drops the device once the guest's eject has gone through
    while "net0" in qemu_devices(d, "hl"):
        assert time.monotonic() < deadline, "QEMU still has net0 30 s after the guest let it go"
        time.sleep(0.1)
    ok(virtnet(d, "detach-interface", "hl", "ethernet", "--mac", "52:54:00:0d:00:01", netns=ns))
    assert taps["net0"] not in links(ns) and "52:54:00:0d:00:01" not in ok(virtnet(d, "dumpxml", "hl"))
    record = d.live("hl")
    assert record.taps == {"net1": taps["net1"]} and taps["net1"] in links(ns)
    assert kept in ok(virtnet(d, "dumpxml", "hl")) and "net1" in qemu_devices(d, "hl")
    assert [a.kind for a in record.teardown] == ["delete-tap", "stop-qemu"]
    guest.destroy()
    assert_clean(ns, d, "hl", before)
