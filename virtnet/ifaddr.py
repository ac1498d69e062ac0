"""`virtnet domifaddr`: a running guest's addresses from one of virsh's sources, and virsh's table.

    lease   the DHCP leases dnsmasq gave each interface on a virtnet network (<interface
            type='network'>), read from the network's lease file, under the tap's name
    agent   the QEMU guest agent in the guest (guest-network-get-interfaces), over the unix socket
            of the domain's <channel> whose virtio target is org.qemu.guest_agent.0: the guest's
            own interface names, MACs and addresses with their prefixes
    arp     the host's IPv4 neighbour table (in the domain's network namespace): every address seen
            with an interface's MAC, under the interface's tap name, with prefix 0 as libvirt gives it

What the agent sends is the guest's word: names and addresses are shown with control characters
escaped, and anything malformed is left out.
"""

import ipaddress
from dataclasses import dataclass, field

from virtnet import liveif, livestate, runner
from virtnet.errors import HostError

SOURCES = ("lease", "agent", "arp")
AGENT_TIMEOUT = 5.0  # seconds the guest agent has to answer each command


@dataclass
class Found:
    """One interface as a source reports it."""

    name: str
    mac: str | None
    addresses: list = field(default_factory=list)  # [(protocol 'ipv4' or 'ipv6', address, prefix)]


def addresses(store, name, source):
    """[Found] for running domain NAME, from SOURCE (one of SOURCES)."""
    with store.lock():
        state = runner.require_running(store, name, "read the addresses of")
        domain = livestate.live_domain(store, name)
    if source == "lease":
        return from_leases(store, name, domain, state)
    if source == "agent":
        return from_agent(name, domain, state)
    return from_arp(domain, state)


# --- lease -----------------------------------------------------------------------------------------


def from_leases(store, name, domain, state):
    """The leases dnsmasq gave each interface on a virtnet network (by its MAC), under its tap's name."""
    from virtnet.conf.mac import normal
    from virtnet.errors import VirtnetError
    from virtnet.network import leases

    on_networks = [i for i in domain.interfaces if i.type == "network" and i.source is not None]
    if not on_networks:
        raise HostError(f"domain '{name}': no interface is on a virtnet network, so there are no DHCP leases to read; "
                        "use --source agent (the guest agent) or --source arp (the host's neighbour table)")
    found = []
    for iface in on_networks:
        mac = normal(iface.mac) if iface.mac else None
        try:
            held = leases.of_network(store, iface.source.network, mac=mac)
        except VirtnetError as e:
            raise HostError(f"domain '{name}': {e.message}") from None
        if held:
            tap = state.taps.get(iface.ids.alias) or iface.target_dev or "-"
            found.append(Found(tap, mac, [(lease.protocol, lease.address, lease.prefix) for lease in held]))
    return found


# --- agent -----------------------------------------------------------------------------------------


def agent_socket(name, domain, state):
    """The unix socket of the domain's guest agent channel, or a HostError saying why there is none."""
    from virtnet.qemu.agent import AGENT_CHANNEL
    from virtnet.qemu.chardevs import channel_socket_path

    channel = next((c for c in domain.channels if c.target_type == "virtio" and c.target_name == AGENT_CHANNEL), None)
    if channel is None:
        raise HostError(f"domain '{name}' has no guest agent channel; give it <channel type='unix'><target "
                        f"type='virtio' name='{AGENT_CHANNEL}'/></channel> (and qemu-ga in the guest)")
    if channel.type != "unix":
        raise HostError(f"domain '{name}': its guest agent channel is <channel type='{channel.type}'>; virtnet talks "
                        "to the agent over <channel type='unix'> only")
    if channel.source_mode == "connect":
        raise HostError(f"domain '{name}': QEMU connects its guest agent channel to {channel.source_path} itself; "
                        "ask the program listening there, or use <source mode='bind'> for virtnet to reach the agent")
    return channel.source_path or channel_socket_path(state.paths, channel)


def from_agent(name, domain, state, timeout=AGENT_TIMEOUT):
    from virtnet.qemu.agent import AgentClient, AgentError

    path = agent_socket(name, domain, state)
    try:
        with AgentClient(path, timeout=timeout) as agent:
            reply = agent.execute("guest-network-get-interfaces")
    except AgentError as e:
        raise HostError(f"domain '{name}': {e.message}") from None
    return parse_agent_interfaces(reply)


def parse_agent_interfaces(reply):
    """[Found] of guest-network-get-interfaces' answer. As libvirt does, an alias 'eth0:1' adds its
    addresses to eth0."""
    found = {}
    for entry in reply if isinstance(reply, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        base = entry["name"].split(":", 1)[0]
        mac = entry.get("hardware-address")
        iface = found.setdefault(base, Found(liveif.shown(base), liveif.shown(mac) if isinstance(mac, str) else None))
        for address in entry.get("ip-addresses") or []:
            parsed = _agent_address(address)
            if parsed is not None:
                iface.addresses.append(parsed)
    return list(found.values())


def _agent_address(address):
    if not isinstance(address, dict) or address.get("ip-address-type") not in ("ipv4", "ipv6"):
        return None
    prefix = address.get("prefix")
    try:
        ip = ipaddress.ip_address(address.get("ip-address"))
    except ValueError:
        return None
    if not isinstance(prefix, int) or not 0 <= prefix <= ip.max_prefixlen or f"ipv{ip.version}" != \
            address["ip-address-type"]:
        return None
    return address["ip-address-type"], str(ip), prefix


# --- arp -------------------------------------------------------------------------------------------


def from_arp(domain, state):
    from virtnet.conf.mac import normal
    from virtnet.host import netns
    from virtnet.host.netlink import Netlink

    with netns.inside_if_elsewhere(state.netns), Netlink() as nl:
        neighbours = nl.neighbours()
    found = []
    for iface in domain.interfaces:
        mac = normal(iface.mac) if iface.mac else None
        seen = sorted({address for address, lladdr, _ in neighbours if lladdr == mac},
                      key=ipaddress.ip_address)
        if seen:
            name = state.taps.get(iface.ids.alias) or iface.target_dev or "-"
            found.append(Found(name, mac, [("ipv4", address, 0) for address in seen]))
    return found


# --- virsh's table ---------------------------------------------------------------------------------


def table(interfaces, only=None, full=False):
    """virsh domifaddr's output: a header, then a line per address (an interface without any gets
    N/A); ONLY keeps the interface of that name; FULL repeats the name and MAC on every line."""
    lines = [f" {'Name':<10} {'MAC address':<20} {'Protocol':<8}     Address", "-" * 79]
    for iface in interfaces:
        if only is not None and iface.name != only:
            continue
        if not iface.addresses:
            lines.append(f" {iface.name:<10} {iface.mac or 'N/A':<17}    {'N/A':<12} N/A")
            continue
        for index, (protocol, address, prefix) in enumerate(iface.addresses):
            name, mac = (iface.name, iface.mac or "") if full or index == 0 else ("-", "-")
            lines.append(f" {name:<10} {mac:<17}    {protocol:<12} {address}/{prefix}")
    return "\n".join(lines) + "\n"
