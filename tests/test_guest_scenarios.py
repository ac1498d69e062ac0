"""Whole scenarios with the tiny guest (tools/tiny-guest.py) sending real packets.

1. The seed case end to end: root pre-creates the tap with the script `virtnet plan --format sh
   --owner USER` writes and gives it a host address; a real non-root USER defines and starts the
   seed domain (examples/net-eth-unmanaged-tap.xml) booting the tiny guest on it; the guest pings
   the host and the host pings the guest; after destroy the tap is as the administrator left it.
2. Domains shaped like virt-install's output (q35 or pc, a virtio disk, a pty serial port and
   console, the guest agent channel, a virtio RNG, a balloon, sometimes graphics and video) with a
   bridge, user or ethernet NIC, and virt-install's `--boot kernel=...,initrd=...,kernel_args=...`
   form, boot under `virtnet start`; each guest reports its NIC and disk and reaches a peer.

The host pings with test_guest_packets' raw-socket ping (the test's packages have no ping binary).
"""

import dataclasses
import os
import shutil

import pytest

from guest import Guest, add_boot, cmdline_for
from hostcases import (
    QEMU,
    SEED,
    SEED_NAME,
    SEED_TAP,
    Dirs,
    assert_clean,
    assert_tap_as_left,
    destroy_leaves_the_tap,
    ip,
    links,
    live_state,
    ok,
    precreate_taps,
    snapshot,
    uids_of,
    user_workspace,
    virtnet,
    write,
)
from test_guest_packets import Listener, host_ping, link_stats

SEED_MAC = "fe:11:22:33:44:55"


# --- 1. the seed case, as a real non-root user, with packets ------------------------------------------


def test_a_user_boots_the_seed_domain_on_the_precreated_tap_and_packets_pass_both_ways(
        ns, dirs, unprivileged_user, tiny_guest):
    user = unprivileged_user
    with user_workspace(user, ns, "vnt-ug-", tun=True) as space:
        # What the user's QEMU reads and writes: the guest's kernel and initrd (the image cache may
        # be in root's home) copied into the world-readable workspace, and a folder of the user's
        # for the serial console's file.
        kernel, initrd = space.work / "vmlinuz", space.work / "initrd.img"
        shutil.copyfile(tiny_guest.kernel, kernel)
        shutil.copyfile(tiny_guest.initrd, initrd)
        kernel.chmod(0o644)
        initrd.chmod(0o644)
        console = space.work / "console"
        console.mkdir()
        os.chown(console, space.uid, -1)
        serial = console / "serial.log"
        # The user may not open /dev/kvm: TCG unless everyone may.
        kvm = tiny_guest.accel == "kvm" and os.stat("/dev/kvm").st_mode & 0o006 == 0o006
        image = dataclasses.replace(tiny_guest, kernel=str(kernel), initrd=str(initrd),
                                    accel="kvm" if kvm else "tcg")
        cmdline = cmdline_for(SEED_NAME, {"ip": "192.0.2.2/24", "ping": "192.0.2.1"})
        xml = write(space.work / "seed.xml", add_boot(SEED.read_text(), image, cmdline, serial), 0o644)

        # The administrator's part, as root in the namespace: the script plan writes for USER, and
        # an address on the tap for the host's end.
        precreate_taps(dirs, ns, xml, user, space.work)
        ip("-n", ns, "addr", "add", "192.0.2.1/24", "dev", SEED_TAP)
        tap = links(ns)[SEED_TAP]
        tun = dict(tap.tun)
        assert (tap.mac, tap.kind, tap.up) == ("fa:11:22:33:44:55", "tun", True)
        assert (tun["type"], tun["vnet_hdr"], tun["multi_queue"], tun["persist"], tun["user"]) == (
            "tap", "True", "False", "True", user)
        before = snapshot(ns)

        ok(space.virtnet("define", xml))
        out = ok(space.virtnet("start", SEED_NAME))
        pid = live_state(space.state, SEED_NAME).pid
        assert out == f"Domain '{SEED_NAME}' started: QEMU pid {pid}, {SEED_TAP}\n"
        assert uids_of(pid) == [str(space.uid)] * 4

        guest = Guest(image, Dirs(space.state, space.runtime), SEED_NAME, serial, ns)
        guest.pid = pid
        report = guest.report()
        assert report.nic == {"": "eth0", "mac": SEED_MAC, "mtu": "1500", "carrier": "1"}, report
        assert report["addr"] == "192.0.2.2/24", report
        assert report["ping 192.0.2.1"].startswith("ok "), report
        reply = host_ping(ns, "192.0.2.2")
        assert reply.stdout.strip() == "2/2", reply.stdout + reply.stderr
        assert link_stats(ns, SEED_TAP)["rx"]["packets"] > 0
        # While QEMU uses it: the administrator's tap, MAC, MTU, flags and owner as they were.
        assert_tap_as_left(ns, SEED_TAP, tap, before, "while the guest runs")
        destroy_leaves_the_tap(space, SEED_NAME, pid, SEED_TAP, tap, before)


# --- 2. virt-install's domains -------------------------------------------------------------------------


DISK_TEXT = "a disk made by the test"


def virt_install_xml(name, domain_type, machine, kernel, initrd, cmdline, disk, serial_log, interface, *,
                     graphics):
    """A domain as `virt-install --boot kernel=...,initrd=...,kernel_args=...` writes it: its
    usual devices, a pty serial port (with a log file, where the test reads the guest's reports)
    and console, the guest agent channel, RNG and balloon; with GRAPHICS, the VNC display, video
    card and tablet of a desktop install."""
    q35 = machine == "q35"
    usb = "qemu-xhci' ports='15" if q35 else "ich9-ehci1"
    display = ("    <input type='tablet' bus='usb'/>\n"
               "    <graphics type='vnc' port='-1' autoport='yes'>\n      <listen type='address'/>\n    </graphics>\n"
               "    <video>\n      <model type='virtio' heads='1' primary='yes'/>\n    </video>\n") if graphics else ""
    return f"""<domain type='{domain_type}'>
  <name>{name}</name>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://libosinfo.org/linux/2022"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>131072</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='{machine}'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
    <timer name='pit' tickpolicy='delay'/>
    <timer name='hpet' present='no'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <pm>
    <suspend-to-mem enabled='no'/>
    <suspend-to-disk enabled='no'/>
  </pm>
  <devices>
    <emulator>{QEMU}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='{usb}'/>
{interface}    <serial type='pty'>
      <log file='{serial_log}'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
{display}    <memballoon model='virtio'/>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
  </devices>
</domain>
"""


def nic(kind, mac, body):
    return (f"    <interface type='{kind}'>\n      <mac address='{mac}'/>\n{body}"
            "      <model type='virtio'/>\n    </interface>\n")


# kind: (machine, graphics and video or not, the interface's body, the guest's test)
SCENARIOS = {
    "bridge": ("q35", True, "      <source bridge='br0'/>\n", {"ip": "10.0.4.2/24", "ping": "10.0.4.1"}),
    "user": ("pc", False, "", {"ip": "dhcp", "connect": "10.0.2.2:5002"}),
    "ethernet": ("q35", False,
                 "      <source>\n        <ip address='192.0.2.1' family='ipv4' prefix='24'/>\n      </source>\n"
                 "      <target dev='vitap0'/>\n", {"ip": "192.0.2.2/24", "ping": "192.0.2.1"}),
}


@pytest.mark.parametrize("kind", sorted(SCENARIOS))
def test_virt_install_domain_boots_and_its_nic_reaches_a_peer(lab, kind):
    ns = lab.ns
    machine, graphics, body, test = SCENARIOS[kind]
    if kind == "bridge":
        ip("-n", ns, "link", "add", "br0", "type", "bridge")
        # A MAC of its own: a bridge without one takes its ports' and keeps none when they go.
        ip("-n", ns, "link", "set", "br0", "address", "02:00:00:00:0b:00")
        ip("-n", ns, "addr", "add", "10.0.4.1/24", "dev", "br0")
        ip("-n", ns, "link", "set", "br0", "up")
    before = snapshot(ns)
    listener = Listener(ns, "127.0.0.1", 5002) if kind == "user" else None
    try:
        check_virt_install_guest(lab, kind, machine, graphics, body, test, before, listener)
    finally:
        if listener is not None:
            listener.close()


def check_virt_install_guest(lab, kind, machine, graphics, body, test, before, listener):
    """Boot the virt-install domain of KIND; its guest reports its NIC and disk and reaches its peer."""
    ns, d, tmp_path, image = lab.ns, lab.d, lab.tmp_path, lab.image
    mac = "52:54:00:d0:01:01"

    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.write(f"{DISK_TEXT}\n".encode())
        f.truncate(4 * 1024 * 1024)
    name = f"vi-{kind}"
    serial = tmp_path / f"{name}.serial"
    cmdline = cmdline_for(name, {**test, "disk": "vda"})
    xml = write(tmp_path / f"{name}.xml", virt_install_xml(name, image.domain_type, machine, image.kernel, image.initrd,
                                                           cmdline, disk, serial, nic(kind, mac, body),
                                                           graphics=graphics))
    ok(virtnet(d, "define", xml))
    guest = Guest(image, d, name, serial, ns)
    lab.guests.append(guest)
    started = guest.start()
    headless = [line for line in started.stderr.splitlines() if "the guest runs headless" in line]
    if graphics:
        assert len(headless) == 1 and "<graphics type='vnc'>" in headless[0] and "<video>" in headless[0], \
            started.stderr
    else:
        assert headless == [], started.stderr

    report = guest.report()
    assert report.nic["mac"] == mac and report.nic["carrier"] == "1", report
    assert report["disk"] == f"vda sectors 8192 first {DISK_TEXT}", report  # 4 MiB, raw
    if kind == "user":
        dhcp = report.fields("dhcp")
        assert (dhcp["ip"], dhcp["router"]) == ("10.0.2.15", "10.0.2.2"), report
        assert report.answer("10.0.2.2:5002") == f"host got hello from {name}", report
        assert listener.result() == f"got 'hello from {name}' from 127.0.0.1"
    else:
        address = test["ping"]
        assert report[f"ping {address}"].startswith("ok "), report
        peer = test["ip"].split("/")[0]
        reply = host_ping(ns, peer)
        assert reply.stdout.strip() == "2/2", reply.stdout + reply.stderr
        tap = d.record(name)["taps"]["net0"]
        assert links(ns)[tap].master == ("br0" if kind == "bridge" else None)

    guest.destroy()
    assert_clean(ns, d, name, before, guest.pid)
