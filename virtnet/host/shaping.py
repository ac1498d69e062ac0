"""<bandwidth> on a tap, with tc as libvirt applies it (virnetdevbandwidth.c), through pyroute2.

To the guest (<inbound>) is the tap's egress: an HTB root qdisc `1:` whose default class `1:1` has
the rate (average), ceil (peak) and burst, with libvirt's quantum, and an SFQ leaf where the kernel
has SFQ. From the guest (<outbound>) is the tap's ingress: libvirt polices it (a u32 filter that
drops what exceeds the rate); virtnet shapes it instead where the kernel has ifb and mirred: the
ingress filter redirects every packet to an ifb device of the tap's own, whose egress gets the same
HTB as <inbound>, so TCP sees delay rather than loss and reaches the rate. The plan says which.

Units are libvirt's: rates in kilobytes per second, which libvirt hands to tc as `kbps` (1000 bytes
per second), and burst in KiB (`kb`, 1024 bytes). Nothing here runs at import: the conversion verbs
import this module for its pure parts, and pyroute2 only when tc is touched.
"""

import errno
import gzip
import hashlib
import os
import platform
import shlex
import struct

from virtnet.errors import HostError

MTU = 1500  # libvirt's quantum assumes it
POLICE_MTU = "64kb"
ROOT, CLASS, LEAF, INGRESS = 0x10000, 0x10001, 0x20000, 0xFFFF0000
ETH_P_ALL = 0x0003
SFQ_PERTURB = 10
MAX_BURST_KIB = (2**32 - 1) // 1024  # tc keeps a burst in a 32-bit count of bytes

# Capabilities (as in hostcaps' set): which of libvirt's pieces this kernel has.
CAP_IFB = "tc-ifb"  # ifb devices and the mirred action: outbound is shaped
CAP_POLICE = "tc-police"  # the police action: outbound is policed (libvirt's way)
CAP_SFQ = "tc-sfq"  # SFQ leaf under the HTB class, as libvirt adds
_CONFIG = {CAP_IFB: ("CONFIG_IFB", "CONFIG_NET_ACT_MIRRED"), CAP_POLICE: ("CONFIG_NET_ACT_POLICE",),
           CAP_SFQ: ("CONFIG_NET_SCH_SFQ",)}


def quantum(average):
    """libvirt's HTB quantum for AVERAGE kilobytes/s: rate / r2q, at least 1 (one MTU per turn)."""
    return max(average * 1024 // 8 // MTU, 1)


def ifb_name(tap):
    """The ifb device that shapes what TAP receives: `ifb-TAP`, or with a hash of TAP where that is
    too long for an interface name."""
    name = "ifb-" + tap
    if len(name) <= 15:
        return name
    return "ifb-" + tap[:6] + "-" + hashlib.sha1(tap.encode()).hexdigest()[:4]


def _kernel_config():
    """{CONFIG_X: 'y'|'m'} of the running kernel, or None when no config file can be read."""
    release = platform.release()
    for path in ("/proc/config.gz", f"/boot/config-{release}", f"/lib/modules/{release}/config"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                text = f.read()
        except OSError:
            continue
        config = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and value in ("y", "m"):
                config[key] = value
        return config
    return None


def probe():
    """The shaping capabilities of this kernel, from its config. Without a readable config, libvirt's
    assumptions (police and SFQ, no ifb)."""
    config = _kernel_config()
    if config is None:
        return frozenset({CAP_POLICE, CAP_SFQ})
    return frozenset(cap for cap, options in _CONFIG.items() if all(o in config for o in options))


# --- tc command lines, as an administrator would type them (plan --format sh) ----------------------

def _kbps(value):
    return f"{value}kbps"


def _htb_commands(dev, average, peak, burst, sfq):
    klass = ["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", _kbps(average)]
    if peak:
        klass += ["ceil", _kbps(peak)]
    if burst:
        klass += ["burst", f"{burst}kb"]
    commands = [["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"],
                klass + ["quantum", str(quantum(average))]]
    if sfq:
        commands.append(["tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "2:", "sfq", "perturb",
                         str(SFQ_PERTURB)])
    return commands


def police_burst(average, burst):
    """libvirt's police burst when none is given: the average's worth of one second, capped."""
    return burst if burst else min(average, MAX_BURST_KIB)


def inbound_commands(a):
    """The tc commands of a ShapeInbound action."""
    return _htb_commands(a.ifname, a.average, a.peak, a.burst, a.sfq)


def outbound_commands(a):
    """The commands (ip and tc) of a ShapeOutbound action."""
    match_all = ["tc", "filter", "add", "dev", a.ifname, "parent", "ffff:", "protocol", "all", "u32", "match",
                 "u32", "0", "0"]
    ingress = ["tc", "qdisc", "add", "dev", a.ifname, "ingress"]
    if not a.ifb:
        return [ingress, match_all + ["police", "rate", _kbps(a.average), "burst",
                                      f"{police_burst(a.average, a.burst)}kb", "mtu", POLICE_MTU, "drop",
                                      "flowid", ":1"]]
    return [["ip", "link", "add", "name", a.ifb, "type", "ifb"], ["ip", "link", "set", "dev", a.ifb, "up"],
            *_htb_commands(a.ifb, a.average, a.peak, a.burst, a.sfq),
            ingress, match_all + ["action", "mirred", "egress", "redirect", "dev", a.ifb]]


def shell_lines(commands):
    return [" ".join(shlex.quote(word) for word in argv) for argv in commands]


# --- applying and removing them -------------------------------------------------------------------

def _ipr():
    from pyroute2 import IPRoute

    try:
        return IPRoute()
    except OSError as exc:
        raise HostError(f"cannot open a netlink socket: {os.strerror(exc.errno)}") from None


def _fail(exc, what, ifname):
    code = getattr(exc, "code", None)
    text = os.strerror(code) if isinstance(code, int) and code > 0 else str(exc)
    advice = ""
    if code in (errno.EPERM, errno.EACCES):
        advice = ("; shaping needs CAP_NET_ADMIN: run as root, or let an administrator apply it "
                  "(`virtnet plan --format sh` writes the tc commands)")
    elif code == errno.ENOENT and "qdisc" in what:
        advice = "; this kernel lacks that queueing discipline or action"
    return HostError(f"cannot {what} on '{ifname}': {text}{advice}")


def _index(ipr, ifname):
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise HostError(f"cannot shape '{ifname}': no such device in this network namespace")
    return found[0]


def _add_htb(ipr, index, ifname, average, peak, burst, sfq):
    from pyroute2 import NetlinkError

    rate = average * 1000
    params = {"rate": rate, "ceil": (peak or average) * 1000, "quantum": quantum(average)}
    if burst:
        params["burst"] = burst * 1024
    try:
        ipr.tc("add", "htb", index=index, handle=ROOT, default=1)
        ipr.tc("add-class", "htb", index=index, handle=CLASS, parent=ROOT, **params)
        if sfq:
            ipr.tc("add", "sfq", index=index, handle=LEAF, parent=CLASS, perturb=SFQ_PERTURB)
    except NetlinkError as exc:
        raise _fail(exc, "add the HTB qdisc", ifname) from None
    except struct.error:
        # HTB keeps the burst as the time it takes at the rate, in 32-bit scheduler ticks.
        raise HostError(f"cannot shape '{ifname}': a burst of {burst} KiB at {average} kilobytes/s is more than "
                        "tc can hold (a few minutes' worth of the rate); give a smaller burst") from None


def _clear(ipr, index, handle):
    """Remove the root (ROOT) or ingress (INGRESS) qdisc; absent is fine."""
    from pyroute2 import NetlinkError

    try:
        if handle == INGRESS:
            ipr.tc("del", "ingress", index=index, handle=INGRESS)
        else:
            ipr.tc("del", index=index, handle=0, parent=0xFFFFFFFF)  # whatever is the root, as libvirt
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise


def _kinds(ipr, index):
    """{'root': kind, 'ingress': kind} of the qdiscs virtnet would put on device INDEX."""
    found = {}
    for message in ipr.tc("dump", index=index):
        if message["index"] != index:
            continue
        kind = message.get("TCA_KIND")
        if message["parent"] == 0xFFFFFFFF:
            found["root"] = kind
        elif kind == "ingress":
            found["ingress"] = kind
    return found


def _already(ipr, index, where, kind, exc, ifname, what):
    """Without CAP_NET_ADMIN, an administrator's shaping of a managed='no' tap (from `plan --format
    sh`) is taken as it is; anything else is the error."""
    from pyroute2 import NetlinkError

    try:
        present = _kinds(ipr, index).get(where) == kind
    except NetlinkError:
        present = False
    if exc.code in (errno.EPERM, errno.EACCES) and present:
        return True
    raise _fail(exc, what, ifname) from None


def shape_inbound(a):
    """Apply a ShapeInbound action. Returns False when an administrator's HTB was left in place."""
    from pyroute2 import NetlinkError

    with _ipr() as ipr:
        index = _index(ipr, a.ifname)
        try:
            _clear(ipr, index, ROOT)  # as libvirt: whatever was there is replaced
        except NetlinkError as exc:
            return not _already(ipr, index, "root", "htb", exc, a.ifname, "remove the root qdisc")
        try:
            _add_htb(ipr, index, a.ifname, a.average, a.peak, a.burst, a.sfq)
        except HostError:
            _clear(ipr, index, ROOT)  # nothing half-made is left (its inverse is not recorded)
            raise
    return True


def shape_outbound(a):
    """Apply a ShapeOutbound action. Returns False when an administrator's was left in place."""
    from pyroute2 import NetlinkError

    with _ipr() as ipr:
        index = _index(ipr, a.ifname)
        try:
            _clear(ipr, index, INGRESS)
        except NetlinkError as exc:
            return not _already(ipr, index, "ingress", "ingress", exc, a.ifname, "remove the ingress qdisc")
        made = False
        try:
            if a.ifb:
                target, made = _make_ifb(ipr, a), True
                _add_htb(ipr, target, a.ifb, a.average, a.peak, a.burst, a.sfq)
                action = {"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target}
            else:
                action = {"kind": "police", "rate": a.average * 1000, "burst": police_burst(a.average, a.burst) * 1024,
                          "mtu": 65536, "action": "drop", "limit": 0}
            try:
                ipr.tc("add", "ingress", index=index, handle=INGRESS)
                ipr.tc("add-filter", "u32", index=index, parent=INGRESS, protocol=ETH_P_ALL, prio=1,
                       keys=["0x0/0x0+0"], target=0x1, action=action)
            except NetlinkError as exc:
                raise _fail(exc, "add the ingress qdisc and its filter", a.ifname) from None
        except HostError:
            _clear(ipr, index, INGRESS)  # nothing half-made is left (its inverse is not recorded)
            if made:
                ipr.link("del", ifname=a.ifb)
            raise
    return True


def _make_ifb(ipr, a):
    from pyroute2 import NetlinkError

    if ipr.link_lookup(ifname=a.ifb):
        raise HostError(f"cannot shape what '{a.ifname}' receives: '{a.ifb}' already exists; it is the ifb device "
                        f"virtnet makes for it: delete it if nothing else uses it (ip link delete dev {a.ifb})")
    try:
        ipr.link("add", ifname=a.ifb, kind="ifb")
    except NetlinkError as exc:
        raise _fail(exc, f"create the ifb device '{a.ifb}'", a.ifname) from None
    index = _index(ipr, a.ifb)
    try:
        ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        ipr.link("del", index=index)
        raise _fail(exc, f"bring the ifb device '{a.ifb}' up", a.ifname) from None
    return index


def _clear_qdisc(ipr, ifname, parent, what):
    """Remove IFNAME's qdisc at PARENT (WHAT names it in the error), if IFNAME is still there."""
    from pyroute2 import NetlinkError

    found = ipr.link_lookup(ifname=ifname)
    try:
        if found:
            _clear(ipr, found[0], parent)
    except NetlinkError as exc:
        raise _fail(exc, f"remove the {what} qdisc", ifname) from None


def unshape_inbound(ifname):
    """Remove what shape_inbound added (the tap may be gone already)."""
    with _ipr() as ipr:
        _clear_qdisc(ipr, ifname, ROOT, "root")


def unshape_outbound(ifname, ifb):
    """Remove the ingress qdisc (with its filter) and the ifb device."""
    from pyroute2 import NetlinkError

    with _ipr() as ipr:
        _clear_qdisc(ipr, ifname, INGRESS, "ingress")
        if ifb and ipr.link_lookup(ifname=ifb):
            try:
                ipr.link("del", ifname=ifb)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise _fail(exc, f"delete the ifb device '{ifb}'", ifname) from None
