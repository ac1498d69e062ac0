"""QEMU -netdev / -device / -chardev properties for one <interface>, following libvirt's conventions.

Each builder returns an ordered dict in libvirt's key order (id last on -netdev), so the output is
interchangeable with libvirt's. Rendering to JSON or keyval happens in render.py.
"""

import ipaddress

from virtnet.conf import iftypes
from virtnet.conf.guest import VIRTIO_MODELS
from virtnet.errors import UnsupportedError, UsageError
from virtnet.qemu.pciaddr import VIRTIO_PCI_SUFFIX, add_pci_address
from virtnet.record import Record

# QEMU 7.2 (Debian 12) wants `reconnect` in seconds; QEMU 9.2 renamed it reconnect-ms.
PASST_RECONNECT_SECONDS = 5


# <driver><host>/<guest> attributes → virtio-net-pci properties, in libvirt's order.
HOST_OFFLOAD_PROPS = (("csum", "csum"), ("gso", "gso"), ("tso4", "host_tso4"), ("tso6", "host_tso6"),
                      ("ecn", "host_ecn"), ("ufo", "host_ufo"), ("mrg_rxbuf", "mrg_rxbuf"))
GUEST_OFFLOAD_PROPS = (("csum", "guest_csum"), ("tso4", "guest_tso4"), ("tso6", "guest_tso6"),
                       ("ecn", "guest_ecn"), ("ufo", "guest_ufo"))


class HostFds(Record):
    """File descriptors handed to QEMU for one interface (numbers as QEMU will see them)."""

    __slots__ = ("taps", "vhosts")

    def __init__(self, taps=None, vhosts=None):
        self.taps = [] if taps is None else taps
        self.vhosts = [] if vhosts is None else vhosts


def wants_vhost(domain, iface, host_caps):
    """libvirt's rule: vhost-net only for kvm domains, virtio, tap-like, not driver name='qemu'."""
    return (
        domain.type == "kvm"
        and iface.is_tap
        and iface.is_virtio
        and iface.driver_name != "qemu"
        and "vhost-net" in host_caps
    )


def _fd_list(fds):
    return ":".join(str(fd) for fd in fds)


def _tap_netdev(iface, fds):
    props = {"type": "tap"}
    if len(fds.taps) == 1:
        props["fd"] = str(fds.taps[0])
    else:
        props["fds"] = _fd_list(fds.taps)
    if fds.vhosts:
        props["vhost"] = True
        if len(fds.vhosts) == 1:
            props["vhostfd"] = str(fds.vhosts[0])
        else:
            props["vhostfds"] = _fd_list(fds.vhosts)
    if iface.sndbuf is not None:
        props["sndbuf"] = iface.sndbuf
    return props


def _standalone_tap_netdev(iface, helper):
    """QEMU opens the tap itself by name; no scripts (virtnet never uses QEMU's)."""
    if iface.type == "bridge":
        # Unprivileged-friendly: QEMU runs its bridge helper, which creates and enslaves the tap.
        # The caller finds the helper (a path given on the command line is printed as is).
        if helper is None:
            raise UsageError("a standalone command line for a bridge needs the bridge helper's path "
                             "(--bridge-helper PATH)")
        return {"type": "bridge", "br": iface.source.bridge, "helper": helper}
    if iface.type == "network":
        raise UnsupportedError("<interface type='network'> cannot be in a standalone command line: its bridge is "
                               "known once `virtnet net-start` made it; use <interface type='bridge'> with "
                               "that bridge's name", line=iface.line)
    if iface.type == "direct":
        raise UnsupportedError("<interface type='direct'> cannot be in a standalone command line: QEMU cannot "
                               "create a macvtap; `virtnet start` creates it and passes its fds", line=iface.line)
    props = {"type": "tap"}
    if iface.target_dev:
        props["ifname"] = iface.target_dev  # a '%d' template is filled in by the kernel
    props["script"] = "no"
    props["downscript"] = "no"
    if iface.wants_vnet_hdr:
        props["vnet_hdr"] = True
    if iface.queue_count > 1:
        props["queues"] = iface.queue_count
    if iface.sndbuf is not None:
        props["sndbuf"] = iface.sndbuf
    return props


def _user_netdev(iface, paths):
    if iface.uses_passt:
        return {
            "type": "stream",
            "addr": {"type": "unix", "path": paths.passt_socket_text(iface.ids.device)},
            "server": False,
            # No "reconnect": -netdev stream gained it in QEMU 8.0; 7.2 (Debian 12) refuses it,
            # and libvirt omits it for 7.2 as well.
        }
    props = {"type": "user"}
    for ip in iface.guest_ips:
        addr = ipaddress.ip_address(ip.address)
        if addr.version == 4:
            props["net"] = f"{ip.address}/{ip.prefix}" if ip.prefix else ip.address
        else:
            props["ipv6-prefix"] = ip.address
            if ip.prefix is not None:
                props["ipv6-prefixlen"] = ip.prefix
    return props


def _host_port(address, port):
    return f"{address or ''}:{port}"  # -netdev socket is IPv4-only (checks.py refuses IPv6)


def _socket_netdev(iface):
    src = iface.source
    key = {"server": "listen", "client": "connect", "mcast": "mcast", "udp": "udp"}[iface.type]
    props = {"type": "socket", key: _host_port(src.address, src.port)}
    if iface.type == "udp":
        props["localaddr"] = _host_port(src.local_address, src.local_port)
    return props


def unsupported_type(iface):
    """The error for an interface type virtnet parses but cannot turn into a command line yet."""
    return UnsupportedError(f"<interface type='{iface.type}'> is not supported yet by xml2argv/start; "
                            f"supported: {', '.join(iftypes.DRIVEN)}", line=iface.line)


def netdev_props(domain, iface, *, fds, paths, standalone=False, helper=None, host_caps=frozenset()):
    """The -netdev properties. `fds` is a HostFds for tap-backed types (ignored when standalone);
    `helper`: the bridge helper for standalone bridges;
    `host_caps`: with standalone, vhost-net lets QEMU open /dev/vhost-net itself (vhost=on)."""
    ids = iface.ids
    kind = iface.type
    row = iftypes.kind(kind)  # the table row, without iface.kind's model look-ups
    if not row.driven:
        raise unsupported_type(iface)
    if kind == "network" and iface.source is not None and iface.source.portgroup:
        raise UnsupportedError(f"<source portgroup='{iface.source.portgroup}'>: virtnet's networks have no "
                               "portgroups; remove portgroup=", line=iface.line)
    if row.tap:
        if standalone:
            props = _standalone_tap_netdev(iface, helper)
            if props["type"] == "tap" and wants_vhost(domain, iface, host_caps):
                props["vhost"] = True
        else:
            props = _tap_netdev(iface, fds)
    elif kind == "user":
        props = _user_netdev(iface, paths)
    elif row.socket:
        props = _socket_netdev(iface)
    else:  # vhostuser
        props = {"type": "vhost-user", "chardev": ids.chardev}
        if iface.queue_count > 1:
            props["queues"] = iface.queue_count
    props["id"] = ids.netdev
    return props


def chardev_props(iface, paths):
    """The -chardev for a vhost-user interface (always keyval: QEMU 7.2 takes no JSON here)."""
    ids = iface.ids
    src = iface.source
    path = paths.passt_socket_text(ids.device) if iface.uses_passt else src.path
    props = {"backend": "socket", "id": ids.chardev, "path": path}
    if src.mode == "server" and not iface.uses_passt:
        props["server"] = True
    elif iface.uses_passt:
        props["reconnect"] = PASST_RECONNECT_SECONDS
    elif src.has_reconnect:
        props["reconnect"] = src.reconnect_timeout or 0 if src.reconnect_enabled else 0
    return props


def device_driver(model):
    """QEMU's device for the <model type> MODEL (as Interface.model gives it): any model but the
    virtio ones is QEMU's device name itself."""
    suffix = VIRTIO_PCI_SUFFIX.get(model)
    return model if suffix is None else "virtio-net-pci" + suffix


def _virtio_props(props, iface, queues):
    """Add virtio-net-pci's own properties (libvirt's order) to PROPS."""
    driver = iface.has("driver")  # most interfaces have no <driver>: none of its values to read
    if driver:
        if iface.txmode:
            props["tx"] = {"iothread": "bh", "timer": "timer"}[iface.txmode]
        for attr in ("ioeventfd", "event_idx"):
            value = getattr(iface, attr)
            if value is not None:
                props[attr] = value == "on"
        for offloads, names in ((iface.host_offloads, HOST_OFFLOAD_PROPS),
                                (iface.guest_offloads, GUEST_OFFLOAD_PROPS)):
            if offloads is None:
                continue
            for attr, prop in names:
                value = getattr(offloads, attr)
                if value is not None:
                    props[prop] = value == "on"
    if queues > 1:
        props["mq"] = True
        props["vectors"] = 2 * queues + 2
    if driver:
        for attr in ("rx_queue_size", "tx_queue_size"):
            value = getattr(iface, attr)
            if value is not None:
                props[attr] = value
    if iface.mtu is not None:
        props["host_mtu"] = iface.mtu
    if iface.teaming_type == "persistent":
        props["failover"] = True
    if driver:
        for attr, prop in (("rss", "rss"), ("rss_hash_report", "hash")):
            value = getattr(iface, attr)
            if value is not None:
                props[prop] = value == "on"


def device_props(domain, iface, queues=None):
    """The -device properties. QUEUES: the queues actually opened when fewer than <driver queues>
    (qemu-bridge-helper passes a single tap fd)."""
    ids = iface.ids
    model = iface.model
    props = {"driver": device_driver(model)}
    if model in VIRTIO_MODELS:  # iface.is_virtio, from the model at hand (one model read fewer)
        _virtio_props(props, iface, queues or iface.queue_count)
    props["netdev"] = ids.netdev
    props["id"] = ids.device
    props["mac"] = iface.mac
    if iface.boot_order is not None:
        props["bootindex"] = iface.boot_order
    add_pci_address(props, domain, iface)
    if iface.has("rom"):
        _rom_props(props, iface)
    return props


def _rom_props(props, iface):
    if iface.rom_enabled == "no":
        props["romfile"] = ""  # no ROM at all; bar and file are moot
        return
    if iface.rom_bar is not None:
        props["rombar"] = 1 if iface.rom_bar == "on" else 0
    if iface.rom_file is not None:
        props["romfile"] = iface.rom_file
