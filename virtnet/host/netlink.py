"""Network devices through rtnetlink: links, addresses and routes with pyroute2 (traffic control
is host.shaping's, the only other user of pyroute2).

A Netlink object holds one pyroute2 IPRoute socket for all its work. The socket belongs to the
network namespace its thread was in when it was opened, so open it after virtnet.host.netns.enter.
Failures become HostError naming the device, the value and the kernel's errno text.
"""

import errno
import ipaddress
import os
import random
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute, NetlinkError

from virtnet.conf.mac import is_mac, normal
from virtnet.errors import HostError

IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
NUD_INCOMPLETE, NUD_FAILED, NUD_NOARP = 0x01, 0x20, 0x40  # neighbour states (linux/neighbour.h)
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthrough": 8}  # IFLA_MACVTAP_MODE (linux/if_link.h)

# Interface groups used for a batched delete_many are drawn from here, far above the small numbers
# administrators give groups in /etc/iproute2/group.
_BATCH_GROUPS = (1 << 24, 1 << 31)

_ADVICE = {
    errno.ENODEV: "no such device in this network namespace",
    errno.EPERM: "this needs CAP_NET_ADMIN; run as root",
    errno.EACCES: "this needs CAP_NET_ADMIN; run as root",
}


@dataclass(frozen=True)
class LinkState:
    """One network device as the kernel reports it."""

    name: str
    index: int
    mac: str | None  # lowercase "aa:bb:cc:dd:ee:ff"; None for devices without one
    mtu: int
    flags: int
    up: bool
    master: str | None  # the bridge (or bond) this device is a port of
    kind: str | None  # 'tun', 'bridge', 'veth', ...; None for physical devices and loopback


class Netlink:
    """Link, address and route operations on the current network namespace."""

    def __init__(self):
        try:
            self._ipr = IPRoute()
        except OSError as exc:
            raise HostError(f"cannot open a netlink socket: {os.strerror(exc.errno)}") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    # --- reading -----------------------------------------------------------------------------

    def link(self, name):
        """The state of device NAME, or None when there is none."""
        message = self._get(ifname=name)
        if message is None:
            return None
        master = None
        master_index = message.get("master")
        if master_index:
            master_message = self._get(index=master_index)
            master = master_message.get("ifname") if master_message is not None else None
        address = message.get("address")
        flags = message["flags"]
        return LinkState(
            name=message.get("ifname"),
            index=message["index"],
            mac=address.lower() if address else None,
            mtu=message.get("mtu"),
            flags=flags,
            up=bool(flags & IFF_UP),
            master=master,
            kind=message.get(("linkinfo", "kind")),
        )

    def exists(self, name):
        return self._get(ifname=name) is not None

    def link_names(self):
        """The names of all devices in this network namespace."""
        return {message.get("ifname") for message in self._dump_links()}

    def link_stats(self, name):
        """The kernel's 64-bit counters of device NAME (IFLA_STATS64: rx_bytes, rx_packets,
        rx_errors, rx_dropped, tx_..., as the host sees them), or None when there is no such device."""
        message = self._get(ifname=name)
        if message is None:
            return None
        stats = message.get("stats64")
        if stats is None:
            raise HostError(f"cannot read the counters of '{name}': the kernel sent no IFLA_STATS64")
        return dict(stats)

    def neighbours(self, family=socket.AF_INET):
        """[(address, lowercase MAC, device name)] of the neighbour table (ARP for IPv4), leaving out
        entries without a link-layer address and those that failed or are not resolved yet."""
        try:
            entries = list(self._ipr.neigh("dump", family=family))
        except NetlinkError as exc:
            raise _error(exc, "read the neighbour table") from None
        names = {m["index"]: m.get("ifname") for m in self._dump_links()}
        found = []
        for entry in entries:
            lladdr = entry.get("lladdr")
            if lladdr and entry.get("dst") and not entry["state"] & (NUD_INCOMPLETE | NUD_FAILED | NUD_NOARP):
                found.append((entry.get("dst"), lladdr.lower(), names.get(entry["ifindex"])))
        return found

    # --- changing a device -------------------------------------------------------------------

    def set_mac(self, name, mac):
        mac = _mac(name, mac)
        self._set(name, f"set MAC of '{name}' to {mac}", address=mac)

    def set_mtu(self, name, mtu):
        try:
            self._ipr.link("set", ifname=name, mtu=int(mtu))
        except NetlinkError as exc:
            advice = None
            if exc.code == errno.EINVAL:
                advice = self._mtu_range(name)
            raise _error(exc, f"set MTU of '{name}' to {mtu}", advice) from None

    def set_up(self, name):
        self._set(name, f"bring '{name}' up", state="up")

    def set_down(self, name):
        self._set(name, f"take '{name}' down", state="down")

    def change_link(self, name, index, *, mac=None, mtu=None, master=None, up=False):
        """Change device NAME, given by its ifindex INDEX, in one request: what is given of MAC, MTU,
        MASTER (an ifindex) and UP. The kernel's do_setlink applies the MAC and MTU before the master,
        so a bridge joined this way neither adopts the device's old MAC nor shrinks to its old MTU
        (it also brings the device up before enslaving it: the end state is the plan's).
        The error does not say which change was refused; set_mac, set_mtu, set_master and set_up do."""
        changes = {"address": _mac(name, mac)} if mac is not None else {}
        if mtu is not None:
            changes["mtu"] = int(mtu)
        if master is not None:
            changes["master"] = master
        if up:
            changes["state"] = "up"
        try:
            self._ipr.link("set", index=index, **changes)
        except NetlinkError as exc:
            raise _error(exc, f"change '{name}'") from None

    def set_master(self, name, bridge):
        """Make NAME a port of BRIDGE."""
        bridge_message = self._get(ifname=bridge)
        if bridge_message is None:
            raise HostError(f"cannot attach '{name}' to bridge '{bridge}': no device '{bridge}'; "
                            f"create it (e.g. `ip link add {bridge} type bridge`) or fix <source bridge>")
        advice = None
        if bridge_message.get(("linkinfo", "kind")) != "bridge":
            advice = f"'{bridge}' is not a bridge"
        self._set(name, f"attach '{name}' to bridge '{bridge}'", advice, master=bridge_message["index"])

    def add_address(self, name, address, prefixlen, peer=None):
        """Add ADDRESS/PREFIXLEN to NAME; with PEER, a point-to-point address (like `ip addr add
        ADDRESS peer PEER/PREFIXLEN`)."""
        what = f"add address {address}/{prefixlen} to '{name}'"
        local = _ip(address, what)
        request = {"family": _family(local), "local": str(local), "address": str(local),
                   "prefixlen": _prefixlen(prefixlen, local, what)}
        if peer is not None:
            remote = _ip(peer, what)
            if remote.version != local.version:
                raise HostError(f"cannot {what}: peer {peer} is not of the same IP version")
            request["address"] = str(remote)
        elif local.version == 4 and request["prefixlen"] < 31:
            # As `ip addr add ... brd +` and libvirt do: IPv4 gets its broadcast address.
            network = ipaddress.ip_network(f"{local}/{request['prefixlen']}", strict=False)
            request["broadcast"] = str(network.broadcast_address)
        index = self._index(name, what)
        try:
            self._ipr.addr("add", index=index, **request)
        except NetlinkError as exc:
            advice = "the address is already there" if exc.code == errno.EEXIST else None
            raise _error(exc, what, advice) from None

    def add_route(self, name, destination, prefixlen, gateway=None, metric=None):
        """Route DESTINATION/PREFIXLEN out of NAME, via GATEWAY if given (IPv4 or IPv6)."""
        what = f"add route {destination}/{prefixlen} via {gateway or 'link'} on '{name}'"
        dst = _ip(destination, what)
        prefixlen = _prefixlen(prefixlen, dst, what)
        try:
            ipaddress.ip_network(f"{dst}/{prefixlen}", strict=True)
        except ValueError:
            raise HostError(f"cannot {what}: {destination} has bits set beyond the /{prefixlen} prefix") from None
        request = {"family": _family(dst), "dst": str(dst), "dst_len": prefixlen,
                   "table": RT_TABLE_MAIN, "proto": RTPROT_BOOT, "type": RTN_UNICAST,
                   # A route with no gateway reaches hosts directly on the link, as `ip route` has it.
                   "scope": RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK}
        if gateway is not None:
            via = _ip(gateway, what)
            if via.version != dst.version:
                raise HostError(f"cannot {what}: gateway {gateway} is not of the same IP version")
            request["gateway"] = str(via)
        if metric is not None:
            request["priority"] = int(metric)
        request["oif"] = self._index(name, what)
        try:
            self._ipr.route("add", **request)
        except NetlinkError as exc:
            advice = None
            if exc.code == errno.EEXIST:
                advice = "an identical route is already there"
            elif exc.code == errno.ENETUNREACH:
                advice = f"the gateway is not on a network of '{name}'; add an address covering it first"
            raise _error(exc, what, advice) from None

    def delete_address(self, name, address, prefixlen):
        """Remove ADDRESS/PREFIXLEN from NAME (what add_address put there); absent is fine."""
        what = f"remove address {address}/{prefixlen} from '{name}'"
        local = _ip(address, what)
        try:
            self._ipr.addr("del", index=self._index(name, what), family=_family(local),
                           address=str(local), prefixlen=_prefixlen(prefixlen, local, what))
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                raise _error(exc, what) from None

    def delete_route(self, name, destination, prefixlen, gateway=None):
        """Remove a route add_route made; absent is fine (removing its address may have taken it)."""
        what = f"remove route {destination}/{prefixlen} on '{name}'"
        dst = _ip(destination, what)
        request = {"family": _family(dst), "dst": str(dst), "dst_len": _prefixlen(prefixlen, dst, what),
                   "table": RT_TABLE_MAIN, "oif": self._index(name, what)}
        if gateway is not None:
            request["gateway"] = gateway
        try:
            self._ipr.route("del", **request)
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                raise _error(exc, what) from None

    # --- creating and deleting ---------------------------------------------------------------

    def add_macvtap(self, name, lower, mac, mode):
        """Create macvtap NAME on device LOWER with address MAC in MODE ('vepa', 'bridge',
        'private' or 'passthrough'), down (as libvirt creates it); returns its ifindex."""
        what = f"create macvtap '{name}' on '{lower}' (mode {mode}, address {mac})"
        lower_message = self._get(ifname=lower)
        if lower_message is None:
            raise HostError(f"cannot {what}: no device '{lower}' in this network namespace; fix <source dev>")
        try:
            self._ipr.link("add", ifname=name, kind="macvtap", link=lower_message["index"], address=str(mac).lower(),
                           macvtap_mode=MACVLAN_MODES[mode])
        except NetlinkError as exc:
            advice = {errno.EEXIST: f"a device named '{name}' already exists",
                      errno.EBUSY: f"'{lower}' is taken by another kind of device (a port of a bridge or bond?)",
                      errno.EINVAL: f"a passthrough macvtap must be the only one on '{lower}', or '{lower}' cannot "
                                    "carry a macvtap at all (loopback?)"}.get(exc.code)
            raise _error(exc, what, advice) from None
        return self._index(name, what)

    def delete(self, name):
        """Delete device NAME; False when it was already gone."""
        try:
            self._ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise _error(exc, f"delete '{name}'") from None
        return True

    def delete_many(self, names):
        """Delete the devices NAMES (those already gone are skipped), in one kernel operation.

        Deleting a device waits for an RCU grace period; the kernel shares one wait among all the
        devices of a single delete-by-group request. So the devices are moved into an interface
        group no other device is in, and the group is deleted. If the kernel refuses that, they get
        their groups back and are deleted one by one; the ones that fail are named in one HostError.
        """
        wanted = set(names)
        links = self._dump_links()
        present = {m.get("ifname"): m.get("group") or 0 for m in links if m.get("ifname") in wanted}
        if len(present) > 1 and self._delete_as_group(present, {m.get("group") or 0 for m in links}):
            return
        failures = []
        for name in sorted(present):
            try:
                self.delete(name)
            except HostError as exc:
                failures.append(exc.message)
        if failures:
            raise HostError("; ".join(failures))

    def _delete_as_group(self, original_groups, groups_in_use):
        """The batched delete; False, with the groups put back, when the kernel refuses it."""
        group = _unused_group(groups_in_use)
        grouped = []
        try:
            for name in sorted(original_groups):
                try:
                    self._ipr.link("set", ifname=name, group=group)
                except NetlinkError as exc:
                    if exc.code != errno.ENODEV:  # a device that vanished meanwhile is fine
                        raise
                else:
                    grouped.append(name)
            if grouped:
                self._ipr.link("del", group=group)
            return True
        except NetlinkError:
            for name in grouped:
                try:
                    self._ipr.link("set", ifname=name, group=original_groups[name])
                except NetlinkError:
                    pass  # the one-by-one pass reports what is wrong with this device
            return False

    # --- virtual networks' bridges --------------------------------------------------------------

    def add_bridge(self, name, *, stp=False, delay=0, mac=None, mtu=None):
        """Create bridge NAME (STP on or off, forward DELAY in seconds, optional MAC and MTU), down;
        returns its ifindex."""
        what = f"create bridge '{name}'"
        options = {"br_stp_state": 1 if stp else 0, "br_forward_delay": delay * 100}
        if mac is not None:
            options["address"] = mac
        if mtu is not None:
            options["mtu"] = mtu
        try:
            self._ipr.link("add", ifname=name, kind="bridge", **options)
        except NetlinkError as exc:
            advice = f"'{name}' already exists" if exc.code == errno.EEXIST else None
            raise _error(exc, what, advice) from None
        return self._index(name, what)

    def set_port_isolated(self, name):
        """Mark bridge port NAME isolated: it forwards only to ports that are not (the bridge itself
        and uplinks), as `bridge link set dev NAME isolated on`."""
        index = self._index(name, f"isolate bridge port '{name}'")
        try:
            self._ipr.brport("set", index=index, isolated=1)
        except NetlinkError as exc:
            raise _error(exc, f"isolate bridge port '{name}'") from None

    # --- helpers -----------------------------------------------------------------------------

    def _get(self, **match):
        try:
            return self._ipr.link("get", **match)[0]
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise _error(exc, f"read device {match.get('ifname', match.get('index'))}") from None

    def _dump_links(self):
        try:
            return list(self._ipr.link("dump"))
        except NetlinkError as exc:
            raise _error(exc, "list network devices") from None

    def _index(self, name, what):
        message = self._get(ifname=name)
        if message is None:
            raise HostError(f"cannot {what}: no device '{name}' in this network namespace")
        return message["index"]

    def _set(self, name, what, advice=None, **changes):
        try:
            self._ipr.link("set", ifname=name, **changes)
        except NetlinkError as exc:
            raise _error(exc, what, advice) from None

    def _mtu_range(self, name):
        message = self._get(ifname=name)
        if message is None:
            return None
        low, high = message.get("min_mtu"), message.get("max_mtu")
        if low is None or not high:
            return None
        return f"'{name}' accepts {low} to {high}"


def _error(exc, what, advice=None):
    text = os.strerror(exc.code) if isinstance(exc.code, int) and exc.code > 0 else str(exc)
    advice = advice or _ADVICE.get(exc.code)
    return HostError(f"cannot {what}: {text}" + (f"; {advice}" if advice else ""))


def _mac(name, mac):
    """MAC as the kernel gets it (lowercase), or the HostError that it is none."""
    mac = str(mac).lower()
    if not (is_mac(mac) and normal(mac) == mac):
        raise HostError(f"cannot set MAC of '{name}' to '{mac}': not six colon-separated hex octets")
    return mac


def _ip(value, what):
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise HostError(f"cannot {what}: '{value}' is not an IP address") from None


def _prefixlen(value, address, what):
    limit = address.max_prefixlen
    try:
        prefixlen = int(value)
    except (TypeError, ValueError):
        prefixlen = -1
    if not 0 <= prefixlen <= limit:
        raise HostError(f"cannot {what}: prefix length '{value}' is not between 0 and {limit}")
    return prefixlen


def _family(address):
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def _unused_group(groups_in_use):
    while True:
        group = random.randrange(*_BATCH_GROUPS)
        if group not in groups_in_use:
            return group
