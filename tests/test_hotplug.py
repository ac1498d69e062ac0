"""attach-device, attach-interface, detach-device and detach-interface for real: QEMU with no guest
OS (paused, or running its firmware), in a fresh namespace, checked over QMP, on the host and in the
runtime record. The guest's side (the NIC appears, passes packets, goes) is in
test_hotplug_guest.py.

Every test ends with the namespace as it found it and nothing of the test left running.
"""

import re

import pytest

from hostcases import (
    alive,
    assert_clean,
    domain_xml,
    fails,
    info_network,
    ip,
    routable,
    links,
    ok,
    qmp,
    snapshot,
    virtnet,
    write,
)
from test_bridge_helper import add_bridge, bridge_conf, logging_helper, real_helper
from test_vhostuser import GET_FEATURES, backends

__all__ = ["bridge_conf", "backends"]  # fixtures of other modules that these tests use

NIC = "    <interface type='ethernet'>\n      <model type='virtio'/>\n    </interface>\n"


def acpi_xml(name, interfaces=NIC, machine="pc"):
    xml = domain_xml(name, interfaces).replace("  <devices>", "  <features><acpi/></features>\n  <devices>", 1)
    return xml.replace("machine='pc'", f"machine='{machine}'")


def start(d, ns, tmp_path, name, xml):
    ok(virtnet(d, "define", write(tmp_path / f"{name}.xml", xml)))
    ok(virtnet(d, "start", name, "--paused", netns=ns))


def peripherals(d, name):
    """QEMU's devices with an id and its netdevs, as (device ids, {nic id: backend names})."""
    with qmp(d.live(name).qmp) as client:
        devices = {p["name"] for p in client.execute("qom-list", {"path": "/machine/peripheral"})}
        network = info_network(client)
    return devices, {nic: [b["name"] for b in info["backends"]] for nic, info in network.items()}


def live_interfaces(d, name):
    """The live XML's interfaces as {alias: (type, mac, target dev, pci slot)}."""
    from lxml import etree

    root = etree.fromstring(ok(virtnet(d, "dumpxml", name)).encode())
    out = {}
    for node in root.iter("interface"):
        target, address = node.find("target"), node.find("address")
        out[node.find("alias").get("name")] = (
            node.get("type"), node.find("mac").get("address"), target.get("dev") if target is not None else None,
            (int(address.get("bus"), 16), int(address.get("slot"), 16)) if address is not None else None)
    return out


def test_print_xml_shows_the_interface_and_changes_nothing(dirs, tmp_path):
    out = ok(virtnet(dirs, "attach-interface", "nodomain", "bridge", "br0", "--model", "virtio", "--mac",
                     "52:54:00:AA:00:01", "--target", "tap%d", "--mtu", "1400", "--alias", "ua-uplink",
                     "--print-xml"))
    assert out == ("<interface type=\"bridge\">\n  <mac address=\"52:54:00:aa:00:01\"/>\n"
                   "  <source bridge=\"br0\"/>\n  <target dev=\"tap%d\"/>\n  <model type=\"virtio\"/>\n"
                   "  <mtu size=\"1400\"/>\n  <alias name=\"ua-uplink\"/>\n</interface>\n")
    assert not dirs.state.exists()


@pytest.mark.parametrize("args, message", [
    (("bridge",), "type 'bridge' needs a SOURCE: its bridge"),
    (("ethernet", "br0"), "type 'ethernet' takes no SOURCE (got 'br0'); name its tap with --target"),
    (("udp", "localhost"), "SOURCE 'localhost' of type 'udp' is not ADDRESS:PORT"),
    (("bridge", "br0", "--unmanaged"), "--unmanaged is for type 'ethernet' with --target"),
    (("bridge", "br0", "--mac", "52:54:00:zz:00:01"), "'52:54:00:zz:00:01' is not a MAC address"),
    (("bridge", "br0", "--mtu", "9"), "'9' is not an MTU between 68 and 65535"),
    (("tap", "x"), "invalid choice: 'tap'"),
    (("bridge", "br0", "--live", "--current"), "--current cannot be combined with --live"),
])
def test_attach_interface_usage_errors(dirs, tmp_path, args, message):
    ok(virtnet(dirs, "define", write(tmp_path / "u.xml", acpi_xml("u"))))
    line = fails(virtnet(dirs, "attach-interface", "u", *args), code=2)
    assert message in line, line


def test_attach_device_refuses_other_devices_and_bad_interfaces_with_their_file_and_line(dirs, tmp_path):
    ok(virtnet(dirs, "define", write(tmp_path / "u.xml", acpi_xml("u"))))
    disk = write(tmp_path / "disk.xml", "<disk type='file'>\n  <source file='/x.img'/>\n</disk>\n")
    line = fails(virtnet(dirs, "attach-device", "u", disk))
    assert line == (f"virtnet: error: {disk}:1: <disk> cannot be attached or detached by virtnet; it changes "
                    "<interface> devices (edit the definition and restart the domain for others)")
    bad = write(tmp_path / "bad.xml", "<interface type='bridge'>\n  <source bridge='br0'/>\n"
                                      "  <mac address='01:00:5e:00:00:01'/>\n</interface>\n")
    line = fails(virtnet(dirs, "attach-device", "u", bad))
    assert line.startswith(f"virtnet: error: {bad}:3: ") and "multicast" in line, line
    assert "01:00:5e" not in ok(virtnet(dirs, "dumpxml", "u"))


def test_config_attach_and_detach_change_the_definition_only(dirs, tmp_path):
    d = dirs
    ok(virtnet(d, "define", write(tmp_path / "c.xml", acpi_xml("c"))))
    # Not running: --live is refused, the default (--current) is the definition.
    assert "domain 'c' is not running" in fails(virtnet(d, "attach-interface", "c", "user", "--live"))
    assert ok(virtnet(d, "attach-interface", "c", "user", "--mac", "52:54:00:00:00:42")) == \
        "Interface attached successfully\n"
    stored = ok(virtnet(d, "dumpxml", "c", "--inactive"))
    assert re.search(r"<interface type='user'>\n\s+<mac address='52:54:00:00:00:42'/>\n\s+<model type='rtl8139'/>\n"
                     r"\s+<address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>", stored), stored
    assert "<alias" not in stored
    # The same MAC again: this domain has it already.
    line = fails(virtnet(d, "attach-interface", "c", "user", "--mac", "52:54:00:00:00:42", "--config"))
    assert "domain 'c' already has an interface with this MAC" in line
    # Another domain may not take it either (define's rule).
    ok(virtnet(d, "define", write(tmp_path / "o.xml", acpi_xml("o"))))
    line = fails(virtnet(d, "attach-interface", "o", "user", "--mac", "52:54:00:00:00:42", "--config"))
    assert "MAC address 52:54:00:00:00:42 is already used by domain 'c'" in line
    # Two interfaces of type ethernet? No: one, so no --mac needed; user has one too.
    assert "domain 'c' has no interface of type 'bridge'" in fails(virtnet(d, "detach-interface", "c", "bridge"))
    assert ok(virtnet(d, "detach-interface", "c", "user", "--config")) == "Interface detached successfully\n"
    assert "type='user'" not in ok(virtnet(d, "dumpxml", "c", "--inactive"))


@pytest.fixture
def bridge(ns):
    # A MAC of its own: a bridge without one takes its ports' (and all zeros once they are gone).
    ip("netns", "exec", ns, "ip", "link", "add", "hpbr0", "address", "02:00:00:00:0b:01", "type", "bridge")
    ip("netns", "exec", ns, "ip", "link", "set", "hpbr0", "up")
    return "hpbr0"


def test_each_type_is_hot_plugged_into_qemu_and_destroy_leaves_nothing(ns, dirs, tmp_path, bridge):
    """One NIC of every type QEMU can take without a peer, into a paused guest: QEMU gets the device
    and its backend, the live XML and the record follow, the host gets the taps; destroy then
    removes everything, the hot-plugged devices' taps included."""
    d = dirs
    ip("netns", "exec", ns, "ip", "tuntap", "add", "dev", "hpfixed0", "mode", "tap", "vnet_hdr")
    ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
    before = snapshot(ns)
    start(d, ns, tmp_path, "hp", acpi_xml("hp"))
    pid = d.live("hp").pid
    attach = [
        ("ethernet", "--model", "virtio"),
        ("ethernet", "--target", "hpfixed0", "--unmanaged", "--model", "e1000"),
        ("bridge", bridge, "--target", "hptap%d"),
        ("user", "--model", "rtl8139"),
        ("server", "127.0.0.1:5998"),
        ("client", "127.0.0.1:5998"),  # to the server just plugged in
    ]
    for args in attach:
        ok(virtnet(d, "attach-interface", "hp", *args, netns=ns))
    nics = live_interfaces(d, "hp")
    assert sorted(nics) == ["net0", "net1", "net2", "net3", "net4", "net5", "net6"]
    assert [nics[f"net{i}"][0] for i in range(7)] == ["ethernet", "ethernet", "ethernet", "bridge", "user",
                                                     "server", "client"]
    slots = [nics[f"net{i}"][3] for i in range(7)]
    assert slots == [(0, 2), (0, 4), (0, 5), (0, 6), (0, 7), (0, 8), (0, 9)]  # the balloon has 3
    assert nics["net2"][2] == "hpfixed0" and nics["net3"][2] == "hptap0" and nics["net1"][2] == "vnet1"
    devices, network = peripherals(d, "hp")
    assert {f"net{i}" for i in range(7)} <= devices
    assert {nic: backends[0] for nic, backends in network.items()} == {f"net{i}": f"hostnet{i}" for i in range(7)}
    host = links(ns)
    assert host["hptap0"].master == bridge and host["vnet1"].up
    record = d.live("hp")
    assert record.taps == {"net0": "vnet0", "net1": "vnet1", "net2": "hpfixed0", "net3": "hptap0"}
    assert [a.ifname for a in record.teardown if a.kind == "delete-tap"] == ["vnet0", "vnet1", "hptap0"]
    assert [a.kind for a in record.teardown if a.kind != "delete-tap"] == ["stop-qemu"]

    ok(virtnet(d, "destroy", "hp"))
    assert_clean(ns, d, "hp", before, pid)


def test_qemu_refusing_the_device_rolls_the_host_side_back(ns, dirs, tmp_path, bridge):
    d = dirs
    before = snapshot(ns)
    start(d, ns, tmp_path, "rb", acpi_xml("rb"))
    record, live = d.record("rb"), ok(virtnet(d, "dumpxml", "rb"))
    during = snapshot(ns)
    nic = write(tmp_path / "nic.xml", f"<interface type='bridge'>\n  <source bridge='{bridge}'/>\n"
                                      "  <model type='no-such-nic'/>\n</interface>\n")
    line = fails(virtnet(d, "attach-device", "rb", nic, netns=ns))
    assert line.startswith("virtnet: error: QMP device_add: ") and "no-such-nic" in line, line
    assert snapshot(ns) == during  # the bridge's new tap is gone again
    assert d.record("rb") == record and ok(virtnet(d, "dumpxml", "rb")) == live
    devices, network = peripherals(d, "rb")
    assert "net1" not in devices and list(network) == ["net0"]  # and no hostnet1 left behind
    ok(virtnet(d, "destroy", "rb"))
    assert_clean(ns, d, "rb", before)


def test_pc_without_acpi_cannot_hot_plug_and_says_why(ns, dirs, tmp_path):
    d = dirs
    before = snapshot(ns)
    start(d, ns, tmp_path, "na", domain_xml("na", NIC))
    line = fails(virtnet(d, "attach-interface", "na", "user", netns=ns))
    assert line == ("virtnet: error: QMP device_add: Bus 'pci.0' does not support hotplugging; a pc machine "
                    "hot-plugs PCI devices through ACPI: the domain needs <features><acpi/></features> (then "
                    "restart it)")
    ok(virtnet(d, "destroy", "na"))
    assert_clean(ns, d, "na", before)


def test_q35_hot_plugs_into_the_spare_root_port_and_then_refuses(ns, dirs, tmp_path):
    d = dirs
    before = snapshot(ns)
    start(d, ns, tmp_path, "qq", acpi_xml("qq", machine="q35"))
    spare = [m for m in re.finditer(r"<controller type='pci' index='(\d+)' model='pcie-root-port'>",
                                    ok(virtnet(d, "dumpxml", "qq")))]
    assert len(spare) == 3  # net0's root port, the balloon's, and libvirt's spare one
    ok(virtnet(d, "attach-interface", "qq", "user", "--model", "virtio", netns=ns))
    assert live_interfaces(d, "qq")["net1"][3] == (int(spare[2].group(1)), 0)
    devices, _ = peripherals(d, "qq")
    assert "net1" in devices
    line = fails(virtnet(d, "attach-interface", "qq", "user", "--model", "virtio", netns=ns))
    assert line == ("virtnet: error: no free PCI slot to hot-plug <interface> into: the running machine has no "
                    "empty <controller type='pci' model='pcie-root-port'/>, and controllers cannot be added while it "
                    "runs; add one to the definition (libvirt adds one spare root port) and restart the domain")
    # A conventional PCI NIC would need a pcie-to-pci-bridge, which this machine lacks.
    assert "has no <controller type='pci' model='pcie-to-pci-bridge'/> with a free slot" in \
        fails(virtnet(d, "attach-interface", "qq", "user", "--model", "rtl8139", netns=ns))
    ok(virtnet(d, "destroy", "qq"))
    assert_clean(ns, d, "qq", before)


def test_a_guest_that_does_not_release_the_device_keeps_it_and_is_told(ns, dirs, tmp_path):
    """A paused guest cannot answer the unplug request: detach times out, and the domain stays as it
    was (QEMU, live XML and record all still have the NIC); destroy still removes everything."""
    d = dirs
    before = snapshot(ns)
    start(d, ns, tmp_path, "st", acpi_xml("st"))
    ok(virtnet(d, "attach-interface", "st", "ethernet", "--mac", "52:54:00:00:00:77", netns=ns))
    record, live = d.record("st"), ok(virtnet(d, "dumpxml", "st"))
    line = fails(virtnet(d, "detach-interface", "st", "ethernet", "--mac", "52:54:00:00:00:77", "--timeout", "1",
                         netns=ns))
    assert line == ("virtnet: error: domain 'st': the guest did not release net1 within 1 s: it needs an operating "
                    "system that handles PCI hot-unplug, with its vCPUs running; the device is still attached, and "
                    "QEMU keeps the request; `virtnet domiflist st` still lists it — detach it again once the guest "
                    "runs, or `virtnet destroy st`")
    line = fails(virtnet(d, "detach-interface", "st", "ethernet", netns=ns))
    assert "has 2 interfaces of type 'ethernet'" in line and "choose one with --mac" in line
    assert d.record("st") == record and ok(virtnet(d, "dumpxml", "st")) == live
    assert "net1" in peripherals(d, "st")[0] and "vnet1" in links(ns)
    ok(virtnet(d, "destroy", "st"))
    assert_clean(ns, d, "st", before)


def test_scope_rules_for_transient_and_running_domains(ns, dirs, tmp_path):
    d = dirs
    before = snapshot(ns)
    path = write(tmp_path / "tr.xml", acpi_xml("tr"))
    ok(virtnet(d, "create", path, "--paused", netns=ns))
    line = fails(virtnet(d, "attach-interface", "tr", "user", "--config"))
    assert line == ("virtnet: error: domain 'tr' was started by create and has no definition to change; change "
                    "the running guest (--live), or `virtnet define` it first")
    # --live and --config together on a defined, running domain: both get the same MAC.
    ok(virtnet(d, "destroy", "tr"))
    ok(virtnet(d, "define", path))
    ok(virtnet(d, "start", "tr", "--paused", netns=ns))
    ok(virtnet(d, "attach-interface", "tr", "user", "--live", "--config", netns=ns))
    live_mac = live_interfaces(d, "tr")["net1"][1]
    assert f"<mac address='{live_mac}'/>" in ok(virtnet(d, "dumpxml", "tr", "--inactive"))
    ok(virtnet(d, "destroy", "tr"))
    assert_clean(ns, d, "tr", before)


def test_hot_plugged_passt_is_started_and_stopped_with_the_domain(ns, dirs, tmp_path, passt_bin):
    d = dirs
    nic = write(tmp_path / "nic.xml", "<interface type='user'>\n  <backend type='passt'/>\n"
                                      "  <model type='virtio'/>\n</interface>\n")
    d.runtime.chmod(0o711)  # passt runs as nobody and must reach its socket directory
    if passt_bin.kind == "debian12":
        # Debian 12's passt refuses to start without a routable interface (a current one starts
        # anyway): a failure after the host side began, which the attach must undo.
        before = snapshot(ns)
        start(d, ns, tmp_path, "pa", acpi_xml("pa"))
        record = d.record("pa")
        assert "passt needs a network interface" in fails(virtnet(d, "attach-device", "pa", nic, netns=ns))
        assert d.record("pa") == record and sorted(p.name for p in (d.runtime / "pa").iterdir()) == [
            "qemu.log", "qmp.sock"]
        ok(virtnet(d, "destroy", "pa"))
        assert_clean(ns, d, "pa", before)

    routable(ns)
    before = snapshot(ns)
    start(d, ns, tmp_path, "pa", acpi_xml("pa"))
    ok(virtnet(d, "attach-device", "pa", nic, netns=ns))
    record = d.live("pa")
    passts = record.passts
    assert [a.device for a in passts] == ["net1"]
    assert alive(passts[0].pid)
    _, network = peripherals(d, "pa")
    assert network["net1"] == ["hostnet1"]
    ok(virtnet(d, "destroy", "pa"))
    assert not alive(passts[0].pid)
    assert_clean(ns, d, "pa", before)


def test_unprivileged_hot_plug_gets_the_tap_from_the_bridge_helper(ns, dirs, tmp_path, bridge_conf):
    d = dirs
    add_bridge(ns)
    bridge_conf("allow br0\n")
    wrapper, log = logging_helper(tmp_path, real_helper())
    before = snapshot(ns)
    start(d, ns, tmp_path, "uh", acpi_xml("uh"))
    ok(virtnet(d, "attach-interface", "uh", "bridge", "br0", "--model", "virtio", "--unprivileged",
               "--bridge-helper", wrapper, netns=ns))
    state = d.live("uh")
    tap = state.taps["net1"]
    assert tap.startswith("tap") and tap not in state.created_taps  # the helper's: it goes with QEMU's fd
    assert log.read_text().startswith("--use-vnet --br=br0 --fd=")
    assert links(ns)[tap].master == "br0"
    assert f"<target dev='{tap}'/>" in ok(virtnet(d, "dumpxml", "uh"))
    _, network = peripherals(d, "uh")
    assert network["net1"] == ["hostnet1"]
    ok(virtnet(d, "destroy", "uh"))
    assert tap not in links(ns)
    assert_clean(ns, d, "uh", before)


def test_a_vhost_user_nic_is_hot_plugged_with_its_chardev(dirs, tmp_path, backends):
    """The chardev first (chardev-add), then the netdev, which talks to the backend at once."""
    d = dirs
    path = tmp_path / "be.sock"
    backend = backends(path)
    xml = acpi_xml("vu").replace("<vcpu>", "<memoryBacking><access mode='shared'/></memoryBacking>\n  <vcpu>")
    ok(virtnet(d, "define", write(tmp_path / "vu.xml", xml)))
    ok(virtnet(d, "start", "vu", "--paused"))
    ok(virtnet(d, "attach-interface", "vu", "vhostuser", path, "--model", "virtio"))
    assert backend.connections == 1 and GET_FEATURES in backend.requests
    with qmp(d.live("vu").qmp) as client:
        [peer] = info_network(client)["net1"]["backends"]
        chardevs = {c["label"]: c["filename"] for c in client.execute("query-chardev")}
    assert (peer["name"], peer["type"]) == ("hostnet1", "vhost-user")
    assert chardevs["charnet1"].startswith("unix:")
    ok(virtnet(d, "destroy", "vu"))
    assert d.record("vu") is None and d.runtime_entries() == []


def test_live_and_config_checks_the_definition_before_touching_the_guest(ns, dirs, tmp_path):
    """The definition changed while the domain runs has a NIC with alias ua-dup; adding another
    ua-dup with --live --config is refused by the definition, and the running guest is untouched."""
    d = dirs
    before = snapshot(ns)
    start(d, ns, tmp_path, "lc", acpi_xml("lc"))
    second = "    <interface type='user'>\n      <alias name='ua-dup'/>\n    </interface>\n"
    ok(virtnet(d, "define", write(tmp_path / "lc2.xml", acpi_xml("lc", NIC + second))))
    record, live = d.record("lc"), ok(virtnet(d, "dumpxml", "lc"))
    line = fails(virtnet(d, "attach-interface", "lc", "user", "--alias", "ua-dup", "--live", "--config", netns=ns))
    assert "<alias name='ua-dup'>: domain 'lc' already has a device with this alias" in line, line
    assert d.record("lc") == record and ok(virtnet(d, "dumpxml", "lc")) == live
    assert peripherals(d, "lc")[0] >= {"net0"} and "ua-dup" not in peripherals(d, "lc")[0]
    # --live alone takes it: the running guest has no ua-dup.
    ok(virtnet(d, "attach-interface", "lc", "user", "--alias", "ua-dup", "--live", netns=ns))
    assert "ua-dup" in peripherals(d, "lc")[0]
    ok(virtnet(d, "destroy", "lc"))
    assert_clean(ns, d, "lc", before)


def test_a_hot_plugged_nics_inverses_join_the_teardown_as_if_set_up_last_before_qemu():
    from virtnet.host import plan as p

    teardown = [p.DeleteTap("net0", "vnet0"), p.StopQemu("", "/q"), p.StopPasst("net1", "1.pid", "1.s", "d"),
                p.RunDownscript("net0", "vnet0", "/down")]
    added = [p.DeleteTap("net2", "vnet2"), p.StopPasst("net2", "2.pid", "2.s", "d"), p.DeleteNetdev("net2", "hostnet2"),
             p.RunDownscript("net2", "vnet2", "/down2"), p.DeleteDevice("net2")]
    merged = p.teardown_with(teardown, added)
    assert [(a.kind, a.device) for a in merged] == [
        ("delete-tap", "net0"), ("delete-tap", "net2"), ("stop-qemu", ""), ("run-downscript", "net2"),
        ("stop-passt", "net2"), ("stop-passt", "net1"), ("run-downscript", "net0")]
