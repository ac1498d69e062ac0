"""The host plan (`virtnet plan`): which actions `start` takes for each interface type, tap naming,
teardown order, the host-side MAC rule, and the text/json/sh/networkd renderings.

Pure: planning touches no host state (the names in use are passed in), so these tests need
neither root nor QEMU. Only `sh -n` and one CLI call run a process.
"""

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from virtnet.conf.load import load_text
from virtnet.errors import VirtnetError
from virtnet.conf.mac import host_side as host_mac
from virtnet.host.plan import build_plan
from virtnet.host.planformat import render_plan

REPO = Path(__file__).resolve().parent.parent


def domain(interfaces, *, name="planned", type_="qemu", extra=""):
    return load_text(textwrap.dedent(f"""\
        <domain type='{type_}'>
          <name>{name}</name>
          <memory unit='MiB'>64</memory>{extra}
          <os><type arch='x86_64' machine='pc'>hvm</type></os>
          <devices>
            <emulator>/usr/bin/qemu-system-x86_64</emulator>
        """) + textwrap.dedent(interfaces) + "  </devices>\n</domain>\n", "test.xml").domain


def plan_of(interfaces, *, names_in_use=(), host_caps=frozenset(), paused=False, type_="qemu", extra=""):
    return build_plan(domain(interfaces, type_=type_, extra=extra), names_in_use=set(names_in_use),
                      host_caps=host_caps, paused=paused)


def kinds(actions):
    return [a.kind for a in actions]


def setup_of(plan):
    """(kind, device, the action's main argument) for each setup action."""
    out = []
    for a in plan.setup:
        detail = a.as_dict()
        arg = next((detail[k] for k in ("ifname", "bridge", "netdev", "path") if detail.get(k) is not None), None)
        out.append((a.kind, a.device, arg))
    return out


# --- what start does, per interface type ----------------------------------------------------------


def test_managed_ethernet():
    plan = plan_of("""\
        <interface type='ethernet'>
          <mac address='52:54:00:00:00:01'/>
          <target dev='mtap0'/>
          <model type='virtio'/>
          <mtu size='9000'/>
          <script path='/etc/virtnet/ifup'/>
        </interface>
    """)
    assert setup_of(plan) == [
        ("create-tap", "net0", "mtap0"), ("set-mac", "net0", "mtap0"), ("set-mtu", "net0", "mtap0"), ("set-up", "net0", "mtap0"),
        ("run-script", "net0", "mtap0"), ("start-qemu", "", None), ("resume", "", None),
    ]
    create, set_mac, set_mtu = plan.setup[:3]
    assert (create.queues, create.vnet_hdr) == (1, True)
    assert set_mac.mac == "fe:54:00:00:00:01"
    assert set_mtu.mtu == 9000
    assert plan.setup[4].path == "/etc/virtnet/ifup"
    assert kinds(plan.teardown) == ["delete-tap", "stop-qemu"]


def test_managed_ethernet_without_mtu_sets_none_and_rtl8139_gets_no_vnet_hdr():
    plan = plan_of("""\
        <interface type='ethernet'>
          <target dev='mtap0'/>
        </interface>
    """)
    assert kinds(plan.setup) == ["create-tap", "set-mac", "set-up", "start-qemu", "resume"]
    assert plan.setup[0].vnet_hdr is False


def test_unmanaged_ethernet_is_only_opened_but_keeps_scripts_and_host_addresses():
    plan = plan_of("""\
        <interface type='ethernet'>
          <source>
            <ip address='192.0.2.1' family='ipv4' prefix='24'/>
            <route family='ipv4' address='198.51.100.0' prefix='24' gateway='192.0.2.254'/>
          </source>
          <target dev='mytap0' managed='no'/>
          <model type='virtio'/>
          <driver queues='4'/>
          <script path='/etc/virtnet/ifup'/>
          <downscript path='/etc/virtnet/ifdown'/>
          <mtu size='1400'/>
        </interface>
    """, names_in_use={"mytap0"})
    assert setup_of(plan) == [
        ("attach-tap", "net0", "mytap0"), ("run-script", "net0", "mytap0"), ("add-address", "net0", "mytap0"),
        ("add-route", "net0", "mytap0"), ("start-qemu", "", None), ("resume", "", None),
    ]
    attach = plan.setup[0]
    assert (attach.queues, attach.vnet_hdr) == (4, True)
    # Never given a MAC, an MTU or an up, never deleted: at teardown only what virtnet added to it
    # goes again (route and address, newest first), then the downscript runs.
    assert kinds(plan.teardown) == ["stop-qemu", "delete-route", "delete-address", "run-downscript"]
    assert {a.ifname for a in plan.teardown[1:]} == {"mytap0"}


def test_bridge():
    plan = plan_of("""\
        <interface type='bridge'>
          <mac address='52:54:00:00:00:02'/>
          <source bridge='br0'/>
          <model type='e1000e'/>
        </interface>
    """)
    assert setup_of(plan) == [
        ("check-bridge", "net0", "br0"), ("create-tap", "net0", "vnet0"), ("set-mac", "net0", "vnet0"),
        ("set-mtu", "net0", "vnet0"), ("enslave", "net0", "vnet0"), ("set-up", "net0", "vnet0"),
        ("start-qemu", "", None), ("resume", "", None),
    ]
    set_mtu, enslave = plan.setup[3], plan.setup[4]
    # MAC and MTU before enslaving; no <mtu>: the bridge's.
    assert (set_mtu.mtu, set_mtu.bridge) == (None, "br0")
    assert enslave.bridge == "br0"
    assert plan.setup[1].vnet_hdr is True  # e1000e is vnet-header capable
    assert kinds(plan.teardown) == ["delete-tap", "stop-qemu"]


def test_bridge_with_mtu_uses_it():
    plan = plan_of("""\
        <interface type='bridge'>
          <source bridge='br0'/>
          <model type='virtio'/>
          <mtu size='1400'/>
        </interface>
    """)
    [set_mtu] = [a for a in plan.setup if a.kind == "set-mtu"]
    assert set_mtu.mtu == 1400


@pytest.mark.parametrize("interface", [
    "<interface type='user'/>",
    "<interface type='server'><source address='127.0.0.1' port='5555'/></interface>",
    "<interface type='client'><source address='127.0.0.1' port='5555'/></interface>",
    "<interface type='mcast'><source address='230.0.0.1' port='5558'/></interface>",
    "<interface type='udp'><source address='127.0.0.1' port='5555'><local address='127.0.0.1' port='5556'/>"
    "</source></interface>",
    "<interface type='vhostuser'><source type='unix' path='/tmp/vhost0.sock' mode='client'/>"
    "<model type='virtio'/></interface>",
], ids=["user", "server", "client", "mcast", "udp", "vhostuser"])
def test_types_without_host_side_only_start_qemu(interface):
    # vhost-user backends map guest RAM, which must therefore be shared.
    shared = "<memoryBacking><access mode='shared'/></memoryBacking>" if "vhostuser" in interface else ""
    plan = plan_of(interface + "\n", extra=shared)
    assert kinds(plan.setup) == ["start-qemu", "resume"]
    assert kinds(plan.teardown) == ["stop-qemu"]


def test_a_network_interface_needs_its_network_resolved_and_active():
    """`plan` shows what `start` would do: a type='network' interface whose network was not
    resolved to an active one (virtnet.network.ports) is refused, naming net-start."""
    with pytest.raises(VirtnetError, match=r"network 'default' is not active; start it with `virtnet net-start "
                                           r"default`"):
        plan_of("<interface type='network'><source network='default'/><model type='virtio'/></interface>\n")


def test_a_network_interface_is_a_tap_on_its_bridge_isolated_when_the_network_says_so():
    from virtnet.network.ports import NetworkPort

    for isolated in (False, True):
        planned = domain("<interface type='network'><source network='default'/><model type='virtio'/></interface>\n")
        planned.interfaces[0].network_port = NetworkPort("default", "virbr7", isolated)
        setup = [a for a in build_plan(planned).setup if a.device == "net0"]
        assert kinds(setup)[:6] == ["check-bridge", "create-tap", "set-mac", "set-mtu", "enslave", "set-up"]
        assert setup[3].bridge == "virbr7" and setup[4].bridge == "virbr7"  # the bridge's MTU: the network's
        assert ("isolate-port" in kinds(setup)) == isolated
    # Without CAP_NET_ADMIN, qemu-bridge-helper makes the tap on the network's bridge.
    planned = domain("<interface type='network'><source network='default'/><model type='virtio'/></interface>\n")
    planned.interfaces[0].network_port = NetworkPort("default", "virbr7", True)
    helped = build_plan(planned, bridge_helper="/usr/lib/qemu/qemu-bridge-helper")
    assert kinds([a for a in helped.setup if a.device == "net0"]) == ["check-bridge", "run-bridge-helper"]
    assert [a.bridge for a in helped.setup if a.device == "net0"] == ["virbr7", "virbr7"]
    assert helped.warnings == ["net0 (network 'default'): qemu-bridge-helper cannot isolate its tap, so "
                               "<port isolated='yes'> is not applied"]


def test_link_down_is_set_over_qmp_after_start_and_paused_skips_resume():
    interfaces = """\
        <interface type='user'/>
        <interface type='user'><link state='down'/></interface>
        <interface type='user'><alias name='ua-uplink'/><link state='down'/></interface>
    """
    plan = plan_of(interfaces)
    assert setup_of(plan) == [("start-qemu", "", None), ("set-link-down", "net1", "hostnet1"),
                              ("set-link-down", "ua-uplink", "hostua-uplink"), ("resume", "", None)]
    assert kinds(plan_of(interfaces, paused=True).setup) == ["start-qemu", "set-link-down", "set-link-down"]


def test_vhost_net_only_when_the_host_has_it_or_it_is_required():
    virtio = "<interface type='ethernet'><model type='virtio'/>{}</interface>\n"
    assert "open-vhost" not in kinds(plan_of(virtio.format(""), type_="kvm").setup)
    with_vhost = plan_of(virtio.format(""), type_="kvm", host_caps=frozenset({"vhost-net"}))
    [vhost] = [a for a in with_vhost.setup if a.kind == "open-vhost"]
    assert vhost.required is False
    assert kinds(with_vhost.setup).index("open-vhost") < kinds(with_vhost.setup).index("start-qemu")
    explicit = plan_of(virtio.format("<driver name='vhost'/>"), type_="kvm")
    assert [a.required for a in explicit.setup if a.kind == "open-vhost"] == [True]
    # TCG guests never get vhost-net.
    assert "open-vhost" not in kinds(plan_of(virtio.format(""), host_caps=frozenset({"vhost-net"})).setup)


# --- tap names ----------------------------------------------------------------------------------


def created_names(plan):
    return [a.ifname for a in plan.setup if a.kind == "create-tap"]


def test_generated_names_skip_names_in_use():
    plan = plan_of("""\
        <interface type='ethernet'/>
        <interface type='bridge'><source bridge='br0'/></interface>
        <interface type='ethernet'/>
    """, names_in_use={"vnet0", "vnet2", "eth0"})
    assert created_names(plan) == ["vnet1", "vnet3", "vnet4"]


def test_a_percent_d_template_is_filled_by_virtnet():
    plan = plan_of("""\
        <interface type='ethernet'><target dev='guest%d'/></interface>
        <interface type='ethernet'><target dev='guest%d'/></interface>
        <interface type='ethernet'/>
        <interface type='ethernet'><target dev='fixed0'/></interface>
    """, names_in_use={"guest0", "guest2"})
    assert created_names(plan) == ["guest1", "guest3", "vnet0", "fixed0"]
    assert [a.ifname for a in plan.teardown if a.kind == "delete-tap"] == ["guest1", "guest3", "vnet0", "fixed0"]


def test_an_existing_managed_name_is_refused_with_advice():
    with pytest.raises(VirtnetError) as caught:
        plan_of("""\
            <interface type='user'/>
            <interface type='ethernet'>
              <target dev='mtap0'/>
            </interface>
        """, names_in_use={"mtap0"})
    error = caught.value
    assert "target dev 'mtap0' already exists" in str(error)
    assert "managed='no'" in str(error)
    assert error.line == 9  # the <target> element


def test_an_existing_managed_bridge_target_is_refused_too():
    """Same rule for the tap of a bridge interface: a managed tap must be new (libvirt: "The X
    interface already exists"), and the plan should say so rather than promise to create it."""
    with pytest.raises(VirtnetError, match="'taken0' already exists"):
        plan_of("""\
            <interface type='bridge'>
              <source bridge='br0'/>
              <target dev='taken0'/>
            </interface>
        """, names_in_use={"taken0"})


def test_an_existing_unmanaged_name_is_what_managed_no_is_for():
    plan = plan_of("<interface type='ethernet'><target dev='mytap0' managed='no'/></interface>\n",
                   names_in_use={"mytap0"})
    assert kinds(plan.setup)[0] == "attach-tap"


def test_a_user_alias_is_the_device_id_in_the_plan_and_the_command_line():
    """Each action names the device by the id the command line gives it; a user alias on the first
    NIC does not shift the others (it did when ids were list positions: 'hostnet1' in the plan
    against 'hostnet0' on the command line)."""
    from virtnet.qemu.argv import ArgvOptions, build_argv
    from virtnet.runpaths import DomainPaths

    dom = domain("""\
        <interface type='ethernet'><alias name='ua-first'/><model type='virtio'/></interface>
        <interface type='ethernet'><model type='virtio'/></interface>
    """, type_="kvm")
    plan = build_plan(dom, host_caps={"vhost-net"})
    vhost = [(a.device, a.queues) for a in plan.setup if a.kind == "open-vhost"]
    assert vhost == [("ua-first", 1), ("net0", 1)]
    argv = build_argv(dom, DomainPaths("/run/virtnet", "planned"), ArgvOptions(host_caps={"vhost-net"}))
    netdev_ids = [json.loads(argv[i + 1])["id"] for i, word in enumerate(argv) if word == "-netdev"]
    assert netdev_ids == ["hostua-first", "hostnet0"]
    assert [f"host{device}" for device, _ in vhost] == netdev_ids
    text = render_plan("text", dom, plan, "root")
    assert "ua-first: open /dev/vhost-net x1" in text and "net0: open /dev/vhost-net x1" in text


def test_a_template_never_takes_a_fixed_name_of_the_same_domain():
    plan = plan_of("""\
        <interface type='ethernet'><target dev='mng%d'/></interface>
        <interface type='ethernet'><target dev='mng0'/></interface>
    """)
    assert [a.ifname for a in plan.setup if a.kind == "create-tap"] == ["mng1", "mng0"]


# --- teardown -----------------------------------------------------------------------------------


def test_teardown_deletes_created_taps_in_one_go_then_stops_qemu_then_undoes_the_rest_newest_first():
    plan = plan_of("""\
        <interface type='ethernet'>
          <target dev='a0'/>
          <downscript path='/bin/down-a'/>
        </interface>
        <interface type='bridge'><source bridge='br0'/></interface>
        <interface type='ethernet'>
          <target dev='pre0' managed='no'/>
          <downscript path='/bin/down-pre'/>
        </interface>
        <interface type='user'/>
    """)
    assert [(a.kind, getattr(a, "ifname", None)) for a in plan.teardown] == [
        ("delete-tap", "a0"), ("delete-tap", "vnet0"),
        ("stop-qemu", None),
        ("run-downscript", "pre0"), ("run-downscript", "a0"),
    ]


# --- the host-side MAC --------------------------------------------------------------------------


@pytest.mark.parametrize("guest, host", [
    ("52:54:00:12:34:56", "fe:54:00:12:34:56"),
    ("02:00:00:00:00:01", "fe:00:00:00:00:01"),
    ("fe:11:22:33:44:55", "fa:11:22:33:44:55"),
    ("FE:AB:CD:EF:01:23", "fa:ab:cd:ef:01:23"),
    ("fa:11:22:33:44:55", "fe:11:22:33:44:55"),
])
def test_host_mac_rule(guest, host):
    assert host_mac(guest) == host


def test_plan_sets_the_host_mac_on_managed_taps():
    plan = plan_of("""\
        <interface type='ethernet'><mac address='fe:00:00:00:00:01'/></interface>
        <interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='br0'/></interface>
    """)
    assert [a.mac for a in plan.setup if a.kind == "set-mac"] == ["fa:00:00:00:00:01", "fe:54:00:00:00:02"]


# --- renderings ---------------------------------------------------------------------------------

MIXED = """\
    <interface type='ethernet'>
      <mac address='52:54:00:00:00:01'/>
      <target dev='mtap0'/>
      <model type='virtio'/>
      <mtu size='1400'/>
    </interface>
    <interface type='ethernet'>
      <mac address='fe:11:22:33:44:55'/>
      <target dev='mytap0' managed='no'/>
      <model type='virtio'/>
      <driver queues='2'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:00:00:03'/>
      <source bridge='br0'/>
    </interface>
    <interface type='user'><link state='down'/></interface>
"""


def test_text_numbers_setup_then_teardown():
    dom = domain(MIXED)
    text = render_plan("text", dom, build_plan(dom), "root")
    lines = text.splitlines()
    split = lines.index("teardown:")
    setup, teardown = lines[:split], lines[split + 1:]
    assert [int(line[:2]) for line in setup] == list(range(len(setup)))
    assert [int(line[:2]) for line in teardown] == list(range(len(teardown)))
    assert setup[0] == " 0  net0: create tap mtap0 (vnet_hdr)"
    assert " 1  net0: set mtap0 address fe:54:00:00:00:01" in setup
    assert any("open existing tap mytap0" in line and "multi_queue x2" in line and "managed='no'" in line
               for line in setup)
    assert any(line.endswith("set vnet0 master br0") for line in setup)
    assert any(line.endswith("QMP set_link hostnet3 down") for line in setup)
    assert teardown[:3] == [" 0  net0: delete tap mtap0 (all in one request)", " 1  net2: delete tap vnet0 (all in one request)",
                            " 2  stop QEMU (QMP quit, then SIGTERM, then SIGKILL)"]


def test_json_is_the_same_plan_machine_readable():
    dom = domain(MIXED)
    plan = build_plan(dom)
    data = json.loads(render_plan("json", dom, plan, "root"))
    assert data["domain"] == "planned"
    assert [a["action"] for a in data["setup"]] == kinds(plan.setup)
    assert [a["action"] for a in data["teardown"]] == kinds(plan.teardown)
    assert data["setup"][0] == {"action": "create-tap", "device": "net0", "ifname": "mtap0", "queues": 1, "vnet_hdr": True}
    assert {"action": "set-link-down", "device": "net3", "netdev": "hostnet3"} in data["setup"]


def domain_xml_text(interfaces):
    return ("<domain type='qemu'><name>planned</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
            + textwrap.dedent(interfaces) + "</devices></domain>\n")


def test_cli_plan_json_for_a_file():
    result = subprocess.run([sys.executable, "-m", "virtnet", "plan", "--format", "json", "-"],
                            input=domain_xml_text(MIXED), capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["setup"][-1]["action"] == "resume"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
@pytest.mark.parametrize("owner", ["root", "nobody"])
def test_sh_precreates_the_unmanaged_taps_and_passes_sh_n(tmp_path, owner):
    dom = domain(MIXED)
    script = render_plan("sh", dom, build_plan(dom), owner)
    path = tmp_path / "precreate.sh"
    path.write_text(script)
    check = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert script.startswith("#!/bin/sh\n")
    assert "set -eu" in script
    # Only ethernet taps (managed or not); the bridge's tap is virtnet's business at start.
    # Only the managed='no' tap: a pre-created managed one would make start refuse it.
    assert re.findall(r"ip tuntap add dev (\S+)", script) == ["mytap0"]
    assert 'ip tuntap add dev mytap0 mode tap user "$OWNER" multi_queue vnet_hdr' in script
    assert "ip link set dev mytap0 address fa:11:22:33:44:55 up" in script
    assert "# interface net0 (mtap0) is managed: virtnet creates it at start." in script
    # The owner survives the shell as one word.
    out = subprocess.run(["sh", "-c", script.split("set -eu\n", 1)[1].split("\n", 1)[0] + '; printf %s "$OWNER"'],
                         capture_output=True, text=True)
    assert out.stdout == owner


def test_sh_for_a_domain_without_ethernet_says_so():
    dom = domain("<interface type='user'/>\n")
    script = render_plan("sh", dom, build_plan(dom), "root")
    assert "no ethernet interfaces" in script
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0


def networkd_files(text):
    """{file name: parsed sections} from the `# file: PATH` blocks of `plan --format networkd`."""
    files, current = {}, None
    for line in text.splitlines():
        if line.startswith("# file: "):
            current = line[len("# file: "):]
            files[current] = []
        elif current is not None and not line.startswith("#"):
            files[current].append(line)
    parsed = {}
    for name, lines in files.items():
        config = configparser.ConfigParser(strict=True, interpolation=None)
        config.optionxform = str
        config.read_string("\n".join(lines))
        parsed[os.path.basename(name)] = config
    return parsed


def test_networkd_has_a_tap_netdev_with_multiqueue_for_two_queues():
    dom = domain(MIXED)
    files = networkd_files(render_plan("networkd", dom, build_plan(dom), "nobody"))
    assert sorted(files) == ["50-virtnet-mytap0.netdev", "50-virtnet-mytap0.network"]  # managed='no' only
    mq = files["50-virtnet-mytap0.netdev"]
    assert dict(mq["NetDev"]) == {"Name": "mytap0", "Kind": "tap", "MACAddress": "fa:11:22:33:44:55"}
    assert dict(mq["Tap"]) == {"User": "nobody", "MultiQueue": "yes", "VNetHeader": "yes"}
    assert files["50-virtnet-mytap0.network"]["Match"]["Name"] == "mytap0"
