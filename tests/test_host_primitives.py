"""Host primitives against the real kernel: taps via tun ioctls, netlink, network namespaces.

Every test runs in a fresh network namespace (see conftest.py) and closes every fd it opens.
"""

import fcntl
import json
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

import hostops
from virtnet.errors import HostError
from virtnet.host import netns as host_netns
from virtnet.host import tun
from virtnet.host.netlink import Netlink


@pytest.fixture
def fds():
    """A list the test appends its tap fds to; they are closed at teardown."""
    opened = []
    yield opened
    for fd in opened:
        try:
            os.close(fd)
        except OSError:
            pass


def open_tap(fds, name, **kwargs):
    kwargs.setdefault("vnet_hdr", False)
    kwargs.setdefault("multi_queue", False)
    ifname, new_fds = tun.open_tap(name, **kwargs)
    fds.extend(new_fds)
    return ifname, new_fds


def ip_json(netns_name, *args):
    out = subprocess.run(["ip", "-n", netns_name, "-j", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def open_fd_count():
    return len(os.listdir("/proc/self/fd"))


def run_as(uid, function):
    """Run FUNCTION in a forked child with uid/gid UID (no capabilities); return what it returned,
    or the text of the HostError it raised, as ("ok", value) / ("error", message)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            try:
                result = ("ok", function())
            except HostError as exc:
                result = ("error", str(exc))
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    assert data, "the child process died before reporting"
    return tuple(json.loads(data))


# --- tun: opening taps --------------------------------------------------------------------------


def test_open_tap_lives_while_its_fd_is_open(netlink, fds):
    name, tap_fds = open_tap(fds, "vt0")
    assert name == "vt0"
    assert len(tap_fds) == 1
    assert fcntl.fcntl(tap_fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert tun.tap_name_of(tap_fds[0]) == "vt0"
    state = netlink.link("vt0")
    assert state.kind == "tun"
    attrs = tun.tap_attributes("vt0")
    assert attrs.is_tap and not attrs.persistent and attrs.owner is None and attrs.group is None

    os.close(fds.pop())
    assert not netlink.exists("vt0")
    assert tun.tap_attributes("vt0") is None


def test_tap_name_of_a_fd_that_is_no_tap_is_a_host_error(netns):
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(HostError, match=f"cannot read the tap name of fd {read_end} "):
            tun.tap_name_of(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_kernel_fills_a_name_template(netlink, fds):
    first, _ = open_tap(fds, "vnt%d")
    second, _ = open_tap(fds, "vnt%d")
    assert (first, second) == ("vnt0", "vnt1")
    assert {"vnt0", "vnt1"} <= netlink.link_names()


@pytest.mark.parametrize("vnet_hdr", [False, True])
@pytest.mark.parametrize("multi_queue", [False, True])
def test_flags_show_in_tap_attributes(netns, fds, vnet_hdr, multi_queue):
    open_tap(fds, "vt0", vnet_hdr=vnet_hdr, multi_queue=multi_queue)
    attrs = tun.tap_attributes("vt0")
    assert attrs.vnet_hdr is vnet_hdr
    assert attrs.multi_queue is multi_queue
    assert attrs.flags & tun.IFF_NO_PI
    info = ip_json(netns, "-d", "link", "show", "vt0")[0]["linkinfo"]["info_data"]
    assert (info["type"], info["pi"], info["vnet_hdr"], info["multi_queue"]) == ("tap", False, vnet_hdr, multi_queue)


def test_multi_queue_opens_one_fd_per_queue(netns, fds):
    name, tap_fds = open_tap(fds, "mq0", vnet_hdr=True, multi_queue=True, queues=4)
    assert len(set(tap_fds)) == 4
    assert [tun.tap_name_of(fd) for fd in tap_fds] == [name] * 4
    info = ip_json(netns, "-d", "link", "show", "mq0")[0]["linkinfo"]["info_data"]
    assert info["numqueues"] == 4


def test_several_queues_without_multi_queue_is_refused(netns):
    with pytest.raises(HostError, match="need multi_queue"):
        tun.open_tap("vt0", vnet_hdr=False, multi_queue=False, queues=2)


def test_a_too_long_name_is_refused_before_the_kernel_truncates_it(netns):
    with pytest.raises(HostError, match="longer than 15"):
        tun.open_tap("a" * 16, vnet_hdr=False, multi_queue=False)


def test_missing_tun_device_asks_about_the_module(netns, tmp_path):
    with pytest.raises(HostError, match=r"cannot open .*/tun for tap 'vt0': No such file.*tun module loaded"):
        tun.open_tap("vt0", vnet_hdr=False, multi_queue=False, tun_path=str(tmp_path / "tun"))


def test_a_single_queue_tap_in_use_is_busy(netlink, fds):
    open_tap(fds, "vt0")
    before = open_fd_count()
    with pytest.raises(HostError, match="'vt0' is already in use"):
        tun.open_tap("vt0", vnet_hdr=False, multi_queue=False)
    assert open_fd_count() == before


def test_exclusive_refuses_an_existing_device(netlink, fds):
    open_tap(fds, "vt0")
    with pytest.raises(HostError, match="a device named 'vt0' already exists"):
        tun.open_tap("vt0", vnet_hdr=False, multi_queue=False, exclusive=True)


def test_attaching_to_a_bridge_name_says_it_is_not_a_tap(netlink):
    hostops.create_bridge("br0")
    with pytest.raises(HostError, match="'br0' exists but is not a tap device"):
        tun.open_tap("br0", vnet_hdr=False, multi_queue=False)


# --- tun: persistent taps, as an administrator makes them ---------------------------------------


def test_persistent_tap_outlives_its_fds_and_can_be_attached_and_deleted(netlink, netns, fds):
    assert hostops.create_persistent_tap("pt0", owner=1234, group=4321, vnet_hdr=True) == "pt0"
    attrs = tun.tap_attributes("pt0")
    assert attrs.persistent and attrs.vnet_hdr and not attrs.multi_queue
    assert (attrs.owner, attrs.group) == (1234, 4321)
    info = ip_json(netns, "-d", "link", "show", "pt0")[0]["linkinfo"]["info_data"]
    assert (info["persist"], info["user"], info["group"]) == (True, 1234, 4321)

    name, tap_fds = open_tap(fds, "pt0")
    assert name == "pt0"
    os.close(fds.pop())
    assert netlink.exists("pt0"), "closing an attached fd must not remove a persistent tap"

    assert hostops.delete_persistent_tap("pt0") is True
    assert not netlink.exists("pt0")
    assert hostops.delete_persistent_tap("pt0") is False


def test_attaching_with_multi_queue_to_a_single_queue_tap_gives_advice(netns):
    hostops.create_persistent_tap("pt0", multi_queue=False)
    before = open_fd_count()
    with pytest.raises(HostError) as caught:
        tun.open_tap("pt0", vnet_hdr=True, multi_queue=True, queues=2)
    message = str(caught.value)
    assert "Invalid argument" in message
    assert "'pt0' was created without multi_queue" in message
    assert "`ip tuntap add dev pt0 mode tap multi_queue`" in message
    assert open_fd_count() == before


def test_attaching_with_one_queue_to_a_multi_queue_tap_gives_advice(netns):
    hostops.create_persistent_tap("pt0", multi_queue=True)
    with pytest.raises(HostError, match="'pt0' was created with multi_queue but is opened with one queue"):
        tun.open_tap("pt0", vnet_hdr=False, multi_queue=False)


def test_multi_queue_attach_to_a_multi_queue_tap_works(netns, fds):
    hostops.create_persistent_tap("pt0", multi_queue=True)
    name, tap_fds = open_tap(fds, "pt0", multi_queue=True, queues=3)
    assert name == "pt0" and len(tap_fds) == 3


@pytest.fixture
def public_tun_node():
    """A tun device node anyone may open, so that an unprivileged child reaches the tun driver
    without the host's /dev/net/tun changing (pytest's tmp_path is private to root)."""
    directory = tempfile.mkdtemp(prefix="vnt-tun-")
    try:
        os.chmod(directory, 0o755)
        node = os.path.join(directory, "tun")
        os.mknod(node, stat.S_IFCHR | 0o666, os.stat("/dev/net/tun").st_rdev)
        os.chmod(node, 0o666)
        yield node
    finally:
        shutil.rmtree(directory)


def test_tap_owner_decides_who_may_attach(netns, public_tun_node):
    hostops.create_persistent_tap("pt0", owner=1234)

    def attach():
        return tun.open_tap("pt0", vnet_hdr=False, multi_queue=False, tun_path=public_tun_node)[0]

    assert run_as(1234, attach) == ("ok", "pt0")
    outcome, message = run_as(4321, attach)
    assert outcome == "error"
    assert "Operation not permitted" in message
    assert "'pt0' is owned by uid 1234; run as that user or with CAP_NET_ADMIN" in message

    def create():
        return tun.open_tap("new0", vnet_hdr=False, multi_queue=False, tun_path=public_tun_node)[0]

    outcome, message = run_as(4321, create)
    assert outcome == "error" and "creating a tap needs CAP_NET_ADMIN" in message


def test_tap_attributes_of_something_else_is_none(netlink):
    hostops.create_bridge("br0")
    assert tun.tap_attributes("br0") is None
    assert tun.tap_attributes("nothing0") is None
    assert tun.tap_attributes("../lo") is None


# --- netlink --------------------------------------------------------------------------------------


def test_link_reports_mac_mtu_up_master_and_kind(netlink, fds):
    open_tap(fds, "vt0")
    hostops.create_bridge("br0")
    netlink.set_mac("vt0", "FE:54:00:AB:CD:EF")
    netlink.set_mtu("vt0", 9000)
    netlink.set_up("vt0")
    netlink.set_master("vt0", "br0")

    state = netlink.link("vt0")
    assert (state.name, state.mac, state.mtu, state.up, state.master, state.kind) == (
        "vt0", "fe:54:00:ab:cd:ef", 9000, True, "br0", "tun")
    assert state.flags & 0x1
    assert netlink.link("br0").kind == "bridge"

    hostops.clear_master("vt0")
    hostops.set_down("vt0")
    state = netlink.link("vt0")
    assert (state.master, state.up) == (None, False)


def test_link_of_a_missing_device_is_none(netlink):
    assert netlink.link("nothing0") is None
    assert not netlink.exists("nothing0")
    assert netlink.link_names() == {"lo"}


def test_netlink_errors_name_the_device_value_and_errno(netlink, fds):
    open_tap(fds, "vt0")
    with pytest.raises(HostError, match=r"set MTU of 'vt0' to 70000: Invalid argument; 'vt0' accepts 68 to \d+"):
        netlink.set_mtu("vt0", 70000)
    with pytest.raises(HostError, match="bring 'gone0' up: No such device; no such device in this network namespace"):
        netlink.set_up("gone0")
    with pytest.raises(HostError, match="no device 'br9'"):
        netlink.set_master("vt0", "br9")
    with pytest.raises(HostError, match="not six colon-separated hex octets"):
        netlink.set_mac("vt0", "fe:54:00")
    with pytest.raises(HostError, match="cannot set MAC of 'vt0' to 01:00:5e:00:00:01: Cannot assign"):
        netlink.set_mac("vt0", "01:00:5e:00:00:01")  # multicast: the kernel refuses it


def test_add_address_ipv4_ipv6_and_peer(netlink, netns, fds):
    open_tap(fds, "vt0")
    netlink.add_address("vt0", "192.0.2.1", 24)
    netlink.add_address("vt0", "10.9.0.1", 32, peer="10.9.0.2")
    netlink.add_address("vt0", "2001:db8::1", 64)

    addresses = ip_json(netns, "addr", "show", "dev", "vt0")[0]["addr_info"]
    seen = {(a["local"], a["prefixlen"], a.get("address"), a.get("broadcast")) for a in addresses}
    assert ("192.0.2.1", 24, None, "192.0.2.255") in seen
    assert ("10.9.0.1", 32, "10.9.0.2", None) in seen
    assert ("2001:db8::1", 64, None, None) in seen

    with pytest.raises(HostError, match="add address 192.0.2.1/24 to 'vt0': File exists"):
        netlink.add_address("vt0", "192.0.2.1", 24)
    with pytest.raises(HostError, match="'300.1.1.1' is not an IP address"):
        netlink.add_address("vt0", "300.1.1.1", 24)
    with pytest.raises(HostError, match="prefix length '33' is not between 0 and 32"):
        netlink.add_address("vt0", "192.0.2.9", 33)


def test_add_route_ipv4_ipv6_gateway_and_metric(netlink, netns, fds):
    open_tap(fds, "vt0")
    netlink.set_up("vt0")
    netlink.add_address("vt0", "192.0.2.1", 24)
    netlink.add_address("vt0", "2001:db8::1", 64)
    netlink.add_route("vt0", "198.51.100.0", 24, gateway="192.0.2.254", metric=5)
    netlink.add_route("vt0", "203.0.113.0", 24)
    netlink.add_route("vt0", "2001:db8:1::", 48, gateway="2001:db8::fe", metric=7)

    v4 = {r["dst"]: r for r in ip_json(netns, "-4", "route", "show", "dev", "vt0")}
    assert v4["198.51.100.0/24"]["gateway"] == "192.0.2.254" and v4["198.51.100.0/24"]["metric"] == 5
    assert v4["203.0.113.0/24"]["scope"] == "link" and "gateway" not in v4["203.0.113.0/24"]
    v6 = {r["dst"]: r for r in ip_json(netns, "-6", "route", "show", "dev", "vt0")}
    assert v6["2001:db8:1::/48"]["gateway"] == "2001:db8::fe" and v6["2001:db8:1::/48"]["metric"] == 7

    with pytest.raises(HostError, match="Network is unreachable; the gateway is not on a network of 'vt0'"):
        netlink.add_route("vt0", "100.64.0.0", 10, gateway="172.16.0.1")
    with pytest.raises(HostError, match="bits set beyond the /24 prefix"):
        netlink.add_route("vt0", "203.0.113.7", 24)
    with pytest.raises(HostError, match="no device 'gone0'"):
        netlink.add_route("gone0", "203.0.113.0", 24)


def test_delete_reports_whether_something_was_deleted(netlink):
    hostops.create_bridge("br0")
    assert netlink.delete("br0") is True
    assert netlink.delete("br0") is False
    assert not netlink.exists("br0")


@pytest.mark.parametrize("count", [2, 16])
def test_delete_many_removes_the_named_taps_and_nothing_else(netlink, count):
    names = [hostops.create_persistent_tap(f"pt{i}") for i in range(count)]
    hostops.create_persistent_tap("keep0")
    hostops.create_bridge("br0")

    netlink.delete_many(names + ["never0"])

    assert netlink.link_names() == {"lo", "keep0", "br0"}


def test_delete_many_falls_back_one_by_one_when_the_batch_is_refused(netlink, netns):
    # lo cannot be deleted, so deleting a group that holds it is refused as a whole.
    names = [hostops.create_persistent_tap(f"pt{i}") for i in range(3)]
    with pytest.raises(HostError, match="cannot delete 'lo': Operation not supported"):
        netlink.delete_many(names + ["lo"])
    assert netlink.link_names() == {"lo"}
    assert ip_json(netns, "link", "show", "lo")[0]["group"] == "default", "lo must get its group back"


# --- network namespaces ---------------------------------------------------------------------------


def test_enter_moves_tap_creation_into_the_namespace(outside_netns, fds):
    root_ns = os.stat("/proc/thread-self/ns/net").st_ino
    cwd = os.getcwd()
    saved = host_netns.save()
    try:
        host_netns.enter(outside_netns)
        assert os.stat("/proc/thread-self/ns/net").st_ino == os.stat(f"/run/netns/{outside_netns}").st_ino
        open_tap(fds, "vnt-moved0")
        # /sys was remounted, so sysfs lists this namespace's devices.
        assert sorted(os.listdir("/sys/class/net")) == ["lo", "vnt-moved0"]
        assert tun.tap_attributes("vnt-moved0") is not None
    finally:
        host_netns.restore(saved)

    assert os.stat("/proc/thread-self/ns/net").st_ino == root_ns
    assert os.getcwd() == cwd
    with Netlink() as root_netlink:
        assert not root_netlink.exists("vnt-moved0")
    assert not os.path.exists("/sys/class/net/vnt-moved0")
    shown = ip_json(outside_netns, "link", "show", "vnt-moved0")
    assert shown[0]["ifname"] == "vnt-moved0"


def test_inside_comes_back_even_after_an_error(outside_netns):
    root_ns = os.stat("/proc/thread-self/ns/net").st_ino
    with pytest.raises(RuntimeError):
        with host_netns.inside(outside_netns):
            assert os.stat("/proc/thread-self/ns/net").st_ino != root_ns
            raise RuntimeError("boom")
    assert os.stat("/proc/thread-self/ns/net").st_ino == root_ns


def test_entering_a_missing_namespace_says_how_to_create_it(outside_netns):
    root_ns = os.stat("/proc/thread-self/ns/net").st_ino
    missing = outside_netns + "-missing"
    with pytest.raises(HostError, match=f"no network namespace '{missing}'; create it with `ip netns add {missing}`"):
        host_netns.enter(missing)
    assert os.stat("/proc/thread-self/ns/net").st_ino == root_ns
