"""Helpers for the tests that run virtnet on the host: namespaces, state and runtime dirs, the CLI
as a user runs it, and what the kernel (ip -j) and QEMU (QMP, /proc) report.

The oracles here deliberately avoid virtnet's own host code: devices are read with `ip -j`, and a
QEMU's tap fds are identified from /proc/PID/fdinfo ("iff:" names the tap a tun fd is attached to).
"""

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import require_host_privileges
from hostops import hmp

REPO = Path(__file__).resolve().parent.parent
QEMU = "/usr/bin/qemu-system-x86_64"

# Flags that follow the carrier rather than the administrator: the kernel turns IFF_RUNNING and
# IFF_LOWER_UP on for a tap as soon as a process (QEMU) attaches to it, and a bridge's follow its
# ports. `ip` shows IFF_RUNNING as the absence of NO-CARRIER on an up device.
CARRIER_FLAGS = frozenset({"LOWER_UP", "NO-CARRIER", "DORMANT"})


def require_qemu():
    if not os.access(QEMU, os.X_OK):
        pytest.skip(f"needs QEMU at {QEMU} (Debian: qemu-system-x86)")


# --- namespaces -------------------------------------------------------------------------------


def ip(*args, check=True):
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"`ip {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


def ip_json(ns, *args):
    out = ip("-n", ns, "-j", *args).stdout
    return json.loads(out) if out.strip() else []


@pytest.fixture
def ns(outside_netns):
    """A fresh network namespace (conftest's), for tests that also run QEMU."""
    require_qemu()
    yield outside_netns


@pytest.fixture
def inside(ns, netns):
    """The same namespace (both take conftest's outside_netns), with the test process inside it."""
    return netns


# --- state and runtime dirs ---------------------------------------------------------------------


@dataclass
class Dirs:
    state: Path
    runtime: Path

    def store(self):
        from virtnet.domains import open_store

        return open_store(self.state, self.runtime)

    def record(self, name):
        path = self.state / "running" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def live(self, name):
        """The LiveState start recorded for NAME (livestate.load), or None when it is not running."""
        return live_state(self.state, name)

    def runtime_entries(self):
        return sorted(os.listdir(self.runtime)) if self.runtime.exists() else []

    def running_records(self):
        directory = self.state / "running"
        return sorted(os.listdir(directory)) if directory.exists() else []


def live_state(state_dir, name):
    """The LiveState recorded in state dir STATE_DIR for domain NAME, or None. Reading it creates
    nothing, so it also serves for a state dir another user owns."""
    from virtnet import livestate
    from virtnet.store import Store

    return livestate.load(Store(state_dir), name)


@pytest.fixture
def dirs(tmp_path):
    """A state dir (pytest's tmp_path) and a runtime dir with a short path: QEMU's QMP socket lives
    there, and a unix socket path must stay under 108 bytes, which pytest's tmp_path can exceed."""
    runtime = Path(tempfile.mkdtemp(prefix="vnt-", dir="/tmp"))
    d = Dirs(state=tmp_path / "state", runtime=runtime)
    try:
        yield d
    finally:
        leftovers = qemu_pids(str(runtime))
        for pid in leftovers:
            kill(pid)
        shutil.rmtree(runtime, ignore_errors=True)
    assert not leftovers, f"QEMU processes of this test were still running: {leftovers}"


# --- the command line ---------------------------------------------------------------------------


def cli_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTNET_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def cli_argv(d, *args, netns=None):
    argv = [sys.executable, "-m", "virtnet", "--state-dir", str(d.state), "--runtime-dir", str(d.runtime)]
    if netns:
        argv += ["--netns", netns]
    return argv + [str(a) for a in args]


def virtnet(d, *args, netns=None, stdin=None, timeout=60):
    """Run the CLI in a fresh process, as a user would, with this test's state and runtime dirs."""
    return subprocess.run(cli_argv(d, *args, netns=netns), env=cli_env(), input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def ok(result):
    assert result.returncode == 0, f"rc {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def fails(result, code=1):
    """The error of a failed command: exit `code`, and (for code 1) exactly one line
    `virtnet: error: ...` on stderr, no traceback. Returns that line."""
    assert result.returncode == code, f"rc {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    if code == 1:
        errors = [line for line in lines if not line.startswith("virtnet: warning: ")]
        assert len(errors) == 1, result.stderr
        assert errors[0].startswith("virtnet: error: "), result.stderr
        return errors[0]
    assert lines and "error: " in lines[-1], result.stderr
    return lines[-1]


def write(path, text, mode=None):
    path = Path(path)
    path.write_text(textwrap.dedent(text))
    if mode is not None:
        path.chmod(mode)
    return path


def domain_xml(name, interfaces, *, uuid_=None, type_="qemu"):
    """A small x86 domain with the given <interface> elements (XML text)."""
    uuid_line = f"<uuid>{uuid_}</uuid>" if uuid_ else ""
    return (f"<domain type='{type_}'>\n  <name>{name}</name>{uuid_line}\n"
            "  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n"
            "  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n"
            f"  <devices>\n    <emulator>{QEMU}</emulator>\n{textwrap.dedent(interfaces)}  </devices>\n"
            "</domain>\n")


# --- what the kernel reports --------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    name: str
    mac: str
    mtu: int
    flags: frozenset  # administrative flags: the carrier-driven ones are masked (CARRIER_FLAGS)
    master: str | None
    kind: str | None
    tun: tuple  # ip's tun info (type, pi, vnet_hdr, multi_queue, persist, owner...) as sorted items

    @property
    def up(self):
        return "UP" in self.flags


def links(ns):
    """Every device of namespace NS by name, as `ip -d link` reports it."""
    out = {}
    for dev in ip_json(ns, "-d", "link", "show"):
        info = dev.get("linkinfo", {})
        tun = info.get("info_data", {}) if info.get("info_kind") == "tun" else {}
        # How many queues are attached right now follows QEMU, not the administrator.
        tun = {k: v for k, v in tun.items() if k not in ("numqueues", "numdisabled")}
        out[dev["ifname"]] = Link(
            name=dev["ifname"], mac=dev.get("address"), mtu=dev["mtu"],
            flags=frozenset(dev["flags"]) - CARRIER_FLAGS, master=dev.get("master"),
            kind=info.get("info_kind"), tun=tuple(sorted((k, str(v)) for k, v in tun.items())),
        )
    return out


def snapshot(ns):
    """Devices, IPv4 addresses and IPv4 routes of NS: what a rollback must leave as it found.
    (IPv6 is left out: the kernel adds link-local addresses by itself when a carrier appears.)"""
    addrs = sorted((a["ifname"], i["local"], i["prefixlen"])
                   for a in ip_json(ns, "-4", "addr", "show") for i in a.get("addr_info", []))
    routes = []
    for route in ip_json(ns, "-4", "route", "show", "table", "all"):
        # "linkdown" follows the carrier of the route's device, like the flags masked above.
        route["flags"] = [f for f in route.get("flags", []) if f != "linkdown"]
        routes.append(json.dumps(route, sort_keys=True))
    routes.sort()
    return {"links": links(ns), "addrs": addrs, "routes": routes}


# --- QEMU ----------------------------------------------------------------------------------------


def process_state(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    return text[text.rindex(")") + 2]


def alive(pid):
    """True for a live process; a zombie (killed, not yet reaped by its parent) is not alive."""
    state = process_state(pid)
    return state is not None and state not in "ZX"


def live_pids(marker, program=None):
    """Live (not zombie) processes other than this one whose command line mentions MARKER (a
    test's runtime dir), optionally only those whose program name contains PROGRAM."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        name = os.path.basename(cmdline.split(b"\0", 1)[0])
        if marker.encode() in cmdline and (program is None or program.encode() in name) and alive(int(entry)):
            found.append(int(entry))
    return found


def qemu_pids(marker):
    return live_pids(marker)


def kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_dead(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still alive"
        time.sleep(0.02)


def tap_of_fd(pid, fd):
    """The tap a tun fd of process PID is attached to (from /proc/PID/fdinfo), or None."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("iff:"):
                return line.split(":", 1)[1].strip()
    return None


def qmp(path):
    from virtnet.qemu.qmp import QMPClient

    return QMPClient(str(path), timeout=10).connect()


def info_network(client):
    """HMP `info network` as {nic id: {"model", "macaddr", "backends": [{"name", "type", ...}]}}.

    QEMU 7.2 prints a NIC line, then its peer indented with a backslash; a multiqueue NIC repeats
    both per queue (later NIC lines carry only index and type)."""
    nics, current = {}, None

    def props(text):
        out = {}
        for part in text.split(","):
            if "=" in part:
                key, value = part.split("=", 1)
                out[key] = value
        return out

    for line in hmp(client, "info network").splitlines():
        if not line.strip():
            continue
        if line.startswith(" \\ "):
            name, rest = line[3:].split(": ", 1)
            nics[current]["backends"].append({"name": name, **props(rest)})
        elif not line.startswith(" "):
            current, rest = line.split(": ", 1)
            entry = nics.setdefault(current, {"backends": []})
            for key, value in props(rest).items():
                entry.setdefault(key, value)
    return nics


# PCI configuration mechanism #1: address port 0xcf8, data port 0xcfc.
def _pci_config_address(slot, register):
    return 0x80000000 | (slot << 11) | register


def e1000_link_up(client, slot, bar):
    """The link state an e1000/e1000e NIC in PCI slot SLOT (bus 0) shows its guest: bit LU (0x2) of
    its STATUS register (offset 0x8 of BAR 0).

    QEMU 7.2 prints link state nowhere (`info network`, query-rx-filter and qom properties lack it),
    and the guest is paused before its firmware ran, so BAR 0 is unassigned. So, like firmware,
    program BAR 0 to BAR and enable memory decoding through the config ports (HMP `o`/`i`), then
    read the register from physical memory (HMP `xp`)."""
    def out(register, value):
        hmp(client, f"o /w 0xcf8 {_pci_config_address(slot, register):#x}")
        hmp(client, f"o /w 0xcfc {value:#x}")

    hmp(client, f"o /w 0xcf8 {_pci_config_address(slot, 0):#x}")
    ids = hmp(client, "i /w 0xcfc").strip().rsplit("=", 1)[1].strip()
    assert int(ids, 16) & 0xFFFF == 0x8086, f"slot {slot} is no Intel NIC: {ids}"
    out(0x10, bar)  # BAR 0
    out(0x04, 0x2)  # command register: memory space enable
    text = hmp(client, f"xp /1wx {bar + 0x8:#x}")
    status = int(text.strip().rsplit(":", 1)[1], 16)
    return bool(status & 0x2)


def pci_slot(xml_text, mac):
    """The PCI slot virtnet assigned to the interface with MAC (from the stored XML)."""
    from lxml import etree

    root = etree.fromstring(xml_text.encode())
    for iface in root.iter("interface"):
        if iface.find("mac").get("address") == mac:
            return int(iface.find("address").get("slot"), 0)
    raise AssertionError(f"no interface with MAC {mac}")


def snapshot_diff(before, after):
    """What differs between two snapshots, one line per device, address or route ('' if nothing).
    Spelled out here because pytest does not rewrite the asserts of a helper module that a test
    module imported first, so a bare `assert a == b` here would explain nothing."""
    lines = []
    old, new = before["links"], after["links"]
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            lines.append(f"device {name}: {old.get(name)} -> {new.get(name)}")
    for key in ("addrs", "routes"):
        for item in sorted(set(map(str, before[key])) ^ set(map(str, after[key]))):
            where = "only before" if item in set(map(str, before[key])) else "only after"
            lines.append(f"{key[:-1]} {where}: {item}")
    return "\n".join(lines)


def assert_unchanged(ns, before, what="the namespace"):
    diff = snapshot_diff(before, snapshot(ns))
    assert not diff, f"{what} changed:\n{diff}"


def assert_clean(ns, d, name, before, pid=None):
    """After destroy or a failed start: NS is exactly as BEFORE, no QEMU of the test runs, and no
    runtime record or runtime file of the domain remains."""
    assert_unchanged(ns, before)
    if pid is not None:
        assert not alive(pid), f"QEMU {pid} is still running"
    pids = qemu_pids(str(d.runtime))
    assert pids == [], f"QEMU processes of the test still run: {pids}"
    assert d.record(name) is None, f"the runtime record of '{name}' is still there: {d.record(name)}"
    assert d.running_records() == [], f"runtime records left: {d.running_records()}"
    assert d.runtime_entries() == [], f"left in the runtime dir: {d.runtime_entries()}"


# --- a real unprivileged user ---------------------------------------------------------------------


@pytest.fixture
def unprivileged_user():
    require_host_privileges()
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("needs useradd and runuser (Debian: passwd, util-linux)")
    name = f"vnt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)  # when userdel kept the group
    assert subprocess.run(["id", name], capture_output=True).returncode != 0, f"user {name} is still there"


def python_for(user):
    """An interpreter USER may run, and the PYTHONPATH under which it imports virtnet and its
    dependencies: this one (when USER can reach it), else the system's of the same version with
    our site-packages (a venv's interpreter often lives under root's 0700 home)."""
    path = [str(REPO)]
    candidates = [(sys.executable, path),
                  (f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}", path + site.getsitepackages())]
    for exe, pythonpath in candidates:
        probe = subprocess.run(["runuser", "-u", user, "--", "env", f"PYTHONPATH={':'.join(pythonpath)}", exe, "-c",
                                "import lxml.etree, pyroute2, virtnet.cli"], capture_output=True, cwd="/")
        if probe.returncode == 0:
            return exe, ":".join(pythonpath)
    pytest.skip(f"no Python interpreter that user {user} can run imports virtnet and its dependencies")


@dataclass
class UserWorkspace:
    """Where a test runs virtnet as a non-root USER: a world-searchable temp dir with state/ and
    run/ owned by that user, in namespace NS."""

    user: str
    uid: int
    ns: str
    work: Path
    exe: str
    pythonpath: str

    @property
    def state(self):
        return self.work / "state"

    @property
    def runtime(self):
        return self.work / "run"

    def virtnet(self, *args):
        argv = ["ip", "netns", "exec", self.ns, "runuser", "-u", self.user, "--", "env",
                f"PYTHONPATH={self.pythonpath}", self.exe, "-m", "virtnet", "--state-dir", str(self.state),
                "--runtime-dir", str(self.runtime), *map(str, args)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=str(self.work))


@contextmanager
def user_workspace(user, ns, prefix):
    """A UserWorkspace; afterwards every process still mentioning it (QEMU, passt) is killed and
    the directory removed, whatever the test did."""
    exe, pythonpath = python_for(user)
    uid = int(subprocess.run(["id", "-u", user], capture_output=True, text=True, check=True).stdout)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        work.chmod(0o755)
        for directory in (work / "state", work / "run"):
            directory.mkdir()
            os.chown(directory, uid, -1)
        yield UserWorkspace(user, uid, ns, work, exe, pythonpath)
    finally:
        for pid in live_pids(str(work)):
            kill(pid)
        shutil.rmtree(work, ignore_errors=True)

