"""The tiny test guest (tools/tiny-guest.py), booted through `virtnet start`.

`tiny_guest` (session fixture) builds the image once per test run: pytest-xdist workers share one
build and one answer to "can KVM run it?" through a lock and a record in the run's common temp
directory. KVM is probed by booting the guest once with `-accel kvm`: a nested KVM may exist and
still fail the guest with emulation errors, so /dev/kvm alone proves nothing. TINY_GUEST_ACCEL=tcg
(or kvm) skips the probe.

The `lab` fixture defines domains whose <os> carries <kernel>, <initrd> and <cmdline> (the guest's
test, as tg.KEY=VALUE words) and whose <serial type='file'> is the guest's console, starts them
with `virtnet start` in the test's namespace, and reads each guest's reports (`TG: ...` lines)
from that file.
"""

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import load_tool, require_host_privileges
from hostcases import QEMU, alive, cli_env, ok, require_qemu, virtnet

PREFIX = "TG: "
MEMORY_MIB = 96
# How long a guest may take to report. Under TCG on a loaded 2-core machine the guest reports
# `done` 5-15 s after it starts; the margin is for a machine shared with other work.
REPORT_TIMEOUT = 150.0
KVM_PROBE_TIMEOUT = 6.0  # a working KVM reaches /init's first report in about a second
LINGER = 900  # the guest stays up after its last report until the test destroys it


@dataclass(frozen=True)
class Image:
    kernel: str
    initrd: str
    accel: str  # "kvm" or "tcg"
    accel_why: str  # what the KVM probe found
    info: dict  # the builder's record: package versions, sizes, build time

    @property
    def domain_type(self):
        return "kvm" if self.accel == "kvm" else "qemu"


def kvm_can_run(kernel, initrd, workdir, timeout=KVM_PROBE_TIMEOUT):
    """(True/False, why): whether the guest under -accel kvm reaches /init's first report in time."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not there or not usable"
    serial = Path(workdir) / "kvm-probe.serial"
    argv = [QEMU, "-machine", "pc", "-accel", "kvm", "-m", str(MEMORY_MIB), "-smp", "1", "-nodefaults",
            "-no-user-config", "-display", "none", "-kernel", kernel, "-initrd", initrd,
            "-append", "console=ttyS0 quiet no_timer_check tg.name=kvm-probe", "-serial", f"file:{serial}"]
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.monotonic() - started < timeout:
            if serial.exists() and f"{PREFIX}boot " in serial.read_text(errors="replace"):
                return True, f"booted to /init in {time.monotonic() - started:.1f} s"
            if process.poll() is not None:
                return False, f"QEMU exited ({process.returncode}): {process.stderr.read().decode().strip()[-300:]}"
            time.sleep(0.05)
        return False, f"no report from /init within {timeout:.0f} s"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()


def virtnet_renders_kernel(workdir):
    """Whether `virtnet xml2argv` turns <os><kernel> into -kernel (and <serial> into a serial port)."""
    path = Path(workdir) / "render-probe.xml"
    path.write_text(guest_xml("probe", "qemu", "", "/k", "/i", "console=ttyS0", "/s.log"))
    result = subprocess.run([sys.executable, "-m", "virtnet", "xml2argv", str(path)], env=cli_env(),
                            capture_output=True, text=True)
    return result.returncode == 0 and "-kernel" in result.stdout and "/s.log" in result.stdout


def prepare(workdir):
    """Build (or find) the image, decide the accelerator: the session's record as a dict."""
    builder = load_tool("tiny-guest.py")
    try:
        info = builder.ensure_image()
    except (builder.BuildError, OSError) as e:
        return {"error": f"the tiny guest could not be built: {e}"}
    pinned = os.environ.get("TINY_GUEST_ACCEL")
    if pinned in ("kvm", "tcg"):
        accel, why = pinned, "TINY_GUEST_ACCEL"
    else:
        works, why = kvm_can_run(info["kernel"], info["initrd"], workdir)
        accel = "kvm" if works else "tcg"
    if not virtnet_renders_kernel(workdir):
        return {"error": "`virtnet xml2argv` renders no -kernel/-serial for <os><kernel> and <serial type='file'>, "
                         "so the tiny guest cannot boot through virtnet"}
    return {"kernel": info["kernel"], "initrd": info["initrd"], "accel": accel, "accel_why": why, "info": info}


@pytest.fixture(scope="session")
def tiny_guest(request, tmp_path_factory):
    """The session's Image. Built once per run, across xdist workers (lock + shared record)."""
    require_host_privileges()  # every guest test needs a namespace: skip before building anything
    require_qemu()
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if hasattr(request.config, "workerinput") else base
    record = shared / "tiny-guest.json"
    with open(shared / "tiny-guest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record.exists():
            data = json.loads(record.read_text())
        else:
            data = prepare(shared)
            record.write_text(json.dumps(data))
    if "error" in data:
        if os.geteuid() == 0:
            pytest.fail(data["error"], pytrace=False)
        pytest.skip(data["error"])
    return Image(data["kernel"], data["initrd"], data["accel"], data["accel_why"], data["info"])


# --- a guest ----------------------------------------------------------------------------------------


def serial_xml(path):
    return f"    <serial type='file'>\n      <source path='{path}'/>\n      <target port='0'/>\n    </serial>\n"


def guest_xml(name, domain_type, interfaces, kernel, initrd, cmdline, serial, *, memory_mib=MEMORY_MIB,
              extra_devices=""):
    """The guest's domain. ACPI lets its `poweroff -f` end QEMU when it runs without virtnet; no
    memory balloon (libvirt's default device) keeps the machine minimal."""
    return (f"<domain type='{domain_type}'>\n  <name>{name}</name>\n"
            f"  <memory unit='MiB'>{memory_mib}</memory>\n  <vcpu>1</vcpu>\n"
            "  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n"
            f"    <kernel>{kernel}</kernel>\n    <initrd>{initrd}</initrd>\n    <cmdline>{cmdline}</cmdline>\n"
            "  </os>\n  <features>\n    <acpi/>\n  </features>\n  <devices>\n"
            f"    <emulator>{QEMU}</emulator>\n{interfaces}{extra_devices}{serial_xml(serial)}"
            "    <memballoon model='none'/>\n  </devices>\n</domain>\n")


def cmdline_for(name, test):
    """The kernel command line: the console on the serial port, and the test as tg.KEY=VALUE."""
    words = ["console=ttyS0", "quiet", "no_timer_check", f"tg.name={name}", f"tg.linger={LINGER}"]
    words += [f"tg.{key}={value}" for key, value in test.items()]
    return " ".join(words)


def add_boot(xml, image, cmdline, serial):
    """Turn an existing domain XML (the seed, say) into one that boots the tiny guest: <kernel>,
    <initrd> and <cmdline> instead of any <boot>, a file serial port, the session's domain type."""
    xml = re.sub(r"\s*<boot [^>]*/>", "", xml)
    xml = re.sub(r"<domain type='[a-z]+'", f"<domain type='{image.domain_type}'", xml, count=1)
    xml = xml.replace("</type>", f"</type>\n    <kernel>{image.kernel}</kernel>\n    <initrd>{image.initrd}</initrd>"
                                 f"\n    <cmdline>{cmdline}</cmdline>", 1)
    return xml.replace("  </devices>", serial_xml(serial) + "  </devices>", 1)


class Report:
    """A guest's `TG: ...` lines, without the prefix."""

    def __init__(self, lines):
        self.lines = lines

    def __str__(self):
        return "\n".join(self.lines)

    def get(self, word):
        """The rest of the first line that starts with WORD, or None."""
        for line in self.lines:
            if line == word or line.startswith(word + " "):
                return line[len(word):].strip()
        return None

    def __getitem__(self, word):
        rest = self.get(word)
        if rest is None:
            raise AssertionError(f"the guest reported no `{word}` line; it reported:\n{self}")
        return rest

    def fields(self, word):
        """A line `WORD [POSITIONAL] KEY VALUE KEY VALUE...` as {"": POSITIONAL, KEY: VALUE, ...}."""
        parts = self[word].split()
        out = {}
        if len(parts) % 2:
            out[""] = parts.pop(0)
        out.update(zip(parts[::2], parts[1::2]))
        return out

    @property
    def nic(self):
        return self.fields("nic")

    def answer(self, target):
        """What the peer at TARGET (HOST:PORT) answered the guest's `hello from NAME`."""
        status, _, reply = self[f"connect {target}"].partition(": ")
        assert status.startswith("ok "), f"the guest could not talk to {target}:\n{self}"
        return reply


class Guest:
    """A tiny guest started by `virtnet start` in NS with the test's state dirs D."""

    def __init__(self, image, d, name, serial, ns):
        self.image, self.d, self.name, self.serial, self.ns = image, d, name, Path(serial), ns
        self.pid = None
        self.running = False

    def start(self):
        result = virtnet(self.d, "start", self.name, netns=self.ns)
        ok(result)
        self.running = True
        self.pid = self.d.record(self.name)["pid"]
        return result

    def text(self):
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self):
        return [line[len(PREFIX):].rstrip("\r") for line in self.text().splitlines() if line.startswith(PREFIX)]

    def diagnostics(self):
        log = Path(self.d.runtime) / self.name / "qemu.log"
        qemu_log = log.read_text(errors="replace").strip() if log.exists() else "(none)"
        sockets = subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-tuanp"], capture_output=True, text=True)
        return (f"guest {self.name} ({self.image.accel}: {self.image.accel_why}): serial console "
                f"({self.serial}):\n{self.text().rstrip() or '(empty)'}\n"
                f"QEMU's log: {qemu_log}\nsockets in {self.ns}:\n{sockets.stdout.rstrip()}{sockets.stderr}")

    def wait_for(self, pattern, timeout=REPORT_TIMEOUT):
        """The first report line matching PATTERN (a regex, matched at the line's start)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            for line in self.lines():
                if regex.match(line):
                    return line
            if "Kernel panic" in self.text():
                raise AssertionError(f"the guest's kernel panicked\n{self.diagnostics()}")
            if self.pid is not None and not alive(self.pid):
                raise AssertionError(f"QEMU exited before the guest reported `{pattern}`\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no `{pattern}` from the guest within {timeout:.0f} s\n{self.diagnostics()}")
            time.sleep(0.05)

    def report(self, timeout=REPORT_TIMEOUT):
        """Every report up to `done`."""
        self.wait_for("done$", timeout)
        return Report(self.lines()[:self.lines().index("done") + 1])

    def destroy(self):
        if self.running:
            self.running = False
            ok(virtnet(self.d, "destroy", self.name))


class Lab:
    """Guests of one test: defined and started through virtnet in namespace NS with the test's
    state dirs D. Whatever still runs at the end is destroyed (the test itself destroys what it
    checks the teardown of)."""

    def __init__(self, image, d, tmp_path, ns):
        self.image, self.d, self.tmp_path, self.ns = image, d, tmp_path, ns
        self.guests = []

    def define(self, name, interfaces="", test=None, *, xml=None, devices="", memory_mib=MEMORY_MIB):
        """Define domain NAME booting the tiny guest with TEST ({tg key: value}) and INTERFACES and
        other DEVICES (XML), or XML (a whole domain, turned into one that boots the guest). A
        Guest, not started."""
        image, tmp_path = self.image, self.tmp_path
        serial = tmp_path / f"{name}.serial"
        cmdline = cmdline_for(name, test or {})
        for path in (image.kernel, image.initrd):
            assert os.path.exists(path), f"{path} of the tiny guest is gone (its cache was removed during the run)"
        if xml is None:
            xml = guest_xml(name, image.domain_type, interfaces, image.kernel, image.initrd, cmdline, serial,
                            memory_mib=memory_mib, extra_devices=devices)
        else:
            xml = add_boot(xml, image, cmdline, serial)
        path = tmp_path / f"{name}.xml"
        path.write_text(xml)
        ok(virtnet(self.d, "define", path))
        guest = Guest(image, self.d, name, serial, self.ns)
        self.guests.append(guest)
        return guest

    def boot(self, name, interfaces="", test=None, **kwargs):
        """define, then `virtnet start`."""
        guest = self.define(name, interfaces, test, **kwargs)
        guest.start()
        return guest

    def close(self):
        for guest in self.guests:
            if guest.running:
                guest.running = False
                virtnet(self.d, "destroy", guest.name)


@pytest.fixture
def lab(tiny_guest, dirs, tmp_path, ns):
    """A Lab in the test's namespace."""
    lab = Lab(tiny_guest, dirs, tmp_path, ns)
    try:
        yield lab
    finally:
        lab.close()
