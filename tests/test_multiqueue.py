"""Multiqueue taps and vhost-net, for real: one TUNSETIFF (one fd) per queue on a multi_queue tap,
QEMU given `fds=` and a NIC with mq=on and vectors=2N+2, the refusal of a managed='no' tap whose
multi_queue flag does not match, and vhost-net (one /dev/vhost-net fd per queue for kvm domains,
userspace virtio-net when it is unavailable, an error when <driver name='vhost'> asked for it).

The queue count QEMU uses is read from QEMU itself (`info network` lists one peer per queue, and
the NIC's mq/vectors properties over QOM) and from the kernel (`ip -d` reports how many queues
are attached to the tap, and /proc/PID/fdinfo which tap each of QEMU's fds is attached to).
"""

import json
import os

import pytest

from hostcases import (
    assert_clean,
    domain_xml,
    fails,
    info_network,
    ip,
    ip_json,
    links,
    ok,
    qmp,
    snapshot,
    tap_of_fd,
    virtnet,
    write,
)
from virtnet.hostcaps import vhost_net_usable

MAC = "52:54:00:e0:00:01"


def nic(kind, *, queues, target=None, managed=True, driver_name=None, source=""):
    target_line = ""
    if target:
        target_line = f"\n      <target dev='{target}'{'' if managed else ' managed=' + repr('no')}/>"
    name = f" name='{driver_name}'" if driver_name else ""
    return f"""\
    <interface type='{kind}'>
      <mac address='{MAC}'/>{source}{target_line}
      <model type='virtio'/>
      <driver{name} queues='{queues}'/>
    </interface>
"""


def load(xml):
    from virtnet.conf.load import load_text

    return load_text(xml).domain


def qemu_argv(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0")[:-1]]


def netdev_json(pid):
    argv = qemu_argv(pid)
    return json.loads(argv[argv.index("-netdev") + 1])


def queues_seen_by_qemu(client):
    peers = info_network(client)["net0"]["backends"]
    mq = client.execute("qom-get", {"path": "/machine/peripheral/net0/virtio-backend", "property": "mq"})
    vectors = client.execute("qom-get", {"path": "/machine/peripheral/net0", "property": "vectors"})
    return peers, mq, vectors


# --- the plan, pure ------------------------------------------------------------------------------


def test_the_plan_opens_one_tap_fd_and_one_vhost_fd_per_queue():
    from virtnet.host.plan import CreateTap, OpenVhost, build_plan

    plan = build_plan(load(domain_xml("pq", nic("ethernet", queues=3, target="mq0"), type_="kvm")),
                      host_caps={"vhost-net"})
    assert CreateTap("net0", "mq0", 3, True) in plan.setup
    assert OpenVhost("net0", 3, required=False) in plan.setup
    assert plan.setup[0].describe() == "create tap mq0 (vnet_hdr, multi_queue x3)"


# --- managed taps --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ethernet", "bridge"])
def test_a_managed_multiqueue_tap_gives_qemu_one_fd_per_queue(ns, dirs, tmp_path, kind):
    d = dirs
    queues = 4 if kind == "ethernet" else 2
    source = ""
    if kind == "bridge":
        ip("-n", ns, "link", "add", "br0", "type", "bridge")
        ip("-n", ns, "link", "set", "br0", "address", "02:00:00:00:0e:00", "up")
        source = "\n      <source bridge='br0'/>"
    ok(virtnet(d, "define", write(tmp_path / "mq.xml", domain_xml("mq", nic(kind, queues=queues, target="mq0",
                                                                          source=source)))))
    before = snapshot(ns)

    ok(virtnet(d, "start", "mq", "--paused", netns=ns))
    state = d.live("mq")
    pid = state.pid
    with qmp(state.qmp) as client:
        peers, mq, vectors = queues_seen_by_qemu(client)
    assert [(p["name"], p["type"], p["index"]) for p in peers] == [("hostnet0", "tap", str(q)) for q in range(queues)]
    fds = [int(p["fd"]) for p in peers]
    assert len(set(fds)) == queues and {tap_of_fd(pid, fd) for fd in fds} == {"mq0"}
    assert (mq, vectors) == (True, 2 * queues + 2)
    netdev = netdev_json(pid)
    assert netdev["fds"] == ":".join(map(str, fds)) and "fd" not in netdev
    [tap] = ip_json(ns, "-d", "link", "show", "dev", "mq0")
    info = tap["linkinfo"]["info_data"]
    # Until the guest's driver turns multiqueue on, QEMU keeps all but the first queue disabled.
    assert (info["multi_queue"], info["numqueues"] + info["numdisabled"]) == (True, queues)
    if kind == "bridge":
        assert tap["master"] == "br0"

    ok(virtnet(d, "destroy", "mq"))
    assert_clean(ns, d, "mq", before, pid)


# --- managed='no' taps -----------------------------------------------------------------------------


@pytest.mark.parametrize("created_with, queues, expected", [
    ("", 2, "target dev 'pre0' (managed='no') was created without multi_queue but the interface uses 2 "
            "queue(s); recreate it with multi_queue: `ip tuntap del dev pre0 mode tap && ip tuntap add dev "
            "pre0 mode tap user $USER multi_queue vnet_hdr`"),
    ("multi_queue", 1, "target dev 'pre0' (managed='no') was created with multi_queue but the interface uses "
                       "1 queue(s); recreate it without multi_queue: `ip tuntap del dev pre0 mode tap && ip "
                       "tuntap add dev pre0 mode tap user $USER vnet_hdr`"),
])
def test_an_unmanaged_tap_whose_multi_queue_does_not_match_is_refused_and_left_alone(ns, dirs, tmp_path,
                                                                                   created_with, queues, expected):
    d = dirs
    ip("-n", ns, "tuntap", "add", "dev", "pre0", "mode", "tap", "vnet_hdr", *created_with.split())
    ip("-n", ns, "link", "set", "pre0", "address", "02:00:00:00:0e:99", "up")
    interface = nic("ethernet", queues=queues, target="pre0", managed=False)
    if queues == 1:
        interface = interface.replace("\n      <driver queues='1'/>", "")
    ok(virtnet(d, "define", write(tmp_path / "um.xml", domain_xml("um", interface))))
    before = snapshot(ns)

    error = fails(virtnet(d, "start", "um", "--paused", netns=ns))
    assert error == f"virtnet: error: {expected}"
    assert_clean(ns, d, "um", before)
    assert links(ns)["pre0"] == before["links"]["pre0"]


# --- vhost-net ---------------------------------------------------------------------------------


def require_kvm():
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs /dev/kvm: vhost-net is only used for kvm domains")


def vhost_fds(pid):
    fd_dir = f"/proc/{pid}/fd"
    return sorted(int(fd) for fd in os.listdir(fd_dir) if os.readlink(f"{fd_dir}/{fd}") == "/dev/vhost-net")


def test_vhost_net_is_used_per_queue_when_available_and_otherwise_silently_left_out(ns, dirs, tmp_path):
    require_kvm()
    d = dirs
    ok(virtnet(d, "define", write(tmp_path / "vh.xml", domain_xml("vh", nic("ethernet", queues=2, target="vh0"),
                                                                   type_="kvm"))))
    before = snapshot(ns)

    result = virtnet(d, "start", "vh", "--paused", netns=ns)
    ok(result)
    state = d.live("vh")
    netdev = netdev_json(state.pid)
    if vhost_net_usable():
        fds = vhost_fds(state.pid)
        assert len(fds) == 2 and netdev["vhost"] is True and netdev["vhostfds"] == ":".join(map(str, fds))
        assert "warning" not in result.stderr
    else:  # as libvirt: without an explicit name='vhost', userspace virtio-net silently
        assert result.stderr == ""
        assert not any(key.startswith("vhost") for key in netdev)
        assert vhost_fds(state.pid) == []
    with qmp(state.qmp) as client:
        peers, mq, vectors = queues_seen_by_qemu(client)
    assert len(peers) == 2 and (mq, vectors) == (True, 6)

    ok(virtnet(d, "destroy", "vh"))
    assert_clean(ns, d, "vh", before, state.pid)


def test_explicit_driver_vhost_is_fatal_when_vhost_net_cannot_be_opened(ns, dirs, tmp_path):
    require_kvm()
    d = dirs
    xml = domain_xml("vx", nic("ethernet", queues=2, target="vx0", driver_name="vhost"), type_="kvm")
    ok(virtnet(d, "define", write(tmp_path / "vx.xml", xml)))
    before = snapshot(ns)

    result = virtnet(d, "start", "vx", "--paused", netns=ns)
    if vhost_net_usable():  # this host has vhost-net: name='vhost' is simply honoured
        ok(result)
        state = d.live("vx")
        assert len(vhost_fds(state.pid)) == 2
        ok(virtnet(d, "destroy", "vx"))
        assert_clean(ns, d, "vx", before, state.pid)
        return
    reason = "No such file or directory" if not os.path.exists("/dev/vhost-net") else ""
    error = fails(result)
    assert error.startswith("virtnet: error: <driver name='vhost'> was requested for net0, but /dev/vhost-net "
                            f"is unavailable ({reason}")
    assert error.endswith("; load the vhost_net module or remove name='vhost'")
    assert_clean(ns, d, "vx", before)  # the multiqueue tap created before it is gone again
