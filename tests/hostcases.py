"""Helpers for the tests that run virtnet on the host: namespaces, state and runtime dirs, the CLI
as a user runs it, and what the kernel (ip -j) and QEMU (QMP, /proc) report.

The oracles here deliberately avoid virtnet's own host code: devices are read with `ip -j`, and a
QEMU's tap fds are identified from /proc/PID/fdinfo ("iff:" names the tap a tun fd is attached to).
"""

import atexit
import compileall
import configparser
import json
import os
import re
import shutil
import signal
import stat
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


def routable(ns):
    """What Debian 12's passt needs to start in namespace NS: an interface with an address and a
    default route (a veth whose far end is up)."""
    ip("-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "up1")
    ip("-n", ns, "addr", "add", "198.51.100.1/24", "dev", "up0")
    ip("-n", ns, "link", "set", "up0", "up")
    ip("-n", ns, "link", "set", "up1", "up")
    ip("-n", ns, "route", "add", "default", "via", "198.51.100.2", "dev", "up0")


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


def uids_of(pid):
    """Process PID's real, effective, saved and filesystem UIDs, as /proc/PID/status lists them."""
    with open(f"/proc/{pid}/status") as f:
        return next(line for line in f if line.startswith("Uid:")).split()[1:]


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


# --- the seed case: a domain on the tap an administrator pre-created ------------------------------

SEED = REPO / "examples" / "net-eth-unmanaged-tap.xml"
SEED_NAME = "QEMUGuest1"
SEED_TAP = "mytap0"


def precreate_taps(d, ns, xml, owner, workdir):
    """The administrator's part: the script `plan --format sh --owner OWNER` writes for XML, run as
    root in NS. Returns the script's path (running it again must change nothing)."""
    script = write(Path(workdir) / "precreate.sh", ok(virtnet(d, "plan", "--format", "sh", "--owner", owner, xml)))
    ok(ip("netns", "exec", ns, "sh", str(script), check=False))
    return script


def assert_tap_as_left(ns, name, tap, before, when):
    """WHEN (say "after destroy"), tap NAME in NS is still TAP as the administrator left it (MAC,
    MTU, flags but the carrier ones, owner, master), and NS is as it was BEFORE."""
    now = links(ns).get(name)
    assert now == tap, f"tap {name} {when}: {now}, not as the administrator left it: {tap}"
    assert_unchanged(ns, before, f"the namespace, {when}")


def destroy_leaves_the_tap(space, domain, pid, tap_name, tap, before):
    """SPACE's user destroys DOMAIN: its QEMU (PID) is gone, the administrator's tap and the
    namespace are as they were BEFORE, and nothing of the domain is left in SPACE."""
    ok(space.virtnet("destroy", domain))
    assert not alive(pid), f"QEMU {pid} is still running"
    assert_tap_as_left(space.ns, tap_name, tap, before, "after destroy")
    left = os.listdir(space.runtime) + os.listdir(space.state / "running")
    assert left == [], f"left in {space.work}: {left}"


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


# What a non-root user's virtnet needs, where that user can read it. Neither the checkout nor the
# venv may be: a CI job clones into a 0700 directory (under /root, say), and a venv's interpreter
# is often a symlink into root's home (pyenv). So each test process copies, once, the virtnet
# package (its schemas are package data, virtnet/schemas) and the
# installed distributions it needs at run time (setup.cfg's install_requires and theirs) into a
# world-readable temporary folder, byte-compiled, and runs them with an interpreter of this
# Python version that the user can run: this one, its base, the system's, or else a copy of the
# base interpreter in that folder.

_user_tree = None  # that folder, made on first use and removed when the process exits
_user_exe = None  # the interpreter that last worked for a user, tried first for the next one

# Imported by the probe: what `virtnet` imports at start, and its schemas must be found.
_PROBE = ("import sys, jinja2, lxml.etree, pyroute2, virtnet.cli; from virtnet.conf.schema import schema_dir; "
          "tree = sys.argv[1]; assert virtnet.__file__.startswith(tree + '/'), virtnet.__file__; "
          "assert str(schema_dir()).startswith(tree + '/'), schema_dir()")


def _make_world_readable(root):
    """Directories 0755, files 0644 (0755 when executable): a clone or venv made under umask 077
    has 0600 files, and copies keep that."""
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o100 else 0o644)


def _requirement_names(requirements):
    """The distribution names in REQUIREMENTS (PEP 508 strings), leaving out extras' ones."""
    names = []
    for requirement in requirements or ():
        spec, _, marker = requirement.partition(";")
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if match and "extra" not in marker:
            names.append(match.group(1))
    return names


def _runtime_distributions():
    """The installed distributions virtnet imports: setup.cfg's install_requires, recursively.
    One that is not installed (a Windows-only one) is left out; the probe names what is missing."""
    from importlib import metadata

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    todo = _requirement_names(config.get("options", "install_requires").split("\n"))
    found = {}
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            found[key] = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        todo += _requirement_names(found[key].requires)
    return list(found.values())


def _copy_distribution(dist, site_dir):
    """DIST's files (its RECORD, else its top-level names) from its site-packages into SITE_DIR."""
    base = Path(dist.locate_file("")).resolve()
    if dist.files is not None:
        sources = [Path(dist.locate_file(f)).resolve() for f in dist.files if "__pycache__" not in f.parts]
    else:
        sources = [p for name in (dist.read_text("top_level.txt") or "").split() for p in base.glob(f"{name}*")]
    for source in sources:
        try:
            relative = source.relative_to(base)
        except ValueError:
            continue  # a console script in the venv's bin/
        target = site_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        elif source.is_file():
            shutil.copy2(source, target)


def user_python_tree():
    """The world-readable folder (made once per process): virtnet/ as in the checkout,
    site/ with virtnet's run-time dependencies. PYTHONPATH=TREE:TREE/site imports them."""
    global _user_tree
    if _user_tree is None:
        tree = Path(tempfile.mkdtemp(prefix="vnt-py-", dir="/tmp"))
        atexit.register(shutil.rmtree, tree, ignore_errors=True)
        no_caches = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO / "virtnet", tree / "virtnet", ignore=no_caches)
        for dist in _runtime_distributions():
            _copy_distribution(dist, tree / "site")
        # Compiled here, so the user's processes (which cannot write the folder) need not compile
        # every module they import each time; the byte code is the same for every 3.N.x.
        compileall.compile_dir(str(tree), quiet=2, workers=1)
        _make_world_readable(tree)
        _user_tree = tree
    return _user_tree


def _copied_interpreter(tree):
    """This Python's base interpreter copied into TREE/python: the executable, its libpython when
    it has one (--enable-shared) and the standard library without tests, site-packages and build
    files. For when the user can run no interpreter of this version where it is installed (a
    pyenv Python lives in root's home)."""
    home = tree / "python"
    if not home.exists():
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        base = Path(sys.base_prefix)
        (home / "bin").mkdir(parents=True)
        shutil.copy2(os.path.realpath(getattr(sys, "_base_executable", sys.executable)), home / "bin" / version)
        (home / "lib").mkdir()
        for library in base.glob("lib/libpython*.so*"):
            shutil.copy2(library, home / "lib" / library.name)

        def unneeded(directory, names):
            top = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip"}
            return {n for n in names if Path(directory) == base / "lib" / version and
                    (n in top or n.startswith("config-"))}

        shutil.copytree(base / "lib" / version, home / "lib" / version, ignore=unneeded, symlinks=True)
        _make_world_readable(home)
    exe = home / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(exe), (f"PYTHONHOME={home}", f"LD_LIBRARY_PATH={home / 'lib'}")


def _interpreters():
    """Interpreters of this Python version, most direct first."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [_user_exe, sys.executable, getattr(sys, "_base_executable", None),
                  os.path.join(sys.base_prefix, "bin", version), f"/usr/bin/{version}", f"/usr/local/bin/{version}",
                  shutil.which(version)]
    seen = []
    for exe in candidates:
        if exe and exe not in seen and os.path.isfile(exe):
            seen.append(exe)
    return seen


@dataclass(frozen=True)
class UserPython:
    """An interpreter a user can run and the variables under which it imports virtnet."""

    exe: str
    env: tuple  # "NAME=value" items for env(1)

    def argv(self, *args):
        return ["env", *self.env, self.exe, *map(str, args)]


def user_env():
    """The environment for commands run as another user: this one without virtnet's and Python's
    variables (those a test needs are set explicitly)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("VIRTNET_", "PYTHON", "LD_"))}


def python_for(user):
    """A UserPython with which USER imports virtnet and its dependencies, from user_python_tree()
    whatever the permissions of the checkout and the venv. Fails (not skips) when there is none:
    as root, the non-root tests must run."""
    global _user_exe
    tree = user_python_tree()
    pythonpath = f"PYTHONPATH={tree}:{tree / 'site'}"
    tried = []

    def works(python):
        probe = subprocess.run(["runuser", "-u", user, "--", *python.argv("-c", _PROBE, tree)], capture_output=True,
                               text=True, cwd="/", env=user_env())
        last = probe.stderr.strip().splitlines()[-1:]
        tried.append(f"{python.exe}: {last[0] if last else f'exit status {probe.returncode}'}")
        return probe.returncode == 0

    for exe in _interpreters():
        python = UserPython(exe, (pythonpath,))
        if works(python):
            _user_exe = exe
            return python
    exe, env = _copied_interpreter(tree)
    python = UserPython(exe, (pythonpath, *env))
    if works(python):
        return python
    pytest.fail(f"no Python interpreter that user {user} can run imports virtnet from {tree}: " + "; ".join(tried))


# When /dev/net/tun is not open to everyone (mode 0600 in some containers and CI hosts), the user's
# commands run in a private mount namespace (unshare --mount, private propagation) where a 0666
# node of the same device is bound over /dev/net/tun: it is made in a tmpfs mounted (in that
# namespace only) on an empty directory, so no device node is ever created on the host's disks
# and nothing of it is visible outside. The namespace ends with its last process (QEMU's).
_PRIVATE_TUN = """\
set -e
mount -t tmpfs -o mode=0700,size=64k vnt-tun "$1"
mknod -m 0666 "$1/tun" c "$2" "$3"
mount --bind "$1/tun" /dev/net/tun
shift 3
exec "$@"
"""


def tun_open_to_all():
    return stat.S_IMODE(os.stat("/dev/net/tun").st_mode) & 0o006 == 0o006


@dataclass
class UserWorkspace:
    """Where a test runs virtnet as a non-root USER: a world-searchable temp dir with state/ and
    run/ owned by that user, in namespace NS; with TUN_DIR, in a private mount namespace whose
    /dev/net/tun the user can open (_PRIVATE_TUN, mounted on TUN_DIR)."""

    user: str
    uid: int
    ns: str
    work: Path
    python: UserPython
    tun_dir: Path | None = None

    @property
    def state(self):
        return self.work / "state"

    @property
    def runtime(self):
        return self.work / "run"

    @property
    def private_tun(self):
        return self.tun_dir is not None

    def run(self, *argv, timeout=60):
        """ARGV as USER in NS (and in the private mount namespace, when there is one)."""
        command = ["runuser", "-u", self.user, "--", *map(str, argv)]
        if self.tun_dir is not None:
            rdev = os.stat("/dev/net/tun").st_rdev
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _PRIVATE_TUN, "sh",
                       str(self.tun_dir), str(os.major(rdev)), str(os.minor(rdev)), *command]
        return subprocess.run(["ip", "netns", "exec", self.ns, *command], capture_output=True, text=True,
                              timeout=timeout, cwd=str(self.work), env=user_env())

    def virtnet(self, *args):
        return self.run(*self.python.argv("-m", "virtnet", "--state-dir", self.state, "--runtime-dir", self.runtime,
                                          *args))


@contextmanager
def user_workspace(user, ns, prefix, *, tun=False):
    """A UserWorkspace; afterwards every process still mentioning it (QEMU, passt) is killed and
    the directory removed, whatever the test did. TUN: the user's commands open taps themselves,
    so where /dev/net/tun is not open to everyone they get a private node (UserWorkspace)."""
    python = python_for(user)
    uid = int(subprocess.run(["id", "-u", user], capture_output=True, text=True, check=True).stdout)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        work.chmod(0o755)
        for directory in (work / "state", work / "run"):
            directory.mkdir()
            os.chown(directory, uid, -1)
        tun_dir = None
        if tun and not tun_open_to_all():
            tun_dir = work / "tun"
            tun_dir.mkdir(mode=0o700)
        yield UserWorkspace(user, uid, ns, work, python, tun_dir)
    finally:
        for pid in live_pids(str(work)):
            kill(pid)
        shutil.rmtree(work, ignore_errors=True)
