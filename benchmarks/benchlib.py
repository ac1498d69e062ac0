"""Shared helpers for the benchmarks: timing children, statistics, the machine line, namespaces.

Standard library only. Every measurement of a command is a child process waited for with wait4(2),
which gives its wall time (perf_counter around spawn and reap) and its peak RSS (ru_maxrss).
"""

import contextlib
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
VENV_BIN = REPO / ".venv" / "bin"
PY = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
VIRTNET = str(VENV_BIN / "virtnet") if (VENV_BIN / "virtnet").exists() else None
NETNS_PREFIX = "vnbench-"
GNU_TIME = "/usr/bin/time"


def log(message):
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ statistics


@dataclass
class Series:
    """Repeated measurements of one thing (seconds, or any unit), with the peak RSS seen."""

    label: str
    values: list = field(default_factory=list)
    rss_kib: list = field(default_factory=list)

    def add(self, value, rss_kib=None):
        self.values.append(value)
        if rss_kib is not None:
            self.rss_kib.append(rss_kib)

    def add_rss(self, rss_kib):
        if rss_kib is not None:
            self.rss_kib.append(rss_kib)

    @property
    def median(self):
        return statistics.median(self.values)

    @property
    def min(self):
        return min(self.values)

    @property
    def max(self):
        return max(self.values)

    @property
    def peak_rss_mib(self):
        return max(self.rss_kib) / 1024 if self.rss_kib else None

    def as_dict(self):
        return {"label": self.label, "n": len(self.values), "median": self.median, "min": self.min,
                "max": self.max, "peak_rss_mib": self.peak_rss_mib, "values": self.values}


def fmt_ms(seconds):
    value = seconds * 1e3
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def fmt_mib(value):
    return "—" if value is None else f"{value:.1f}"


def table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ running children


@dataclass
class Run:
    wall: float
    rss_kib: int
    status: int
    stdout: bytes
    stderr: bytes


def run(argv, *, env=None, stdin=None, capture=False, cpu=None, check=True, cwd=None, timeout=600, rss=False):
    """Run argv to completion and time it (perf_counter around spawn and wait4).

    With rss, the command runs under GNU time(1) and Run.rss_kib is its peak RSS. (wait4's own
    ru_maxrss is no good here: Linux carries the parent's high-water mark through fork and exec,
    so every child of a 30 MiB driver would report at least 30 MiB.) Time rss runs separately.
    """
    virsh = Path(str(argv[0])).name == "virsh"
    timeout = _virsh_timeout(argv, timeout)
    rss_file = None
    if rss:
        fd, rss_file = tempfile.mkstemp(prefix="vnbench-rss-")
        os.close(fd)
        argv = [GNU_TIME, "-f", "%M", "-o", rss_file, *argv]
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    preexec = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                            stdout=out, stderr=subprocess.PIPE, preexec_fn=preexec, cwd=cwd)
    # Read the pipes ourselves, then reap with wait4 (Popen.wait would discard the rusage).
    try:
        stdout, stderr = _drain(proc, stdin, timeout)
    except RuntimeError:
        if not virsh:
            raise
        proc.wait()
        _virsh_spent[0] += time.perf_counter() - start
        raise VirshTimeout(f"`{' '.join(map(str, argv))}` did not finish within {timeout:g} s") from None
    _, status, _usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if virsh:
        _virsh_spent[0] += wall
    proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen it is reaped
    rss_kib = None
    if rss_file is not None:
        try:
            text = Path(rss_file).read_text().strip().splitlines()
            rss_kib = int(text[-1]) if text and text[-1].isdigit() else None
        finally:
            os.unlink(rss_file)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}: "
                           f"{stderr.decode(errors='replace').strip()[-2000:]}")
    return Run(wall, rss_kib, proc.returncode, stdout or b"", stderr or b"")


def peak_rss_kib(argv, **kwargs):
    """Peak RSS (KiB) of one run of argv, through GNU time(1); None without it."""
    if not os.path.exists(GNU_TIME):
        return None
    return run(argv, rss=True, **kwargs).rss_kib


def own_peak_rss_kib():
    """This process's own peak RSS (VmHWM of its address space, unlike getrusage's ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def _drain(proc, stdin, timeout):
    """Feed stdin and read stdout/stderr until both close (the child is still unreaped)."""
    import selectors

    chunks = {"out": [], "err": []}
    sel = selectors.DefaultSelector()
    if proc.stdout is not None:
        sel.register(proc.stdout, selectors.EVENT_READ, "out")
    if proc.stderr is not None:
        sel.register(proc.stderr, selectors.EVENT_READ, "err")
    if proc.stdin is not None:
        proc.stdin.write(stdin)
        proc.stdin.close()
    deadline = time.monotonic() + timeout
    while sel.get_map():
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{proc.args} did not finish within {timeout} s")
        for key, _ in sel.select(timeout=1.0):
            data = os.read(key.fileobj.fileno(), 65536)
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
            else:
                chunks[key.data].append(data)
    return b"".join(chunks["out"]), b"".join(chunks["err"])


def python_env(pycache_dir=None, extra=None):
    """The environment for measured children.

    With pycache_dir, bytecode is cached there (PYTHONPYCACHEPREFIX), as in an installed package,
    and the checkout gets no __pycache__ folders. Without it, nothing is cached (the environment's
    PYTHONDONTWRITEBYTECODE=1 case: virtnet's modules are compiled at every start).
    """
    env = dict(os.environ)
    env.pop("PYTHONPYCACHEPREFIX", None)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    if pycache_dir is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache_dir)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


# ------------------------------------------------------------------ machine


def machine_line():
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    hypervisor = ""
    with contextlib.suppress(OSError):
        if " hypervisor" in Path("/proc/cpuinfo").read_text():
            hypervisor = " (virtual machine)"
    qemu = "not installed"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        text = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                              check=True).stdout
        qemu = text.splitlines()[0].replace("QEMU emulator version ", "")
    libs = []
    with contextlib.suppress(Exception):
        text = subprocess.run([PY, "-c", "import lxml.etree as e, pyroute2; "
                               "print(e.__version__, '.'.join(map(str, e.LIBXML_VERSION)), pyroute2.__version__)"],
                              capture_output=True, text=True, check=True).stdout.split()
        libs = [f"lxml {text[0]} (libxml2 {text[1]})", f"pyroute2 {text[2]}"]
    python = subprocess.run([PY, "-c", "import platform; print(platform.python_version())"],
                            capture_output=True, text=True).stdout.strip()
    fs = "?"
    with contextlib.suppress(Exception):
        fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", tempfile.gettempdir()], capture_output=True,
                            text=True).stdout.strip() or "?"
    return (f"{cpu}{hypervisor}, {os.cpu_count()} cores; Linux {platform.release()}; Python {python}; "
            f"QEMU {qemu}; {', '.join(libs)}; temp dirs on {fs} ({tempfile.gettempdir()})")


# ------------------------------------------------------------------ privileges and namespaces


def root_reason():
    """None when host benchmarks can run; otherwise why they are skipped."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for network namespaces); not root"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (modprobe tun)"
    if shutil.which("ip") is None:
        return "ip(8) (iproute2) is not installed"
    return None


@contextlib.contextmanager
def fresh_netns(tag):
    """A new named network namespace, deleted (with every device in it) afterwards."""
    name = f"{NETNS_PREFIX}{tag}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def temp_dir(tag):
    path = Path(tempfile.mkdtemp(prefix=f"vnbench-{tag}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ libvirt
# A libvirt daemon that answers slowly would make each virsh call of the comparisons slow (a run once
# took over 25 minutes). So the probe is bounded, a daemon slower than LIBVIRT_SLOW to answer
# `virsh version` is not compared with, each virsh call is bounded by VIRSH_CALL_TIMEOUT and all of
# them together by VIRSH_BUDGET; past either, the comparison is skipped with the reason.

LIBVIRT_URI = "qemu:///system"
LIBVIRT_PROBE_TIMEOUT = 5.0  # seconds for `virsh version`
LIBVIRT_SLOW = 1.0  # seconds: a daemon slower than this to answer is not compared with
VIRSH_CALL_TIMEOUT = 15.0  # seconds for any one virsh call of a benchmark
VIRSH_BUDGET = 120.0  # seconds for all virsh calls of one run
LIBVIRT_DAEMONS = ("/usr/sbin/libvirtd", "/usr/sbin/virtqemud")
_virsh_spent = [0.0]


class VirshTimeout(RuntimeError):
    """A virsh call of a benchmark went past its bound; str() says which and why."""


def libvirt_daemon_installed():
    return any(os.path.exists(path) for path in LIBVIRT_DAEMONS)


@functools.lru_cache(maxsize=None)
def libvirt_reason():
    """None when a libvirt daemon answers on qemu:///system quickly; otherwise why the virsh
    comparisons are skipped (probed once per run)."""
    return probe_libvirt()


def probe_libvirt(uri=LIBVIRT_URI, timeout=LIBVIRT_PROBE_TIMEOUT, slow=LIBVIRT_SLOW):
    """One line saying why virsh cannot be compared with (not installed, no daemon, no answer within
    TIMEOUT, slower than SLOW, or virsh's own error), or None when it can."""
    virsh = shutil.which("virsh")
    if virsh is None:
        return "virsh is not installed (Debian: libvirt-clients)"
    started = time.monotonic()
    try:
        status, _, err = bounded([virsh, "-c", uri, "version"], timeout)
    except subprocess.TimeoutExpired:
        return f"the libvirt daemon did not answer `virsh -c {uri} version` within {timeout:g} s"
    took = time.monotonic() - started
    if status != 0:
        lines = [line.replace("error: ", "", 1).strip() for line in err.splitlines() if line.strip()]
        error = "; ".join(lines) or f"exit status {status}, no message"
        if not libvirt_daemon_installed():
            return f"no libvirt daemon is installed (Debian: libvirt-daemon-system); virsh -c {uri}: {error}"
        return f"a libvirt daemon is installed but virsh -c {uri} failed: {error}"
    if took > slow:
        return (f"the libvirt daemon took {took:.1f} s to answer `virsh -c {uri} version` (over {slow:g} s): "
                "every virsh call would be as slow")
    return None


def bounded(argv, timeout):
    """(exit status, stdout, stderr) of ARGV, killed with everything it started after TIMEOUT
    seconds (subprocess.TimeoutExpired): a child left holding the pipes cannot make it wait."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()
        raise
    return proc.returncode, out, err


def _virsh_timeout(argv, timeout):
    """The timeout for one run of ARGV: bounded for virsh calls, by the call and the run's budget."""
    if Path(str(argv[0])).name != "virsh":
        return timeout
    left = VIRSH_BUDGET - _virsh_spent[0]
    if left <= 0:
        raise VirshTimeout(f"virsh calls took over {VIRSH_BUDGET:g} s in all; the rest were not run")
    return min(timeout, VIRSH_CALL_TIMEOUT, left)


def apt_candidate(package):
    """The version apt would install for PACKAGE, or None (never installs anything)."""
    with contextlib.suppress(Exception):
        text = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True,
                              timeout=30).stdout
        match = re.search(r"Candidate:\s*(\S+)", text)
        if match and match.group(1) != "(none)":
            return match.group(1)
    return None


def dump_json(path, data):
    Path(path).write_text(json.dumps(data, indent=1, default=str) + "\n")
