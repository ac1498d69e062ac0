"""Tap setup and teardown for N managed taps (vnet_hdr, MAC, MTU, up), in a fresh network namespace.

The driver (measure) runs one worker process per (method, N), each under `ip netns exec` in a
namespace of its own that is deleted afterwards. Methods, all doing the same work per tap:

  virtnet    virtnet's own path: build_plan() for a domain with N ethernet interfaces, the
             Executor on the plan's actions before StartQemu, then Executor.teardown() on the
             teardown actions of the live state runner.start() would record (outcome.teardown,
             through LiveState's record form as destroy reads it). Two teardown orders are measured:
               as-runner     our fds close first (as QEMU's exit closes them), then teardown()
                             deletes whatever taps are left (none: each is gone, and a DeleteTap
                             only acts while its name is still the device it created)
               delete-first  teardown() (the created taps in one delete_many) while the fds are
                             still open, then they close: the order plan.teardown_order gives
                             `virtnet destroy` (its taps first, then QEMU stopped)
  ip-loop    one ip(8) process per step: `ip tuntap add … vnet_hdr`, `ip link set … address …
             mtu … up`, and `ip link del` at teardown
  ip-batch   the same commands through one `ip -batch -` process for setup and one for teardown
  pyroute2   pyroute2's own IPRoute.link('add', kind='tuntap') (a persistent tap), one
             link('set', address, mtu, state) and link('del') per tap
  raw        the floor: open /dev/net/tun + TUNSETIFF per tap, then SIOCSIFHWADDR, SIOCSIFMTU and
             SIOCSIFFLAGS ioctls; teardown either closes the fds (the kernel unregisters each tap
             on its own) or first deletes them all with one hand-made rtnetlink delete-by-group

Run as a worker: bench_taps.py worker METHOD N REPS (inside the namespace; prints JSON).
"""

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import domaingen  # noqa: E402

METHODS = ("virtnet", "ip-loop", "ip-batch", "pyroute2", "raw")
MTU = 1400

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_TUN_EXCL = 0x0002, 0x1000, 0x4000, 0x8000
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFMTU, SIOCSIFHWADDR = 0x8913, 0x8914, 0x8922, 0x8924
IFF_UP = 0x1
ARPHRD_ETHER = 1


def _names(n):
    # The names virtnet's planner picks in an empty namespace, so every method makes the same devices.
    return [f"vnet{i}" for i in range(n)]


def _host_macs(n):
    return [domaingen.mac(i, "fe:54:01") for i in range(n)]


# ------------------------------------------------------------------ checks (not timed)


def _sys(name, leaf):
    return Path(f"/sys/class/net/{name}/{leaf}").read_text().strip()


def verify_present(names, macs):
    """Every tap exists as a tap with vnet_hdr, its MAC, MTU and up: the same end state for all."""
    for name, mac in zip(names, macs):
        flags = int(_sys(name, "tun_flags"), 16)
        assert flags & IFF_TAP and flags & IFF_VNET_HDR, (name, hex(flags))
        assert _sys(name, "address") == mac, (name, _sys(name, "address"), mac)
        assert int(_sys(name, "mtu")) == MTU, (name, _sys(name, "mtu"))
        assert int(_sys(name, "flags"), 16) & IFF_UP, name


def verify_gone(names):
    left = [n for n in names if os.path.exists(f"/sys/class/net/{n}")]
    assert not left, f"left behind: {left[:5]}"


# ------------------------------------------------------------------ methods


def run_virtnet(n, reps):
    from virtnet.conf.load import load_text
    from virtnet.host.executor import Executor
    from virtnet.host.netlink import Netlink
    from virtnet.livestate import LiveState
    from virtnet.host.plan import StartQemu, build_plan

    domain = load_text(domaingen.ethernet_domain("taps", n, mtu=MTU, spread_buses=n > 24), "taps.xml").domain
    out = {"setup": [], "plan": [], "teardown": {"as-runner": [], "delete-first": []}}
    start = time.perf_counter()
    nl = Netlink()
    out["netlink_open"] = time.perf_counter() - start
    try:
        for rep in range(2 * reps):
            variant = "as-runner" if rep % 2 == 0 else "delete-first"
            t0 = time.perf_counter()
            plan = build_plan(domain, names_in_use=nl.link_names(), host_caps=frozenset())
            cut = next(i for i, a in enumerate(plan.setup) if isinstance(a, StartQemu))
            plan.setup = plan.setup[:cut]
            executor = Executor(nl)
            t1 = time.perf_counter()
            outcome = executor.setup(plan)
            t2 = time.perf_counter()
            # The live state runner.start() records, as destroy reads it back (its teardown actions).
            state = LiveState.from_dict(LiveState(pid=0, qmp="", runtime_dir="", teardown=outcome.teardown).as_dict())
            assert len(state.created_taps) == n and len(state.teardown) == n, state.teardown
            if rep < 2:
                verify_present(state.created_taps, _host_macs(n))
            t3 = time.perf_counter()
            if variant == "as-runner":
                outcome.close_fds()
                errors = executor.teardown(state.teardown)
            else:
                errors = executor.teardown(state.teardown)
                outcome.close_fds()
            t4 = time.perf_counter()
            assert not errors, errors
            verify_gone(state.created_taps)
            out["plan"].append(t1 - t0)
            out["setup"].append(t2 - t1)
            out["teardown"][variant].append(t4 - t3)
    finally:
        nl.close()
    return out


def _ip(*args):
    subprocess.run(["ip", *args], check=True, stdout=subprocess.DEVNULL)


def run_ip_loop(n, reps):
    names, macs = _names(n), _host_macs(n)
    out = {"setup": [], "teardown": {"ip link del": []}}
    for rep in range(reps):
        t0 = time.perf_counter()
        for name, mac in zip(names, macs):
            _ip("tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr")
            _ip("link", "set", "dev", name, "address", mac, "mtu", str(MTU), "up")
        t1 = time.perf_counter()
        if rep == 0:
            verify_present(names, macs)
        t2 = time.perf_counter()
        for name in names:
            _ip("link", "del", "dev", name)
        t3 = time.perf_counter()
        verify_gone(names)
        out["setup"].append(t1 - t0)
        out["teardown"]["ip link del"].append(t3 - t2)
    return out


def run_ip_batch(n, reps):
    names, macs = _names(n), _host_macs(n)
    setup = "".join(f"tuntap add dev {name} mode tap vnet_hdr\nlink set dev {name} address {mac} mtu {MTU} up\n"
                    for name, mac in zip(names, macs)).encode()
    delete = "".join(f"link del dev {name}\n" for name in names).encode()
    out = {"setup": [], "teardown": {"ip -batch link del": []}}
    for rep in range(reps):
        t0 = time.perf_counter()
        subprocess.run(["ip", "-batch", "-"], input=setup, check=True, stdout=subprocess.DEVNULL)
        t1 = time.perf_counter()
        if rep == 0:
            verify_present(names, macs)
        t2 = time.perf_counter()
        subprocess.run(["ip", "-batch", "-"], input=delete, check=True, stdout=subprocess.DEVNULL)
        t3 = time.perf_counter()
        verify_gone(names)
        out["setup"].append(t1 - t0)
        out["teardown"]["ip -batch link del"].append(t3 - t2)
    return out


def run_pyroute2(n, reps):
    from pyroute2 import IPRoute

    names, macs = _names(n), _host_macs(n)
    out = {"setup": [], "teardown": {"link('del') each": []}}
    flags = {"no_pi": True, "one_queue": False, "vnet_hdr": True, "multi_queue": False}
    start = time.perf_counter()
    ipr = IPRoute()
    out["netlink_open"] = time.perf_counter() - start
    try:
        for rep in range(reps):
            t0 = time.perf_counter()
            for name, mac in zip(names, macs):
                ipr.link("add", ifname=name, kind="tuntap", mode="tap", ifr=flags)
                ipr.link("set", ifname=name, address=mac, mtu=MTU, state="up")
            t1 = time.perf_counter()
            if rep == 0:
                verify_present(names, macs)
            t2 = time.perf_counter()
            for name in names:
                ipr.link("del", ifname=name)
            t3 = time.perf_counter()
            verify_gone(names)
            out["setup"].append(t1 - t0)
            out["teardown"]["link('del') each"].append(t3 - t2)
    finally:
        ipr.close()
    return out


class RawNetlink:
    """Just enough rtnetlink for the floor: put links into a group, delete a group."""

    RTM_NEWLINK, RTM_DELLINK = 16, 17
    NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
    NLMSG_ERROR = 2
    IFLA_GROUP = 27

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self.sock.bind((0, 0))
        self.seq = 0

    def _request(self, kind, index, group):
        self.seq += 1
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0) + struct.pack("=HHI", 8, self.IFLA_GROUP, group)
        header = struct.pack("=IHHII", 16 + len(body), kind, self.NLM_F_REQUEST | self.NLM_F_ACK, self.seq, 0)
        self.sock.send(header + body)
        reply = self.sock.recv(65536)
        _, msg_type, _, seq, _ = struct.unpack_from("=IHHII", reply)
        if msg_type == self.NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", reply, 16)
            if code:
                raise OSError(-code, os.strerror(-code))

    def set_group(self, index, group):
        self._request(self.RTM_NEWLINK, index, group)

    def delete_group(self, group):
        self._request(self.RTM_DELLINK, 0, group)

    def close(self):
        self.sock.close()


def run_raw(n, reps):
    names, macs = _names(n), _host_macs(n)
    out = {"setup": [], "setup_create_only": [], "teardown": {"close fds": [], "group delete, then close": []}}
    ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    rtnl = RawNetlink()
    try:
        for rep in range(2 * reps):
            variant = "close fds" if rep % 2 == 0 else "group delete, then close"
            fds = []
            t0 = time.perf_counter()
            for name in names:
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
                fds.append(fd)
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(),
                                                       IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL))
            t1 = time.perf_counter()
            for name, mac in zip(names, macs):
                raw_name = name.encode()
                fcntl.ioctl(ctl, SIOCSIFHWADDR, struct.pack("16sH6s16x", raw_name, ARPHRD_ETHER,
                                                            bytes.fromhex(mac.replace(":", ""))))
                fcntl.ioctl(ctl, SIOCSIFMTU, struct.pack("16si20x", raw_name, MTU))
                current = fcntl.ioctl(ctl, SIOCGIFFLAGS, struct.pack("16sH22x", raw_name, 0))
                flags = struct.unpack_from("16sH", current)[1]
                fcntl.ioctl(ctl, SIOCSIFFLAGS, struct.pack("16sH22x", raw_name, flags | IFF_UP))
            t2 = time.perf_counter()
            if rep < 2:
                verify_present(names, macs)
            t3 = time.perf_counter()
            if variant == "close fds":
                for fd in fds:
                    os.close(fd)
            else:
                group = 0x7F00_0000 + rep
                for name in names:
                    rtnl.set_group(socket.if_nametoindex(name), group)
                rtnl.delete_group(group)
                for fd in fds:
                    os.close(fd)
            t4 = time.perf_counter()
            verify_gone(names)
            out["setup"].append(t2 - t0)
            out["setup_create_only"].append(t1 - t0)
            out["teardown"][variant].append(t4 - t3)
    finally:
        ctl.close()
        rtnl.close()
    return out


RUNNERS = {"virtnet": run_virtnet, "ip-loop": run_ip_loop, "ip-batch": run_ip_batch, "pyroute2": run_pyroute2,
           "raw": run_raw}


def worker(method, n, reps):
    result = RUNNERS[method](n, reps)
    result["vmhwm_kib"] = benchlib.own_peak_rss_kib()  # the worker process (the Python side)
    json.dump(result, sys.stdout)


# ------------------------------------------------------------------ driver


# Repetitions per worker, and rounds: every round runs each method once (in a rotated order), so
# that a noisy moment on a shared machine is spread over the methods instead of hitting one.
PER_WORKER = {1: 5, 16: 2, 256: 1}
ROUNDS = {1: 4, 16: 4, 256: 3}


def _merge(into, data):
    for key, value in data.items():
        if isinstance(value, list):
            into.setdefault(key, []).extend(value)
        elif isinstance(value, dict):
            _merge(into.setdefault(key, {}), value)
        elif key == "vmhwm_kib":
            into[key] = max(into.get(key) or 0, value or 0)
        elif isinstance(value, float):
            into.setdefault(key + "_all", []).append(value)
        else:
            into[key] = value


def measure(ctx):
    """Run every (method, N) worker, round by round; return the section's results dict."""
    reason = benchlib.root_reason()
    if reason:
        return {"skipped": reason}
    results = {"runs": [], "sizes": list(ctx.tap_sizes)}
    env = benchlib.python_env(ctx.pycache)
    for n in ctx.tap_sizes:
        reps = PER_WORKER.get(n, 1)
        rounds = max(1, round(ROUNDS.get(n, 3) * min(ctx.scale, 1.0)))
        merged = {method: {"method": method, "n": n, "workers": 0} for method in METHODS}
        for round_no in range(rounds):
            order = METHODS[round_no % len(METHODS):] + METHODS[:round_no % len(METHODS)]
            benchlib.log(f"  taps: N={n}, round {round_no + 1}/{rounds} ({reps} per method)")
            for method in order:
                with benchlib.fresh_netns(f"tap{n}") as ns:
                    run = benchlib.run(["ip", "netns", "exec", ns, benchlib.PY, __file__, "worker", method,
                                        str(n), str(reps)], env=env, capture=True, timeout=900)
                _merge(merged[method], json.loads(run.stdout))
                merged[method]["workers"] += 1
        for method in METHODS:
            merged[method]["reps"] = len(next(iter(merged[method]["teardown"].values())))
            results["runs"].append(merged[method])
    return results


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit("usage: bench_taps.py worker METHOD N REPS  (run benchmarks/run.py for the whole suite)")
