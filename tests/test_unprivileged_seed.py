"""The central case as the README tells it, for real: root pre-creates the tap with the script
`virtnet plan --format sh --owner USER` writes, and a freshly created non-root USER defines,
starts and destroys the seed domain (examples/net-eth-unmanaged-tap.xml) on it, in a fresh network
namespace. The tap stays exactly as the administrator left it: before, while QEMU holds it, and
after destroy.

USER runs virtnet from hostcases' world-readable copy (the checkout may be a clone in a 0700
directory). Where the host's /dev/net/tun is mode 0600 (some containers and CI hosts), USER's
commands get a 0666 node of the same device bound over /dev/net/tun in a private mount namespace
(hostcases._PRIVATE_TUN); the host's node and mount table are checked to be as they were.
"""

import dataclasses
import os
import shutil

from hostcases import (
    SEED,
    SEED_NAME,
    SEED_TAP,
    assert_tap_as_left,
    assert_unchanged,
    destroy_leaves_the_tap,
    fails,
    info_network,
    ip,
    links,
    live_state,
    ok,
    precreate_taps,
    qmp,
    snapshot,
    tap_of_fd,
    uids_of,
    user_workspace,
)


def host_tun():
    """What must not change about the host's /dev/net/tun (a chmod would move its ctime)."""
    st = os.stat("/dev/net/tun")
    return {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "rdev": st.st_rdev, "ino": st.st_ino,
            "dev": st.st_dev, "ctime_ns": st.st_ctime_ns}


def mounts_about(*paths):
    """The lines of this (the host's) mount table whose mount point is one of PATHS or under one."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if any(point == str(p) or point.startswith(f"{p}/") for p in paths):
                found.append(line)
    return found


def tap_fds(pid):
    """The fds of process PID attached to a tap, by number: {fd: tap} (from /proc, not from QEMU)."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.path.realpath(f"/proc/{pid}/fd/{fd}") == "/dev/net/tun":
            out[int(fd)] = tap_of_fd(pid, fd)
    return out


def test_a_user_runs_the_seed_domain_on_the_tap_root_precreated_and_the_tap_is_left_as_it_was(
        ns, dirs, unprivileged_user):
    user = unprivileged_user
    tun_before, dev_net_mounts = host_tun(), mounts_about("/dev/net")
    with user_workspace(user, ns, "vnt-us-", tun=True) as space:
        xml = space.work / "seed.xml"
        shutil.copyfile(SEED, xml)
        xml.chmod(0o644)

        # The administrator's part: the script plan writes for USER, run as root in the namespace.
        precreate_taps(dirs, ns, xml, user, space.work)
        # ... and, as administrators do, the tap on a bridge and with an MTU of their own, so
        # that "left as it was" covers a master and a non-default MTU too.
        ip("-n", ns, "link", "add", "br0", "type", "bridge")
        ip("-n", ns, "link", "set", "dev", SEED_TAP, "mtu", "1400", "master", "br0")
        ip("-n", ns, "link", "set", "dev", "br0", "up")
        tap = links(ns)[SEED_TAP]
        tun = dict(tap.tun)
        assert (tap.mac, tap.mtu, tap.master, tap.kind, tap.up) == ("fa:11:22:33:44:55", 1400, "br0", "tun", True)
        assert (tun["type"], tun["vnet_hdr"], tun["multi_queue"], tun["persist"], tun["user"]) == (
            "tap", "True", "False", "True", user)
        before = snapshot(ns)

        if space.private_tun:
            # The user's processes see a node they may open; without it the host's 0600 node
            # refuses them, and virtnet says what to do.
            seen = ok(space.run("stat", "-c", "%a %t:%T", "/dev/net/tun")).split()
            rdev = os.stat("/dev/net/tun").st_rdev
            assert seen == ["666", f"{os.major(rdev):x}:{os.minor(rdev):x}"]
            refused = dataclasses.replace(space, tun_dir=None)
            ok(refused.virtnet("define", xml))
            error = fails(refused.virtnet("start", SEED_NAME, "--paused"))
            assert (f"cannot open /dev/net/tun for tap '{SEED_TAP}': Permission denied; "
                    "give this user read-write access to /dev/net/tun") in error
            assert_unchanged(ns, before, "the namespace, after a refused start")
            assert live_state(space.state, SEED_NAME) is None and os.listdir(space.runtime) == []
        else:
            ok(space.virtnet("define", xml))

        out = ok(space.virtnet("start", SEED_NAME, "--paused"))
        live = live_state(space.state, SEED_NAME)
        pid = live.pid
        assert out == f"Domain '{SEED_NAME}' started (paused): QEMU pid {pid}, {SEED_TAP}\n"
        assert uids_of(pid) == [str(space.uid)] * 4
        # QEMU holds one fd attached to the tap, and it is the one its NIC's backend uses.
        assert list(tap_fds(pid).values()) == [SEED_TAP]
        with qmp(live.qmp) as client:
            nic = info_network(client)["net0"]
            assert client.execute("query-status")["running"] is False
        assert (nic["model"], nic["macaddr"]) == ("virtio-net-pci", "fe:11:22:33:44:55")
        [peer] = nic["backends"]
        assert peer["type"] == "tap" and tap_of_fd(pid, int(peer["fd"])) == SEED_TAP
        if space.private_tun:
            assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        # While QEMU uses it: the same MAC, MTU, flags (carrier ones masked), owner and master.
        assert_tap_as_left(ns, SEED_TAP, tap, before, "while QEMU runs")
        destroy_leaves_the_tap(space, SEED_NAME, pid, SEED_TAP, tap, before)
        assert mounts_about("/dev/net") == dev_net_mounts and mounts_about(space.work) == []

    # The host's node and mount table are as they were: the private node lived and died with the
    # user's mount namespaces.
    assert host_tun() == tun_before
    assert mounts_about("/dev/net") == dev_net_mounts and mounts_about(space.work) == []
