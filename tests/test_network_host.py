"""net-start and net-destroy for real (root), each test in a fresh network namespace: the bridge and
its addresses (read back with `ip -j`), IP forwarding (the namespace's own sysctl), the network's
own nftables table (`nft -j`), a real dnsmasq (its process and its files), and that net-destroy, a
failed net-start and a killed one leave none of it behind. Also what a domain on a network meets
when the network is missing or inactive."""

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hostcases import cli_argv, cli_env, fails, ip_json, ok, virtnet
from test_bridge_helper import bridge_conf

__all__ = ["bridge_conf"]  # a fixture a test here uses

DNSMASQ = "/usr/sbin/dnsmasq"


@pytest.fixture(autouse=True)
def _needs_dnsmasq_and_nft(ns):
    for tool, package in ((DNSMASQ, "dnsmasq-base"), ("/usr/sbin/nft", "nftables")):
        if not os.access(tool, os.X_OK):
            reason = f"needs {tool} (Debian: apt install {package}; `make test` installs it as root)"
            if os.geteuid() == 0:
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)


@pytest.fixture(autouse=True)
def _leave_nothing_running(ns, dirs):
    """A failed test's domains and networks are destroyed (QEMU and dnsmasq would outlive it)."""
    yield
    for record in sorted((dirs.state / "running").glob("*.json")) if (dirs.state / "running").exists() else []:
        virtnet(dirs, "destroy", record.stem)
    running = dirs.state / "networks" / "running"
    for record in sorted(running.glob("*.json")) if running.exists() else []:
        virtnet(dirs, "net-destroy", record.stem)


def nat_xml(name="natnet", bridge="vnbr0", subnet="192.0.2", extra=""):
    return (f"<network>\n  <name>{name}</name>\n  <forward mode='nat'/>\n  <bridge name='{bridge}' stp='off'/>\n"
            f"  <domain name='example.test'/>\n{extra}"
            f"  <ip address='{subnet}.1' prefix='24'>\n    <dhcp>\n"
            f"      <range start='{subnet}.100' end='{subnet}.200'/>\n    </dhcp>\n  </ip>\n</network>\n")


def define(dirs, tmp_path, xml, name="net"):
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    return ok(virtnet(dirs, "net-define", path))


def nft_tables(ns):
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "tables"], capture_output=True,
                         text=True, check=True).stdout
    return [(t["table"]["family"], t["table"]["name"]) for t in json.loads(out)["nftables"] if "table" in t]


def nft_rules(ns, table):
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", table], capture_output=True,
                         text=True, check=True).stdout
    return out


def sysctl(ns, key):
    return subprocess.run(["ip", "netns", "exec", ns, "cat", f"/proc/sys/{key}"], capture_output=True, text=True,
                          check=True).stdout.strip()


def forwarding(ns, version=4):
    path = "/proc/sys/net/ipv4/ip_forward" if version == 4 else "/proc/sys/net/ipv6/conf/all/forwarding"
    return subprocess.run(["ip", "netns", "exec", ns, "cat", path], capture_output=True, text=True,
                          check=True).stdout.strip()


def dnsmasq_pids(runtime):
    """dnsmasq processes whose command line names a file under RUNTIME."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"dnsmasq") and any(str(runtime).encode() in a for a in argv):
            pids.append(int(entry))
    return pids


def links(ns):
    return {link["ifname"]: link for link in ip_json(ns, "-d", "link", "show")}


def assert_clean(ns, dirs, bridge="vnbr0"):
    """Nothing of any network is left: bridge, table, dnsmasq, runtime files, record; forwarding off."""
    assert bridge not in links(ns)
    assert [t for t in nft_tables(ns) if t[1].startswith("virtnet-net-")] == []
    assert dnsmasq_pids(dirs.runtime) == []
    assert not (dirs.runtime / ".networks").exists()  # the last network's net-destroy removes it
    running = dirs.state / "networks" / "running"
    assert not running.exists() or os.listdir(running) == []
    assert forwarding(ns) == "0"


def test_net_start_makes_bridge_forwarding_table_and_dnsmasq_and_net_destroy_removes_them(ns, dirs, tmp_path):
    define(dirs, tmp_path, nat_xml(extra="  <mtu size='1400'/>\n  <mac address='52:54:00:0a:0b:0c'/>\n"))
    assert forwarding(ns) == "0"
    started = time.monotonic()
    assert ok(virtnet(dirs, "net-start", "natnet", netns=ns)) == "Network 'natnet' started: bridge vnbr0\n"
    start_seconds = time.monotonic() - started
    bridge = links(ns)["vnbr0"]
    assert bridge["linkinfo"]["info_kind"] == "bridge" and bridge["mtu"] == 1400
    assert bridge["address"] == "52:54:00:0a:0b:0c" and "UP" in bridge["flags"]
    addresses = [(a["local"], a["prefixlen"]) for a in ip_json(ns, "addr", "show", "dev", "vnbr0")[0]["addr_info"]
                 if a["family"] == "inet"]
    assert addresses == [("192.0.2.1", 24)]
    assert forwarding(ns) == "1"
    assert ("inet", "virtnet-net-natnet") in nft_tables(ns)
    rules = nft_rules(ns, "virtnet-net-natnet")
    assert 'ip saddr 192.0.2.0/24 ip daddr != 192.0.2.0/24 counter packets 0 bytes 0 masquerade' in rules
    assert 'oifname "vnbr0" ip daddr 192.0.2.0/24 ct state established,related' in rules
    pids = dnsmasq_pids(dirs.runtime)
    assert len(pids) == 1
    conf = (dirs.runtime / ".networks" / "natnet" / "dnsmasq.conf").read_text()
    assert "interface=vnbr0\n" in conf and "dhcp-range=192.0.2.100,192.0.2.200,255.255.255.0\n" in conf
    # dnsmasq listens on the bridge only (bind-dynamic): DHCP on 67, DNS on 53.
    sockets = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hlunp"], capture_output=True, text=True).stdout
    assert f"pid={pids[0]}" in sockets and "192.0.2.1:53" in sockets
    listed = ok(virtnet(dirs, "net-list")).splitlines()
    assert listed[2].split() == ["natnet", "active", "no", "yes"]
    assert "Active:         yes" in ok(virtnet(dirs, "net-info", "natnet"))
    assert fails(virtnet(dirs, "net-start", "natnet", netns=ns)) == "virtnet: error: network 'natnet' is already active"
    assert "`virtnet net-destroy natnet` first" in fails(virtnet(dirs, "net-undefine", "natnet"))
    assert ok(virtnet(dirs, "net-destroy", "natnet")) == "Network 'natnet' destroyed\n"
    assert_clean(ns, dirs)
    assert start_seconds < 10, f"net-start took {start_seconds:.1f} s"
    assert fails(virtnet(dirs, "net-destroy", "natnet")) == "virtnet: error: network 'natnet' is not active"


def test_a_failed_net_start_rolls_back_everything(ns, dirs, tmp_path):
    define(dirs, tmp_path, nat_xml(extra="").replace("<ip address='192.0.2.1' prefix='24'>",
                                                     "<ip address='192.0.2.1' prefix='24'>\n    "
                                                     "<tftp root='/nonexistent-tftp-root'/>"))
    error = fails(virtnet(dirs, "net-start", "natnet", netns=ns))
    assert error.startswith("virtnet: error: dnsmasq for network 'natnet' failed (exit 3): ") and \
        "/nonexistent-tftp-root" in error
    assert_clean(ns, dirs)
    assert ok(virtnet(dirs, "net-list", "--all")).splitlines()[2].split()[:2] == ["natnet", "inactive"]


def test_a_bridge_name_in_use_is_refused_before_anything_is_done(ns, dirs, tmp_path):
    subprocess.run(["ip", "-n", ns, "link", "add", "vnbr0", "type", "bridge"], check=True)
    define(dirs, tmp_path, nat_xml())
    assert "a device named 'vnbr0' already exists" in fails(virtnet(dirs, "net-start", "natnet", netns=ns))
    assert "vnbr0" in links(ns)  # the administrator's device is left alone
    assert dnsmasq_pids(dirs.runtime) == [] and forwarding(ns) == "0"


def test_a_killed_net_start_is_undone_by_the_next_command(ns, dirs, tmp_path):
    """net-start killed with SIGKILL at random moments once it has begun recording (its record says
    it is starting): the next command undoes what it had done, saying so, and the namespace is as
    it was (or, when the start had finished, the network is active and net-destroy cleans up)."""
    define(dirs, tmp_path, nat_xml())
    record = dirs.state / "networks" / "running" / "natnet.json"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    interrupted = 0
    for _ in range(6):
        process = subprocess.Popen(cli_argv(dirs, "net-start", "natnet", netns=ns), env=cli_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not record.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.06))
        process.send_signal(signal.SIGKILL)
        process.wait()
        result = virtnet(dirs, "net-list", "--all")
        if ok(result).splitlines()[2].split()[1] == "active":
            ok(virtnet(dirs, "net-destroy", "natnet"))
        else:
            assert result.stderr.startswith("virtnet: warning: network 'natnet': its start (virtnet pid ") and \
                result.stderr.endswith(") was interrupted; undid what it had done\n"), f"seed {seed}: {result.stderr}"
            interrupted += 1
        assert_clean(ns, dirs), f"seed {seed}"
    assert interrupted, f"no kill landed during a start (seed {seed})"


def test_forwarding_stays_on_while_another_network_needs_it(ns, dirs, tmp_path):
    define(dirs, tmp_path, nat_xml(), "a")
    define(dirs, tmp_path, nat_xml("other", "vnbr1", "198.51.100"), "b")
    ok(virtnet(dirs, "net-start", "natnet", netns=ns))
    ok(virtnet(dirs, "net-start", "other", netns=ns))
    ok(virtnet(dirs, "net-destroy", "other"))
    assert forwarding(ns) == "1" and "vnbr1" not in links(ns) and "vnbr0" in links(ns)
    ok(virtnet(dirs, "net-destroy", "natnet"))
    assert_clean(ns, dirs)


def test_isolated_and_routed_networks_rules(ns, dirs, tmp_path):
    define(dirs, tmp_path, "<network>\n  <name>iso</name>\n  <bridge name='vniso'/>\n"
                           "  <ip address='203.0.113.1' prefix='24'/>\n</network>\n", "iso")
    ok(virtnet(dirs, "net-start", "iso", netns=ns))
    assert forwarding(ns) == "0"  # nothing is forwarded for an isolated network
    assert sysctl(ns, "net/ipv6/conf/vniso/disable_ipv6") == "1"  # no IPv6 address, no <network ipv6='yes'>
    rules = nft_rules(ns, "virtnet-net-iso")
    assert 'iifname "vniso" oifname "vniso" counter packets 0 bytes 0 accept' in rules
    assert 'iifname "vniso" counter packets 0 bytes 0 reject' in rules and "masquerade" not in rules
    conf = (dirs.runtime / ".networks" / "iso" / "dnsmasq.conf").read_text()
    assert "dhcp-option=3\nno-resolv\n" in conf
    ok(virtnet(dirs, "net-destroy", "iso"))
    define(dirs, tmp_path, "<network>\n  <name>rt</name>\n  <forward mode='route'/>\n  <bridge name='vnrt'/>\n"
                           "  <ip address='203.0.113.1' prefix='24'/>\n</network>\n", "rt")
    ok(virtnet(dirs, "net-start", "rt", netns=ns))
    rules = nft_rules(ns, "virtnet-net-rt")
    assert 'oifname "vnrt" ip daddr 203.0.113.0/24 counter packets 0 bytes 0 accept' in rules
    assert "masquerade" not in rules and forwarding(ns) == "1"
    ok(virtnet(dirs, "net-destroy", "rt"))
    assert_clean(ns, dirs, "vnrt")


def test_other_tables_are_never_touched(ns, dirs, tmp_path):
    subprocess.run(["ip", "netns", "exec", ns, "nft", "add table inet admin; add chain inet admin c"], check=True)
    before = nft_rules(ns, "admin")
    define(dirs, tmp_path, nat_xml())
    ok(virtnet(dirs, "net-start", "natnet", netns=ns))
    ok(virtnet(dirs, "net-destroy", "natnet"))
    assert nft_rules(ns, "admin") == before


def test_bridge_mode_needs_the_hosts_bridge(ns, dirs, tmp_path):
    define(dirs, tmp_path, "<network>\n  <name>host</name>\n  <forward mode='bridge'/>\n  <bridge name='hostbr'/>\n"
                           "</network>\n")
    assert "bridge 'hostbr', which does not exist" in fails(virtnet(dirs, "net-start", "host", netns=ns))
    subprocess.run(["ip", "-n", ns, "link", "add", "hostbr", "type", "bridge"], check=True)
    ok(virtnet(dirs, "net-start", "host", netns=ns))
    assert nft_tables(ns) == [] and dnsmasq_pids(dirs.runtime) == []
    ok(virtnet(dirs, "net-destroy", "host"))
    assert "hostbr" in links(ns)  # the host's bridge stays


def test_autostart_starts_the_marked_networks(ns, dirs, tmp_path):
    define(dirs, tmp_path, nat_xml())
    ok(virtnet(dirs, "net-autostart", "natnet"))
    assert ok(virtnet(dirs, "net-start", "--autostart", netns=ns)) == "Network 'natnet' started\n"
    assert ok(virtnet(dirs, "net-start", "--autostart", netns=ns)) == ""  # already active
    ok(virtnet(dirs, "net-destroy", "natnet"))
    assert_clean(ns, dirs)


DOMAIN = """<domain type='qemu'>
  <name>web</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='natnet'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"""


def test_a_domain_on_an_unknown_or_inactive_network(ns, dirs, tmp_path):
    path = tmp_path / "web.xml"
    path.write_text(DOMAIN)
    result = virtnet(dirs, "define", path)
    ok(result)
    line = 1 + DOMAIN.splitlines().index("    <interface type='network'>")
    assert result.stderr == (f"virtnet: warning: {path}:{line}: network 'natnet' is not defined: `virtnet start web` will "
                             "refuse it until `virtnet net-define` and `virtnet net-start natnet`\n")
    assert "network 'natnet' is not defined" in fails(virtnet(dirs, "start", "web", netns=ns))
    define(dirs, tmp_path, nat_xml())
    assert virtnet(dirs, "define", path).stderr == ""
    error = fails(virtnet(dirs, "start", "web", netns=ns))
    assert error == "virtnet: error: network 'natnet' is not active; start it with `virtnet net-start natnet`"
    assert dirs.running_records() == []


def test_start_and_hot_plug_put_taps_on_the_networks_bridge_isolated_as_it_says(ns, dirs, tmp_path):
    define(dirs, tmp_path, nat_xml(extra="  <port isolated='yes'/>\n  <mtu size='1400'/>\n"))
    ok(virtnet(dirs, "net-start", "natnet", netns=ns))
    path = tmp_path / "web.xml"
    path.write_text(DOMAIN)
    ok(virtnet(dirs, "define", path))
    ok(virtnet(dirs, "start", "web", "--paused", netns=ns))
    ok(virtnet(dirs, "attach-interface", "web", "network", "natnet", "--model", "virtio", "--live"))
    taps = sorted(dirs.record("web")["taps"].values())
    assert len(taps) == 2
    for tap in taps:
        link = links(ns)[tap]
        assert link["master"] == "vnbr0" and link["mtu"] == 1400, link
        assert link["linkinfo"]["info_slave_data"]["isolated"] is True, link
    ok(virtnet(dirs, "destroy", "web"))
    assert not set(taps) & set(links(ns))
    ok(virtnet(dirs, "net-destroy", "natnet"))
    assert_clean(ns, dirs)


def test_ipv6_addresses_forwarding_router_advertisements_and_rules(ns, dirs, tmp_path):
    define(dirs, tmp_path, nat_xml(extra="  <ip family='ipv6' address='2001:db8:ca2:2::1' prefix='64'>\n"
                                         "    <dhcp><range start='2001:db8:ca2:2::100' end='2001:db8:ca2:2::1ff'/></dhcp>\n"
                                         "  </ip>\n"))
    assert forwarding(ns, 6) == "0"
    ok(virtnet(dirs, "net-start", "natnet", netns=ns))
    addresses = {(a["local"], a["prefixlen"]) for a in ip_json(ns, "addr", "show", "dev", "vnbr0")[0]["addr_info"]}
    assert {("192.0.2.1", 24), ("2001:db8:ca2:2::1", 64)} <= addresses
    assert forwarding(ns, 6) == "1" and forwarding(ns, 4) == "1"
    assert sysctl(ns, "net/ipv6/conf/vnbr0/accept_ra") == "0" and sysctl(ns, "net/ipv6/conf/vnbr0/autoconf") == "0"
    rules = nft_rules(ns, "virtnet-net-natnet")
    assert 'iifname "vnbr0" ip6 saddr 2001:db8:ca2:2::/64 counter packets 0 bytes 0 accept' in rules
    assert "ip6 saddr 2001:db8:ca2:2::/64 ip6 daddr != 2001:db8:ca2:2::/64" not in rules  # IPv6 is routed, not NATed
    conf = (dirs.runtime / ".networks" / "natnet" / "dnsmasq.conf").read_text()
    assert "dhcp-range=2001:db8:ca2:2::100,2001:db8:ca2:2::1ff,64\n" in conf and conf.endswith("enable-ra\n")
    ok(virtnet(dirs, "net-destroy", "natnet"))
    assert forwarding(ns, 6) == "0"
    assert_clean(ns, dirs)


def test_without_privileges_the_bridge_helper_makes_the_tap_where_its_acl_allows_the_bridge(ns, dirs, tmp_path,
                                                                                            bridge_conf):
    from test_bridge_helper import logging_helper, real_helper

    define(dirs, tmp_path, nat_xml())
    ok(virtnet(dirs, "net-start", "natnet", netns=ns))
    path = tmp_path / "web.xml"
    path.write_text(DOMAIN)
    ok(virtnet(dirs, "define", path))
    wrapper, log = logging_helper(tmp_path, real_helper())
    bridge_conf("allow br0\n")
    denied = fails(virtnet(dirs, "start", "web", "--paused", "--unprivileged", "--bridge-helper", wrapper, netns=ns))
    assert "`allow vnbr0`" in denied and not log.exists()
    bridge_conf("allow vnbr0\n")
    ok(virtnet(dirs, "start", "web", "--paused", "--unprivileged", "--bridge-helper", wrapper, netns=ns))
    [line] = log.read_text().splitlines()
    assert line.startswith("--use-vnet --br=vnbr0 --fd=")
    tap = dirs.record("web")["taps"]["net0"]
    assert links(ns)[tap]["master"] == "vnbr0"
    ok(virtnet(dirs, "destroy", "web"))
    ok(virtnet(dirs, "net-destroy", "natnet"))
    assert_clean(ns, dirs)


def test_net_destroy_after_the_namespace_was_deleted_stops_dnsmasq_and_removes_the_files(ns, dirs, tmp_path):
    import uuid

    other = f"vnt-gone-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", other], check=True)
    define(dirs, tmp_path, nat_xml())
    ok(virtnet(dirs, "net-start", "natnet", netns=other))
    assert len(dnsmasq_pids(dirs.runtime)) == 1
    subprocess.run(["ip", "netns", "del", other], check=True)  # dnsmasq keeps the namespace alive, unnamed
    assert ok(virtnet(dirs, "net-destroy", "natnet")) == "Network 'natnet' destroyed\n"
    assert dnsmasq_pids(dirs.runtime) == []
    assert not (dirs.runtime / ".networks").exists() and os.listdir(dirs.state / "networks" / "running") == []


def test_the_networks_bandwidth_shapes_its_bridge_and_net_destroy_removes_it(ns, dirs, tmp_path):
    """<network><bandwidth>: the bridge's egress (to the guests) and, through an ifb device, its
    ingress (from them) get libvirt's HTB, as a tap's <bandwidth> does."""
    bandwidth = ("  <bandwidth>\n    <inbound average='1000' peak='2000' burst='64'/>\n"
                 "    <outbound average='500'/>\n  </bandwidth>\n")
    define(dirs, tmp_path, nat_xml(extra=bandwidth))
    ok(virtnet(dirs, "net-start", "natnet", netns=ns))
    root = subprocess.run(["tc", "-n", ns, "-j", "qdisc", "show", "dev", "vnbr0", "root"], capture_output=True,
                          text=True, check=True).stdout
    classes = subprocess.run(["tc", "-n", ns, "class", "show", "dev", "vnbr0"], capture_output=True, text=True,
                             check=True).stdout
    assert '"kind":"htb"' in root.replace(" ", ""), root
    assert "rate 8Mbit ceil 16Mbit" in classes, classes  # 1000 and 2000 kbps: 1000 bytes/s each, as tc reads kbps
    ingress = subprocess.run(["tc", "-n", ns, "filter", "show", "dev", "vnbr0", "ingress"], capture_output=True,
                             text=True, check=True).stdout
    assert "mirred" in ingress and "ifb-vnbr0" in ingress, ingress
    ifb_classes = subprocess.run(["tc", "-n", ns, "class", "show", "dev", "ifb-vnbr0"], capture_output=True,
                                 text=True, check=True).stdout
    assert "rate 4Mbit" in ifb_classes, ifb_classes
    ok(virtnet(dirs, "net-destroy", "natnet"))
    assert "ifb-vnbr0" not in links(ns)
    assert_clean(ns, dirs)
