"""`virtnet start`/`destroy` for real: a fresh network namespace per test, real taps and bridges,
QEMU started paused (-S, no guest image) and inspected over QMP and /proc, and rollback of every
setup step.

Each test asserts at its end that the namespace is back to what it was, that no QEMU of the test
runs and that no runtime record or runtime file remains; the fixtures in hostcases.py also remove
the namespace (and fail the test if they cannot) and kill any QEMU a failing test left behind.
"""

import json
import re
import subprocess
import time

import pytest
from lxml import etree

from hostcases import (
    SEED,
    alive,
    assert_clean,
    assert_unchanged,
    cli_argv,
    cli_env,
    domain_xml,
    e1000_link_up,
    fails,
    info_network,
    ip,
    kill,
    links,
    ok,
    pci_slot,
    precreate_taps,
    qemu_pids,
    qmp,
    snapshot,
    tap_of_fd,
    virtnet,
    wait_dead,
    write,
)

# Fixtures (a fresh namespace, one we are inside, the state and runtime dirs).

# The multi-NIC domain: one interface of each kind virtnet handles on the host.
MACS = {
    "virtio-mtu": "52:54:00:a0:00:01",
    "template": "fe:54:00:a0:00:02",  # starts with fe: its host side must get fa
    "unmanaged": "52:54:00:a0:00:03",
    "bridge": "52:54:00:a0:00:04",
    "user": "52:54:00:a0:00:05",
    "socket": "52:54:00:a0:00:06",
}
SOCKET_PORT = 5999
PRE_MAC = "02:00:00:00:00:99"


def multi_nic_xml(name, *, extras=False, script=None):
    """EXTRAS adds host-side <ip>/<route> on the managed='no' tap (virtnet must remove them again)
    and a <script> on the first tap, so that a rollback has those to undo too."""
    unmanaged_source = ""
    if extras:
        unmanaged_source = """
      <source>
        <ip address='203.0.113.1' family='ipv4' prefix='24'/>
        <route family='ipv4' address='198.51.100.0' prefix='24' gateway='203.0.113.254'/>
      </source>"""
    script_line = f"\n      <script path='{script}'/>" if script else ""
    return domain_xml(name, f"""\
    <interface type='ethernet'>
      <mac address='{MACS["virtio-mtu"]}'/>
      <target dev='mtap0'/>
      <model type='virtio'/>
      <mtu size='1400'/>{script_line}
    </interface>
    <interface type='ethernet'>
      <mac address='{MACS["template"]}'/>
      <target dev='vt%d'/>
      <model type='e1000e'/>
    </interface>
    <interface type='ethernet'>
      <mac address='{MACS["unmanaged"]}'/>{unmanaged_source}
      <target dev='pre0' managed='no'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='{MACS["bridge"]}'/>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <interface type='user'>
      <mac address='{MACS["user"]}'/>
      <model type='e1000'/>
    </interface>
    <interface type='server'>
      <mac address='{MACS["socket"]}'/>
      <source address='127.0.0.1' port='{SOCKET_PORT}'/>
      <model type='e1000'/>
      <link state='down'/>
    </interface>
""")


def administrator_setup(ns):
    """What an administrator prepares in the namespace before the domain starts."""
    # br0 for the type='bridge' NIC. Its MAC is set explicitly: a bridge whose MAC was never set
    # takes the lowest MAC among its ports (the kernel's rule, not virtnet's), so it would change
    # when virtnet's tap joins and the before/after comparison would measure the kernel.
    ip("-n", ns, "link", "add", "br0", "type", "bridge")
    ip("-n", ns, "link", "set", "br0", "address", "02:00:00:00:0b:00", "mtu", "1450", "up")
    # pre0 for managed='no': a tap with its own MAC and MTU, up, and a port of the
    # administrator's bridge br1. virtnet may open it, nothing else.
    ip("-n", ns, "link", "add", "br1", "type", "bridge")
    ip("-n", ns, "link", "set", "br1", "address", "02:00:00:00:0b:01", "up")
    ip("-n", ns, "tuntap", "add", "dev", "pre0", "mode", "tap", "vnet_hdr")
    ip("-n", ns, "link", "set", "pre0", "address", PRE_MAC, "mtu", "1480", "master", "br1", "up")


def ok_script(tmp_path):
    return write(tmp_path / "ifup.sh", """\
        #!/bin/sh
        # The tap must already exist in the namespace when the script runs.
        ip link show dev "$1" >/dev/null
        """, mode=0o755)


def created_taps(record):
    """The taps a runtime record says destroy deletes."""
    return [a["ifname"] for a in record["teardown"] if a["action"] == "delete-tap"]


def define(d, tmp_path, xml, name="dom"):
    path = write(tmp_path / f"{name}.xml", xml)
    ok(virtnet(d, "define", path))
    return path


# --- start and destroy with a multi-NIC domain ---------------------------------------------------


def test_multi_nic_domain_starts_paused_and_is_destroyed_without_a_trace(ns, dirs, tmp_path):
    d = dirs
    administrator_setup(ns)
    define(d, tmp_path, multi_nic_xml("multi"), "multi")
    stored = ok(virtnet(d, "dumpxml", "--inactive", "multi"))
    before = snapshot(ns)
    planned = json.loads(ok(virtnet(d, "plan", "multi", "--format", "json", netns=ns)))["teardown"]

    out = ok(virtnet(d, "start", "multi", "--paused", netns=ns))
    record = d.record("multi")
    # What plan printed is what destroy will run: the same actions, devices and names (start only
    # adds what it learnt: pids and ifindexes).
    learnt = ("pid", "ifindex")
    assert [{k: v for k, v in a.items() if k not in learnt} for a in record["teardown"]] == \
        [{k: v for k, v in a.items() if k not in learnt} for a in planned]
    assert [a["pid"] for a in record["teardown"] if a["action"] == "stop-qemu"] == [record["pid"]]
    pid = record["pid"]
    assert out == f"Domain 'multi' started (paused): QEMU pid {pid}, mtap0, vt0, pre0, vnet0\n"
    assert alive(pid)
    assert record["netns"] == ns
    assert record["taps"] == {"net0": "mtap0", "net1": "vt0", "net2": "pre0", "net3": "vnet0"}
    assert sorted(created_taps(record)) == ["mtap0", "vnet0", "vt0"]  # never pre0

    # QEMU: every NIC with its model and MAC, on the expected backend; each tap backend's fd is a
    # /dev/net/tun fd attached to the expected tap.
    with qmp(record["qmp"]) as client:
        assert client.execute("query-status")["running"] is False
        nics = info_network(client)
        expected = {
            "net0": ("virtio-net-pci", MACS["virtio-mtu"], "tap", "mtap0"),
            "net1": ("e1000e", MACS["template"], "tap", "vt0"),
            "net2": ("virtio-net-pci", MACS["unmanaged"], "tap", "pre0"),
            "net3": ("virtio-net-pci", MACS["bridge"], "tap", "vnet0"),
            "net4": ("e1000", MACS["user"], "user", None),
            "net5": ("e1000", MACS["socket"], "socket", None),
        }
        assert sorted(nics) == sorted(expected)
        for nic, (model, mac, backend, tap) in expected.items():
            assert (nics[nic]["model"], nics[nic]["macaddr"]) == (model, mac), nic
            [peer] = nics[nic]["backends"]
            assert (peer["name"], peer["type"]) == ("host" + nic, backend), nic
            if tap:
                assert tap_of_fd(pid, int(peer["fd"])) == tap, nic
        assert nics["net4"]["backends"][0]["net"] == "10.0.2.0"

        # <link state='down'>: QEMU 7.2 shows link state neither in `info network` nor in any
        # query or QOM property, so read what the guest would see: the e1000's STATUS.LU bit.
        # The user NIC is the same model with the link up, as a control.
        assert e1000_link_up(client, pci_slot(stored, MACS["socket"]), 0xFE000000) is False
        assert e1000_link_up(client, pci_slot(stored, MACS["user"]), 0xFD000000) is True

    # The socket server listens inside the namespace.
    listening = ip("netns", "exec", ns, "ss", "-Hltn").stdout
    assert f"127.0.0.1:{SOCKET_PORT}" in listening

    # The kernel's view of the taps virtnet created: host MAC fe:… (fa:… for a guest MAC fe:…),
    # the MTU asked for (the bridge's for the bridge tap), up, enslaved where asked, not persistent.
    now = links(ns)
    assert (now["mtap0"].mac, now["mtap0"].mtu, now["mtap0"].master) == ("fe:54:00:a0:00:01", 1400, None)
    assert (now["vt0"].mac, now["vt0"].mtu, now["vt0"].master) == ("fa:54:00:a0:00:02", 1500, None)
    assert (now["vnet0"].mac, now["vnet0"].mtu, now["vnet0"].master) == ("fe:54:00:a0:00:04", 1450, "br0")
    for tap in ("mtap0", "vt0", "vnet0"):
        assert now[tap].up and now[tap].kind == "tun", tap
        tun = dict(now[tap].tun)
        assert (tun["type"], tun["persist"], tun["vnet_hdr"]) == ("tap", "False", "True"), tap
    # The managed='no' tap and the bridges are exactly as the administrator left them (carrier
    # flags masked: the kernel turns IFF_RUNNING/IFF_LOWER_UP on when QEMU attaches).
    for name, link in before["links"].items():
        assert now[name] == link, name
    assert set(now) == set(before["links"]) | {"mtap0", "vt0", "vnet0"}

    listing = ok(virtnet(d, "list"))
    assert "multi" in listing and "running" in listing

    # The live XML names each NIC by its alias and the tap it uses; the stored one is unchanged.
    live = etree.fromstring(ok(virtnet(d, "dumpxml", "multi")).encode())
    assert [(i.find("alias").get("name"), i.find("target").get("dev") if i.find("target") is not None else None)
            for i in live.iterfind("devices/interface")] == [
        ("net0", "mtap0"), ("net1", "vt0"), ("net2", "pre0"), ("net3", "vnet0"), ("net4", None), ("net5", None)]
    assert ok(virtnet(d, "dumpxml", "--inactive", "multi")) == stored
    assert "<alias" not in stored
    assert ok(virtnet(d, "domiflist", "multi")).splitlines()[2].split()[0] == "mtap0"

    out = ok(virtnet(d, "destroy", "multi"))
    assert out == "Domain 'multi' destroyed\n"
    assert_clean(ns, d, "multi", before, pid)
    assert links(ns)["pre0"] == before["links"]["pre0"]
    assert "multi" not in ok(virtnet(d, "list"))


# --- rollback ------------------------------------------------------------------------------------


def test_a_failure_before_any_setup_action_rolls_everything_back(inside, dirs, tmp_path):
    """The executor fails just before setup action N; for every N of a plan with taps, a bridge, a
    managed='no' tap with host addresses, a script, QEMU, a QMP link change and the final `cont`,
    the namespace must end exactly as it was. The failure is injected (a mock of Executor.run):
    a netlink error at an arbitrary step cannot be provoked for real on demand."""
    from virtnet import runner
    from virtnet.errors import HostError
    from virtnet.host.executor import Executor

    ns, d = inside, dirs
    administrator_setup(ns)
    define(d, tmp_path, multi_nic_xml("rb", extras=True, script=ok_script(tmp_path)), "rb")
    plan = json.loads(ok(virtnet(d, "plan", "rb", "--format", "json", netns=ns)))["setup"]
    kinds = [a["action"] for a in plan]
    # The plan exercises every kind of setup step there is to undo.
    for kind in ("create-tap", "set-mac", "set-mtu", "set-up", "run-script", "attach-tap", "add-address",
                 "add-route", "check-bridge", "enslave", "start-qemu", "set-link-down", "resume"):
        assert kind in kinds, kind
    assert kinds[-1] == "resume"
    before = snapshot(ns)
    store = d.store()

    real_run = Executor.run
    for n, action in enumerate(plan):
        done = []

        def run(self, action, outcome, n=n, done=done):
            if len(done) == n:
                raise HostError(f"injected failure before action {n} ({action.line()})")
            done.append(action)
            return real_run(self, action, outcome)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Executor, "run", run)
            with pytest.raises(HostError, match=rf"^injected failure before action {n} "):
                runner.start(store, "rb", netns_name=ns)
        assert_unchanged(ns, before, f"after a failure before action {n} ({action}), the namespace")
        assert qemu_pids(str(d.runtime)) == [], n
        assert d.running_records() == [] and d.runtime_entries() == [], n

    # Without a failure the same plan runs to the end (so the loop above covered all of it), and
    # the host address and route are there while the domain runs.
    record = runner.start(store, "rb", netns_name=ns)
    running = snapshot(ns)
    assert ("pre0", "203.0.113.1", 24) in running["addrs"]
    assert any('"dst": "198.51.100.0/24"' in r and '"gateway": "203.0.113.254"' in r for r in running["routes"])
    runner.destroy(store, "rb")
    assert_clean(ns, d, "rb", before, record.pid)


def test_qemu_refusing_a_device_is_quoted_and_rolled_back(ns, dirs, tmp_path):
    d = dirs
    administrator_setup(ns)
    xml = domain_xml("badnic", """\
    <interface type='ethernet'>
      <target dev='mtap0'/>
      <model type='virtio'/>
    </interface>
    <interface type='ethernet'>
      <target dev='pre0' managed='no'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <interface type='ethernet'>
      <model type='nosuchnic'/>
    </interface>
""")
    define(d, tmp_path, xml, "badnic")
    before = snapshot(ns)

    error = fails(virtnet(d, "start", "badnic", "--paused", netns=ns))
    assert "QEMU exited with status 1 before QMP was ready" in error
    assert "'nosuchnic' is not a valid device model name" in error  # QEMU's own words
    assert_clean(ns, d, "badnic", before)


def test_a_failing_script_rolls_back(ns, dirs, tmp_path):
    d = dirs
    script = write(tmp_path / "refuse.sh", """\
        #!/bin/sh
        ip link show dev "$1" >/dev/null || exit 3
        echo "refusing $1" >&2
        exit 1
        """, mode=0o755)
    xml = domain_xml("scripted", f"""\
    <interface type='ethernet'>
      <target dev='mtap0'/>
      <model type='virtio'/>
    </interface>
    <interface type='ethernet'>
      <target dev='stap0'/>
      <model type='e1000e'/>
      <script path='{script}'/>
    </interface>
""")
    define(d, tmp_path, xml, "scripted")
    before = snapshot(ns)

    error = fails(virtnet(d, "start", "scripted", netns=ns))
    # Status 1, not 3: the script ran in the namespace, after its tap was created there.
    assert f"script '{script}' stap0 exited with status 1: refusing stap0" in error
    assert_clean(ns, d, "scripted", before)


def test_a_failed_start_runs_the_downscript_of_a_script_that_already_ran(ns, dirs, tmp_path):
    """What a <script> did on the host is undone by its <downscript> when a later step fails."""
    d = dirs
    log = tmp_path / "scripts.log"
    up = write(tmp_path / "up.sh", f"#!/bin/sh\necho \"up $1\" >> {log}\n", mode=0o755)
    down = write(tmp_path / "down.sh", f"#!/bin/sh\necho \"down $1\" >> {log}\n", mode=0o755)
    refuse = write(tmp_path / "refuse.sh", "#!/bin/sh\nexit 1\n", mode=0o755)
    xml = domain_xml("undoscript", f"""\
    <interface type='ethernet'>
      <target dev='utap0'/>
      <model type='virtio'/>
      <script path='{up}'/>
      <downscript path='{down}'/>
    </interface>
    <interface type='ethernet'>
      <target dev='utap1'/>
      <model type='virtio'/>
      <script path='{refuse}'/>
    </interface>
""")
    define(d, tmp_path, xml, "undoscript")
    before = snapshot(ns)

    error = fails(virtnet(d, "start", "undoscript", netns=ns))
    assert f"script '{refuse}' utap1 exited with status 1" in error
    assert log.read_text().splitlines() == ["up utap0", "down utap0"]
    assert_clean(ns, d, "undoscript", before)


def test_a_missing_bridge_is_a_clear_error_and_leaves_nothing(ns, dirs, tmp_path):
    d = dirs
    xml = domain_xml("nobridge", """\
    <interface type='ethernet'>
      <target dev='mtap0'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <source bridge='nobr0'/>
      <model type='virtio'/>
    </interface>
""")
    define(d, tmp_path, xml, "nobridge")
    before = snapshot(ns)

    error = fails(virtnet(d, "start", "nobridge", netns=ns))
    assert "bridge 'nobr0' does not exist" in error
    assert "ip link add nobr0 type bridge" in error
    assert_clean(ns, d, "nobridge", before)


@pytest.mark.parametrize("kind", ["ethernet", "bridge"])
def test_a_managed_target_that_exists_is_refused_and_left_alone(ns, dirs, tmp_path, kind):
    d = dirs
    ip("-n", ns, "link", "add", "br0", "type", "bridge")
    ip("-n", ns, "link", "set", "br0", "address", "02:00:00:00:0b:00", "up")
    ip("-n", ns, "tuntap", "add", "dev", "taken0", "mode", "tap")
    ip("-n", ns, "link", "set", "taken0", "address", PRE_MAC, "up")
    source = "<source bridge='br0'/>" if kind == "bridge" else ""
    xml = domain_xml("taken", f"""\
    <interface type='ethernet'>
      <target dev='mtap0'/>
      <model type='virtio'/>
    </interface>
    <interface type='{kind}'>
      {source}
      <target dev='taken0'/>
      <model type='virtio'/>
    </interface>
""")
    define(d, tmp_path, xml, "taken")
    before = snapshot(ns)

    error = fails(virtnet(d, "start", "taken", netns=ns))
    assert "'taken0'" in error and "already exists" in error
    assert_clean(ns, d, "taken", before)


def test_an_emulator_that_cannot_run_is_a_clear_error(ns, dirs, tmp_path):
    d = dirs
    xml = domain_xml("noemu", """\
    <interface type='ethernet'>
      <target dev='mtap0'/>
      <model type='virtio'/>
    </interface>
""").replace("/usr/bin/qemu-system-x86_64", str(tmp_path / "no-such-qemu"))
    define(d, tmp_path, xml, "noemu")
    before = snapshot(ns)
    error = fails(virtnet(d, "start", "noemu", netns=ns))
    assert f"cannot run {tmp_path / 'no-such-qemu'}: No such file or directory" in error
    assert_clean(ns, d, "noemu", before)


# --- the seed case end to end: an administrator's tap, used as it is ------------------------------


def seed_xml(queues):
    """The seed domain (examples/net-eth-unmanaged-tap.xml), its NIC given QUEUES queues."""
    nic_model = "<model type='virtio'/>"
    driver = f"\n      <driver queues='{queues}'/>" if queues > 1 else ""
    return SEED.read_text().replace(nic_model, nic_model + driver, 1)


@pytest.mark.parametrize("queues", [1, 2])
def test_seed_precreated_tap_from_plan_sh_is_used_and_left_untouched(ns, dirs, tmp_path, queues):
    d = dirs
    xml = write(tmp_path / "seed.xml", seed_xml(queues))

    script = precreate_taps(d, ns, xml, "root", tmp_path)
    tap = links(ns)["mytap0"]
    tun = dict(tap.tun)
    assert (tap.mac, tap.up, tap.kind) == ("fa:11:22:33:44:55", True, "tun")
    assert (tun["type"], tun["vnet_hdr"], tun["persist"], tun["user"]) == ("tap", "True", "True", "root")
    assert tun["multi_queue"] == str(queues > 1)
    # Running it again changes nothing (it only creates what is missing).
    before = snapshot(ns)
    ok(ip("netns", "exec", ns, "sh", str(script), check=False))
    assert_unchanged(ns, before)

    ok(virtnet(d, "define", xml))
    out = ok(virtnet(d, "start", "QEMUGuest1", "--paused", netns=ns))
    assert out.endswith(", mytap0\n")
    record = d.record("QEMUGuest1")
    assert created_taps(record) == []
    with qmp(record["qmp"]) as client:
        nic = info_network(client)["net0"]
    assert (nic["model"], nic["macaddr"]) == ("virtio-net-pci", "fe:11:22:33:44:55")
    assert len(nic["backends"]) == queues
    for queue, peer in enumerate(nic["backends"]):
        assert (peer["name"], peer["type"], peer["index"]) == ("hostnet0", "tap", str(queue))
        assert tap_of_fd(record["pid"], int(peer["fd"])) == "mytap0"
    assert_unchanged(ns, before)  # mytap0 untouched while QEMU uses it (carrier flags masked)

    ok(virtnet(d, "destroy", "QEMUGuest1"))
    assert "mytap0" in links(ns)
    assert_clean(ns, d, "QEMUGuest1", before, record["pid"])


# --- teardown and bookkeeping --------------------------------------------------------------------


def test_destroy_runs_downscripts_after_qemu_is_gone(ns, dirs, tmp_path):
    """libvirt's teardown order: stop QEMU (its fds close, so managed taps vanish), then run the
    downscripts with the tap name, for managed and managed='no' taps alike."""
    d = dirs
    log = tmp_path / "down.log"
    down = write(tmp_path / "down.sh", f"""\
        #!/bin/sh
        echo "$1: $(ip -o link show | cut -d: -f2 | tr -d ' ' | sort | tr '\\n' ' ')" >> {log}
        """, mode=0o755)
    ip("-n", ns, "tuntap", "add", "dev", "pre0", "mode", "tap", "vnet_hdr")
    xml = domain_xml("downs", f"""\
    <interface type='ethernet'>
      <target dev='mtap0'/>
      <model type='virtio'/>
      <downscript path='{down}'/>
    </interface>
    <interface type='ethernet'>
      <target dev='pre0' managed='no'/>
      <model type='virtio'/>
      <downscript path='{down}'/>
    </interface>
""")
    define(d, tmp_path, xml, "downs")
    before = snapshot(ns)
    ok(virtnet(d, "start", "downs", netns=ns))  # not paused: the vCPUs run
    record = d.record("downs")
    with qmp(record["qmp"]) as client:
        assert client.execute("query-status")["running"] is True
    assert not log.exists()  # downscripts are for teardown only

    ok(virtnet(d, "destroy", "downs"))
    # Both ran, in the namespace, once QEMU had exited and taken mtap0 with it; newest first, as
    # every teardown step (the inverse of setup).
    assert log.read_text().splitlines() == ["pre0: lo pre0 ", "mtap0: lo pre0 "]
    assert_clean(ns, d, "downs", before, record["pid"])


def test_started_under_ip_netns_exec_and_destroyed_from_outside(ns, dirs, tmp_path):
    """Without --netns, start finds the namespace `ip netns exec` put it in and records it, so a
    destroy run from anywhere tears down in the domain's namespace (the downscript shows where)."""
    d = dirs
    log = tmp_path / "where.log"
    down = write(tmp_path / "down.sh", f"""\
        #!/bin/sh
        ip -o link show dev "$1" >/dev/null 2>&1 && echo "$1 here" >> {log} || echo "$1 missing" >> {log}
        """, mode=0o755)
    ip("-n", ns, "tuntap", "add", "dev", "pre0", "mode", "tap")
    xml = domain_xml("execd", f"""\
    <interface type='ethernet'>
      <target dev='pre0' managed='no'/>
      <model type='rtl8139'/>
      <downscript path='{down}'/>
    </interface>
""")
    define(d, tmp_path, xml, "execd")
    before = snapshot(ns)
    result = subprocess.run(["ip", "netns", "exec", ns] + cli_argv(d, "start", "execd", "--paused"),
                            env=cli_env(), capture_output=True, text=True, timeout=60)
    ok(result)
    assert d.record("execd")["netns"] == ns

    ok(virtnet(d, "destroy", "execd"))
    assert log.read_text() == "pre0 here\n"  # ran inside ns: the host has no pre0
    assert_clean(ns, d, "execd", before)


def test_generated_names_skip_devices_and_other_domains_taps(ns, dirs, tmp_path):
    d = dirs
    ip("-n", ns, "link", "add", "vnet0", "type", "bridge")  # someone else's device
    for name in ("gen1", "gen2"):
        define(d, tmp_path, domain_xml(name, "    <interface type='ethernet'/>\n"), name)
    before = snapshot(ns)
    ok(virtnet(d, "start", "gen1", "--paused", netns=ns))
    ok(virtnet(d, "start", "gen2", "--paused", netns=ns))
    assert (d.record("gen1")["taps"], d.record("gen2")["taps"]) == ({"net0": "vnet1"}, {"net0": "vnet2"})
    assert links(ns)["vnet0"] == before["links"]["vnet0"]

    ok(virtnet(d, "destroy", "gen1"))
    assert "vnet2" in links(ns) and "vnet1" not in links(ns)
    ok(virtnet(d, "destroy", "gen2"))
    assert_clean(ns, d, "gen2", before)


def test_two_concurrent_starts_of_one_domain_start_it_once(ns, dirs, tmp_path):
    d = dirs
    xml = domain_xml("twice", """\
    <interface type='ethernet'>
      <model type='virtio'/>
    </interface>
""")
    define(d, tmp_path, xml, "twice")
    before = snapshot(ns)
    processes = [subprocess.Popen(cli_argv(d, "start", "twice", "--paused", netns=ns), env=cli_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    # Whichever comes second finds the domain running, or its start in progress.
    results = sorted((p.returncode, err) for p in processes for _, err in [p.communicate(timeout=60)])
    assert results[0] == (0, "")
    assert results[1][0] == 1
    assert re.search(r"domain 'twice' is already (running|being started \(virtnet pid \d+\))", results[1][1])
    assert len(qemu_pids(str(d.runtime))) == 1
    assert [n for n in links(ns) if n.startswith("vnet")] == ["vnet0"]

    ok(virtnet(d, "destroy", "twice"))
    assert_clean(ns, d, "twice", before)


def test_destroy_works_after_the_namespace_name_was_removed(ns, dirs, tmp_path):
    """`ip netns del` only removes the name: QEMU keeps running in the namespace, with its taps.
    destroy must still stop it (it needs only the pid and QMP socket) and forget the domain."""
    d = dirs
    xml = domain_xml("homeless", """\
    <interface type='ethernet'>
      <target dev='mtap0'/>
      <model type='virtio'/>
    </interface>
""")
    define(d, tmp_path, xml, "homeless")
    ok(virtnet(d, "start", "homeless", "--paused", netns=ns))
    pid = d.record("homeless")["pid"]
    ip("netns", "del", ns)

    ok(virtnet(d, "destroy", "homeless"))
    assert not alive(pid)
    assert d.record("homeless") is None and d.runtime_entries() == []
    assert qemu_pids(str(d.runtime)) == []


def test_cleanup_after_a_crash_leaves_a_device_that_took_the_name(ns, dirs, tmp_path):
    """QEMU killed: the kernel removed its taps. If another program then creates a device of the
    same name, cleaning up the dead domain must not delete it (virtnet checks the ifindex)."""
    d = dirs
    define(d, tmp_path, domain_xml("crashed", """\
    <interface type='ethernet'>
      <target dev='ctap0'/>
      <model type='virtio'/>
    </interface>
"""), "crashed")
    ok(virtnet(d, "start", "crashed", "--paused", netns=ns))
    pid = d.record("crashed")["pid"]
    kill(pid)
    wait_dead(pid)
    deadline = time.monotonic() + 10
    while "ctap0" in links(ns):  # the kernel unregisters the tap just after QEMU's fds close
        assert time.monotonic() < deadline, "the killed QEMU's tap did not go away"
        time.sleep(0.02)
    ip("-n", ns, "tuntap", "add", "dev", "ctap0", "mode", "tap")  # someone else's device now

    result = virtnet(d, "list", "--all")
    ok(result)
    assert "domain 'crashed': QEMU" in result.stderr and "is no longer running" in result.stderr
    assert "ctap0" in links(ns), "cleanup deleted a device virtnet did not create"
    assert d.record("crashed") is None

