"""net-start and net-destroy: a network's bridge, addresses and routes (netlink), IP forwarding (the
namespace's own sysctl), its nftables table and its dnsmasq; and undoing exactly that.

Each step that leaves something on the host records its undo in the network's runtime record
(NetworkFiles) before it is taken, with the starting process's identity, so that:
- a failed net-start runs the recorded undos in reverse (rollback) and leaves nothing;
- a killed net-start is noticed by the next command (reap: the starter is gone while the record
  still says starting) and undone the same way;
- net-destroy runs the same undos.
An undo acts only on what it made: the bridge while its ifindex is the one created (or, for a
start killed before it learnt it, a bridge of that name, which did not exist when the start
checked); dnsmasq only when the pid file's process runs with this network's configuration file;
the sysctl only when no other active network of the namespace still forwards.
"""

import contextlib
import os
import shutil
import subprocess
import sys

from virtnet import livestate
from virtnet.errors import HostError, StoreError
from virtnet.host import nft
from virtnet.network import defs, dnsmasq, firewall
from virtnet.network.paths import NetworkPaths, table_name

DNSMASQ_TIMEOUT = 30
DNSMASQ_STOP_TIMEOUT = 5  # seconds for each signal
FORWARDING = {4: "/proc/sys/net/ipv4/ip_forward", 6: "/proc/sys/net/ipv6/conf/all/forwarding"}


def _warn(message):
    print(f"virtnet: warning: {message}", file=sys.stderr)


# --- the undos ----------------------------------------------------------------------------------

def _same_bridge(nl, name, ifindex):
    link = nl.link(name)
    return link is not None and link.kind == "bridge" and (ifindex is None or link.index == ifindex)


def _dnsmasq_pids(pid_path, conf_path):
    """The dnsmasq processes reading CONF_PATH: the one its pid file names, and any other (a start
    killed before dnsmasq wrote its pid file leaves one the file does not name yet)."""
    wanted = f"--conf-file={conf_path}".encode()
    candidates = set()
    with contextlib.suppress(OSError, ValueError):
        candidates.add(int(open(pid_path).read().strip()))
    with contextlib.suppress(OSError):
        candidates.update(int(entry) for entry in os.listdir("/proc") if entry.isdigit())
    found = []
    for pid in sorted(candidates):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"dnsmasq") and wanted in argv:
            found.append(pid)
    return found


def _stop_dnsmasq(undo):
    from virtnet.host import process

    for pid in _dnsmasq_pids(undo["pid_file"], undo["conf"]):
        process.terminate(pid, DNSMASQ_STOP_TIMEOUT, "dnsmasq")


def _forwarding_still_needed(store, name, version, netns_name):
    """Whether another active network of this namespace forwards IPv<VERSION>."""
    nets = defs.files(store)
    for other in nets.running_names():
        if other == name:
            continue
        with contextlib.suppress(StoreError):
            record = nets.read_runtime(other)
            if record and record.get("netns") == netns_name and version in record.get("forwarding", []):
                return True
    return False


def _undo(store, name, record, undo, nl):
    kind = undo["kind"]
    if kind == "delete_bridge":
        if _same_bridge(nl, undo["name"], undo.get("ifindex")):
            nl.delete(undo["name"])
    elif kind == "stop_dnsmasq":
        _stop_dnsmasq(undo)
    elif kind == "delete_table":
        nft.delete_table("inet", undo["table"])
    elif kind == "restore_forwarding":
        if not _forwarding_still_needed(store, name, undo["version"], record.get("netns")):
            with open(FORWARDING[undo["version"]], "w") as f:
                f.write(undo["value"])
    elif kind == "unshape_outbound":
        from virtnet.host import shaping

        shaping.unshape_outbound(undo["bridge"], undo["ifb"])  # the bridge's own qdiscs go with it
    elif kind == "remove_dir":
        shutil.rmtree(undo["path"], ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(undo["path"]))  # .networks/, once the last network's folder is gone
    else:
        raise HostError(f"unknown undo {kind!r} in the record of network '{name}'")


def _teardown(store, name, record):
    """Run a record's undos, last first; the record goes whatever happens. Returns the problems."""
    from virtnet.host import netns
    from virtnet.host.netlink import Netlink

    netns_name = record.get("netns")
    undos = list(reversed(record["teardown"]))
    if netns_name and not os.path.exists(f"/run/netns/{netns_name}"):
        # The namespace is gone, and its bridge, table and sysctl with it: processes and files remain.
        errors = _run_undos(store, name, record, [u for u in undos if u["kind"] in ("stop_dnsmasq", "remove_dir")],
                            None)
    else:
        with netns.inside_if_elsewhere(netns_name), Netlink() as nl:
            errors = _run_undos(store, name, record, undos, nl)
    defs.files(store).clear_runtime(name)
    return errors


def _run_undos(store, name, record, undos, nl):
    errors = []
    for undo in undos:
        try:
            _undo(store, name, record, undo, nl)
        except (HostError, OSError) as e:
            errors.append(str(getattr(e, "message", None) or e))
    return errors


def reap(store):
    """Undo net-starts that were killed (the record still says starting, its starter is gone). Call
    under the store lock."""
    nets = defs.files(store)
    nets.remove_temporaries()  # a record write cut short by a kill
    for name in nets.running_names():
        try:
            record = nets.read_runtime(name)
        except StoreError as e:
            _warn(str(e))
            continue
        if record is None or not record.get("starting"):
            continue
        starter = record.get("starter")
        if isinstance(starter, list) and livestate.process_identity(starter[0]) == starter:
            continue
        errors = _teardown(store, name, record)
        problems = f" (with problems: {'; '.join(errors)})" if errors else ""
        _warn(f"network '{name}': its start (virtnet pid {record['starter'][0]}) was interrupted; undid what it "
              f"had done{problems}")


# --- net-start ----------------------------------------------------------------------------------

class _Starter:
    """One net-start: each step records its undo (and saves the record) before it acts."""

    def __init__(self, store, name, record):
        self.store, self.name, self.record = store, name, record

    def will(self, undo):
        self.record["teardown"].append(undo)
        self.save()
        return undo

    def save(self):
        with self.store.lock():
            defs.files(self.store).write_runtime(self.name, self.record)


def _make_runtime_dir(store, paths):
    """RUNTIME_DIR/.networks/NAME, checked as a domain's runtime folder is (ours, 0700, no symlink)."""
    from virtnet.runner import check_runtime_dir, make_private_dir

    check_runtime_dir(store.runtime_dir)
    check_runtime_dir(paths.dir.parent)
    make_private_dir(paths.dir)


def _write(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _enable_forwarding(starter, version):
    path = FORWARDING[version]
    with open(path) as f:
        before = f.read().strip()
    starter.record.setdefault("forwarding", []).append(version)
    if before != "1":
        starter.will({"kind": "restore_forwarding", "version": version, "value": before})
        with open(path, "w") as f:
            f.write("1")
    else:
        starter.save()


def _start_dnsmasq(network, paths, starter):
    binary = dnsmasq.find_binary()
    if binary is None:
        raise HostError(f"network '{network.name}' needs dnsmasq for DHCP and DNS: install it (Debian: apt install "
                        "dnsmasq-base)")
    _write(paths.conf, dnsmasq.config(network, paths))
    _write(paths.hostsfile, dnsmasq.hostsfile(network))
    _write(paths.addnhosts, dnsmasq.addnhosts(network))
    starter.will({"kind": "stop_dnsmasq", "pid_file": str(paths.pid), "conf": str(paths.conf)})
    try:
        # dnsmasq forks into the background once it is listening; its parent's exit status is the verdict.
        result = subprocess.run(dnsmasq.command(binary, paths), stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=DNSMASQ_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise HostError(f"dnsmasq for network '{network.name}' did not start within {DNSMASQ_TIMEOUT} s") from None
    if result.returncode != 0:
        detail = " ".join((result.stderr or result.stdout or "no output").split())
        raise HostError(f"dnsmasq for network '{network.name}' failed (exit {result.returncode}): {detail}")


def _ipv6_sysctls(network, bridge):
    """As libvirt (networkSetIPv6Sysctls): a bridge without IPv6 addresses gets no IPv6 at all unless
    <network ipv6='yes'>; one with them takes no router advertisements and no autoconfiguration
    (it is the router). These go with the bridge, so they need no undo."""
    folder = f"/proc/sys/net/ipv6/conf/{bridge}"
    if not os.path.isdir(folder):
        return  # IPv6 disabled in this kernel
    if not network.ips_of("ipv6"):
        settings = {} if network.ipv6 else {"disable_ipv6": "1"}
    else:
        settings = {"accept_ra": "0", "autoconf": "0"}
    for key, value in settings.items():
        with open(f"{folder}/{key}", "w") as f:
            f.write(value)


def _set_up(network, nl, paths, starter):
    if network.own_bridge:
        name = network.bridge_name
        if nl.exists(name):
            raise HostError(f"network '{network.name}': a device named '{name}' already exists; remove it or "
                            "choose another <bridge name>")
        bridge = network.bridge
        undo = starter.will({"kind": "delete_bridge", "name": name, "ifindex": None})
        undo["ifindex"] = nl.add_bridge(name, stp=bridge.stp != "off", delay=bridge.delay or 0,
                                        mac=network.mac, mtu=network.mtu)
        starter.save()
        _ipv6_sysctls(network, name)
        for ip in network.ips:
            nl.add_address(name, ip.address, ip.prefix)
        nl.set_up(name)
        for route in network.routes:
            nl.add_route(name, route.address, route.prefix, route.gateway, route.metric)
        _shape(network, name, starter)
    elif not nl.exists(network.bridge_name):
        raise HostError(f"network '{network.name}' forwards to bridge '{network.bridge_name}', which does not exist "
                        "in this network namespace; create it first")
    if network.mode in ("nat", "route"):
        for version in sorted({ip.ip.version for ip in network.ips}):
            _enable_forwarding(starter, version)
    if firewall.wants_rules(network):
        starter.will({"kind": "delete_table", "table": table_name(network.name)})
        firewall.load(network)
    if dnsmasq.needs_dnsmasq(network):
        _start_dnsmasq(network, paths, starter)


def _shape(network, bridge, starter):
    """The network's <bandwidth> on its bridge, as libvirt applies it (host.shaping, the same tc
    setup as a tap's): inbound, to the guests, on the bridge's egress; outbound, from them, on its
    ingress, through an ifb device where the kernel has one, else policed."""
    if network.inbound is None and network.outbound is None:
        return
    from virtnet.host import shaping
    from virtnet.host.plan import ShapeInbound, ShapeOutbound
    from virtnet.hostcaps import probe

    caps = probe(tc=True)
    sfq = shaping.CAP_SFQ in caps
    rates = network.inbound
    if rates is not None and rates.average:
        shaping.shape_inbound(ShapeInbound("", bridge, rates.average, rates.peak, rates.burst, sfq))
    rates = network.outbound
    if rates is not None and rates.average:
        ifb = shaping.ifb_name(bridge) if shaping.CAP_IFB in caps else None
        if ifb:
            starter.will({"kind": "unshape_outbound", "bridge": bridge, "ifb": ifb})
        shaping.shape_outbound(ShapeOutbound("", bridge, rates.average, rates.peak, rates.burst, ifb, sfq))


def start(store, name, netns_name=None):
    """Start a defined network; any failure undoes every step already taken."""
    from virtnet.host.netlink import Netlink

    paths = NetworkPaths(store.runtime_dir, name)
    with store.lock():
        reap(store)
        nets = defs.files(store)
        network = defs.load_defined(store, name).network
        if nets.read_runtime(name) is not None:
            raise StoreError(f"network '{name}' is already active")
        if network.dnsmasq_options:
            dnsmasq.config(network, paths)  # refuses them, before anything is done
        _make_runtime_dir(store, paths)
        record = {"netns": netns_name, "bridge": network.bridge_name, "port_isolated": network.port_isolated,
                  "starting": True,
                  "starter": livestate.process_identity(os.getpid()), "teardown": [],
                  "runtime_dir": str(paths.dir)}
        record["teardown"].append({"kind": "remove_dir", "path": str(paths.dir)})
        nets.write_runtime(name, record)
    starter = _Starter(store, name, record)
    try:
        with Netlink() as nl:
            _set_up(network, nl, paths, starter)
    except BaseException:
        with store.lock():
            errors = _teardown(store, name, record)
        for error in errors:
            _warn(f"network '{name}': rollback: {error}")
        raise
    record["starting"] = False
    record.pop("starter", None)
    starter.save()
    return network


def destroy(store, name):
    with store.lock():
        reap(store)
        nets = defs.files(store)
        nets.read(name)  # "no network named ..."
        record = nets.read_runtime(name)
        if record is None:
            raise StoreError(f"network '{name}' is not active")
        if record.get("starting"):
            raise StoreError(f"network '{name}' is being started (virtnet pid {record['starter'][0]})")
        errors = _teardown(store, name, record)
    if errors:
        raise HostError(f"network '{name}' destroyed, but teardown reported: " + "; ".join(errors))


def autostart(store, netns_name=None):
    """Start every network marked autostart that is not active; returns the names started."""
    nets = defs.files(store)
    started = []
    for name in nets.autostart_names():
        if not nets.exists(name) or nets.read_runtime(name) is not None:
            continue
        start(store, name, netns_name)
        started.append(name)
    return started


