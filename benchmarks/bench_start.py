"""Start and destroy of a guest with 24 managed NICs, in a fresh network namespace.

`virtnet start --paused` returns once QEMU answers on QMP (the taps are created, QEMU holds their
fds); `virtnet destroy` returns once QEMU has exited and the taps are gone. Both are timed as whole
processes. An experiment row shows destroy when the taps are first removed in one delete-by-group
(`ip -batch`, outside virtnet), so that destroy finds them gone (its own teardown also deletes the
taps it created first, in one request, before stopping QEMU). `virsh create` is
compared only when a libvirt daemon answers.
"""

import contextlib
import json
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import domaingen  # noqa: E402

NICS = 24
NAME = "vnbench-nic24"


def _reasons():
    reason = benchlib.root_reason()
    if reason:
        return reason
    if not os.path.exists("/usr/bin/qemu-system-x86_64"):
        return "QEMU (/usr/bin/qemu-system-x86_64) is not installed"
    return None


def _dom_type():
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return "qemu"
    os.close(fd)
    return "kvm"


def _vm_hwm_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def measure(ctx):
    reason = _reasons()
    if reason:
        return {"skipped": reason}
    reps = max(3, round(8 * ctx.scale))
    dom_type = _dom_type()
    res = {"nics": NICS, "reps": reps, "domain_type": dom_type}
    env = benchlib.python_env(ctx.pycache)
    xml = ctx.workdir / "nic24.xml"
    xml.write_text(domaingen.ethernet_domain(NAME, NICS, dom_type=dom_type, memory_mib=64))
    state = ctx.workdir / "start-state"
    runtime = Path("/tmp") / f"vnb-{uuid.uuid4().hex[:8]}"  # short: QMP socket paths are limited
    start = benchlib.Series("virtnet start --paused")
    destroy = benchlib.Series("virtnet destroy")
    qemu_hwm = []
    group_first = benchlib.Series("ip -batch group delete + virtnet destroy")
    group_only = benchlib.Series("ip -batch group delete")
    destroy_after = benchlib.Series("virtnet destroy (taps already gone)")
    try:
        with benchlib.fresh_netns("start") as ns:
            cli = [benchlib.VIRTNET, "--netns", ns, "--state-dir", str(state), "--runtime-dir", str(runtime)]
            benchlib.run(cli + ["define", str(xml)], env=env)
            benchlib.run(cli + ["start", "--paused", NAME], env=env)  # warm-up
            benchlib.run(cli + ["destroy", NAME], env=env)
            for rep in range(reps):
                run = benchlib.run(cli + ["start", "--paused", NAME], env=env)
                start.add(run.wall)
                live = _live_state(state)
                assert len(live.created_taps) == NICS, live
                qemu_hwm.append(_vm_hwm_kib(live.pid))
                run = benchlib.run(cli + ["destroy", NAME], env=env)
                destroy.add(run.wall)
                _assert_no_taps(ns)
            # Experiment: the taps deleted in one batch before destroy (what moving delete_many first does).
            for rep in range(reps):
                benchlib.run(cli + ["start", "--paused", NAME], env=env)
                live = _live_state(state)
                group = 0x7E000000 + rep
                script = "".join(f"link set dev {tap} group {group}\n" for tap in live.created_taps)
                script += f"link del group {group}\n"
                batch = benchlib.run(["ip", "-n", ns, "-batch", "-"], stdin=script.encode(), env=env)
                run = benchlib.run(cli + ["destroy", NAME], env=env)
                group_only.add(batch.wall)
                destroy_after.add(run.wall)
                group_first.add(batch.wall + run.wall)
                _assert_no_taps(ns)
            # Peak RSS of one start and one destroy (GNU time(1); QEMU's own is read from /proc).
            start.add_rss(benchlib.peak_rss_kib(cli + ["start", "--paused", NAME], env=env))
            destroy.add_rss(benchlib.peak_rss_kib(cli + ["destroy", NAME], env=env))
            # Profiles of one start and one destroy.
            prof = {}
            for verb in ("start", "destroy"):
                path = ctx.workdir / f"{verb}.prof"
                extra = ["--paused"] if verb == "start" else []
                benchlib.run([benchlib.PY, "-m", "cProfile", "-o", str(path), "-m", "virtnet", "--netns", ns,
                              "--state-dir", str(state), "--runtime-dir", str(runtime), verb, *extra, NAME],
                             env=env)
                from bench_conversion import profile_summary

                prof[verb] = profile_summary(path, limit=12)
            res["profiles"] = prof
    finally:
        _force_cleanup(state, runtime)
    res["start"] = start.as_dict()
    res["destroy"] = destroy.as_dict()
    res["qemu_vmhwm_mib"] = max(h for h in qemu_hwm if h) / 1024 if any(qemu_hwm) else None
    res["experiment"] = {"group_delete_then_destroy": group_first.as_dict(), "group_delete": group_only.as_dict(),
                         "destroy_after_group_delete": destroy_after.as_dict()}
    res["pyroute2_import"] = _import_cost(env)
    reason = benchlib.libvirt_reason()
    if reason is None:
        try:
            res["virsh"] = _virsh(ctx, reps, dom_type)
        except benchlib.VirshTimeout as e:
            reason = str(e)
    if reason:
        res["virsh_skipped"] = reason
        if not benchlib.libvirt_daemon_installed():
            res["libvirt_daemon_candidate"] = benchlib.apt_candidate("libvirt-daemon-system")
    return res


def _live_state(state_dir):
    """The LiveState `virtnet start` recorded for the benchmark domain (virtnet.livestate)."""
    from virtnet import livestate
    from virtnet.store import Store

    return livestate.load(Store(state_dir), NAME)


def _import_cost(env, reps=7):
    """Cumulative import time of pyroute2 and of virtnet.host.netlink (-X importtime, cached bytecode)."""
    costs = {"pyroute2": [], "virtnet.host.netlink": []}
    for _ in range(reps):
        run = benchlib.run([benchlib.PY, "-X", "importtime", "-c", "import virtnet.host.netlink"], env=env)
        for line in run.stderr.decode(errors="replace").splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[2].strip() in costs:
                costs[parts[2].strip()].append(int(parts[1]) / 1e6)
    return {name: sorted(values)[len(values) // 2] for name, values in costs.items() if values}


def _assert_no_taps(ns):
    left = [name for name in os.popen(f"ip -n {ns} -o link show").read().split("\n") if "vnet" in name]
    assert not left, left


def _force_cleanup(state, runtime):
    """Whatever happened, no QEMU of ours keeps running (the namespace and its taps go with it)."""
    for record in (state / "running").glob("*.json") if (state / "running").is_dir() else []:
        try:
            pid = json.loads(record.read_text())["pid"]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(runtime).encode() in cmdline:
                os.kill(pid, 9)
        except (OSError, ValueError, KeyError):
            pass
    import shutil

    shutil.rmtree(runtime, ignore_errors=True)


def _virsh(ctx, reps, dom_type):
    """`virsh create --paused` / `virsh destroy` of the same domain (only with a reachable daemon)."""
    name = f"{NAME}-virsh"
    xml = ctx.workdir / "nic24-virsh.xml"
    xml.write_text(domaingen.ethernet_domain(name, NICS, dom_type=dom_type, memory_mib=64))
    virsh = ["virsh", "-q", "-c", benchlib.LIBVIRT_URI]
    create, destroy = benchlib.Series("virsh create --paused"), benchlib.Series("virsh destroy")
    try:
        for _ in range(reps):
            create.add(benchlib.run(virsh + ["create", str(xml), "--paused"]).wall)
            destroy.add(benchlib.run(virsh + ["destroy", name]).wall)
    finally:
        with contextlib.suppress(benchlib.VirshTimeout):  # bounded like every virsh call
            benchlib.run(virsh + ["destroy", name], check=False)
    return {"create": create.as_dict(), "destroy": destroy.as_dict()}
