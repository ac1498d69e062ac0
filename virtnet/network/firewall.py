"""A network's forwarding and NAT rules: one nftables table of virtnet's own per network
(`table inet virtnet-net-NAME`), loaded and deleted whole with `nft -f -`; no other table is read
or changed.

The rules are libvirt's (networkxml2firewalldata/*.nftables, its libvirt_network table) in
spirit: guests on the bridge talk to each other; an isolated network forwards nothing in or out;
a routed one forwards its own subnets both ways; a NAT one forwards its subnets out and replies
back, and masquerades what leaves them (not multicast and broadcast; TCP and UDP from ports
1024-65535, or to <nat><address>/<port> when given). An open network gets no rules at all. The
bridge name and addresses come from a checked model and are checked again here.
"""

import ipaddress
import re

from virtnet.errors import HostError
from virtnet.host import nft
from virtnet.network.paths import table_name

_IFNAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,15}")


def _ifname(name):
    if not _IFNAME_RE.fullmatch(name or ""):
        raise HostError(f"interface name {name!r} cannot be written into an nftables rule")
    return f'"{name}"'


def _subnets(network, version):
    return [str(ip.network) for ip in network.ips if ip.ip.version == version]


def wants_rules(network):
    return network.own_bridge and network.mode != "open"


def ruleset(network):
    """The nft script that creates the network's table (and replaces one left behind)."""
    table = table_name(network.name)
    br = _ifname(network.bridge_name)
    mode = network.mode
    out_dev = network.forward.dev if network.forward is not None else None
    forward = [f"iifname {br} oifname {br} counter accept"]
    nat = []
    if mode in ("nat", "route"):
        for version, ipword in ((4, "ip"), (6, "ip6")):
            oif = f" oifname {_ifname(out_dev)}" if out_dev else ""
            iif = f" iifname {_ifname(out_dev)}" if out_dev else ""
            for subnet in _subnets(network, version):
                forward.append(f"iifname {br}{oif} {ipword} saddr {subnet} counter accept")
                if mode == "route" or (version == 6 and not network.forward.nat_ipv6):
                    forward.append(f"oifname {br}{iif} {ipword} daddr {subnet} counter accept")
                else:
                    forward.append(f"oifname {br}{iif} {ipword} daddr {subnet} ct state related,established "
                                   "counter accept")
                if mode == "nat" and (version == 4 or network.forward.nat_ipv6):
                    nat += _masquerade(network, ipword, subnet, oif)
    forward += [f"iifname {br} counter reject", f"oifname {br} counter reject"]
    lines = [f"table inet {table} {{}}", f"delete table inet {table}", f"table inet {table} {{",
             "  chain forward {", "    type filter hook forward priority filter; policy accept;"]
    lines += [f"    {rule}" for rule in forward] + ["  }"]
    if nat:
        lines += ["  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;"]
        lines += [f"    {rule}" for rule in nat] + ["  }"]
    return "\n".join(lines + ["}"]) + "\n"


def _masquerade(network, ipword, subnet, oif):
    fwd = network.forward
    base = f"{ipword} saddr {subnet} {ipword} daddr != {subnet}{oif}"
    rules = []
    if ipword == "ip":
        rules += [f"{ipword} saddr {subnet} {ipword} daddr 224.0.0.0/24{oif} counter return",
                  f"{ipword} saddr {subnet} {ipword} daddr 255.255.255.255{oif} counter return"]
    else:
        rules.append(f"{ipword} saddr {subnet} {ipword} daddr ff02::/16{oif} counter return")
    if ipword == "ip" and fwd.nat_start:
        start, end = ipaddress.ip_address(fwd.nat_start), ipaddress.ip_address(fwd.nat_end)
        to = f"{start}-{end}" if start != end else f"{start}"
        ports = f":{fwd.nat_port_start}-{fwd.nat_port_end}" if fwd.nat_port_start is not None else ":1024-65535"
        rules += [f"meta l4proto {proto} {base} counter snat ip to {to}{ports}" for proto in ("tcp", "udp")]
        rules.append(f"{base} counter snat ip to {to}")
        return rules
    ports = (f"{fwd.nat_port_start}-{fwd.nat_port_end}" if fwd.nat_port_start is not None else "1024-65535")
    rules += [f"meta l4proto {proto} {base} counter masquerade to :{ports}" for proto in ("tcp", "udp")]
    rules.append(f"{base} counter masquerade")
    return rules


def load(network):
    table = table_name(network.name)
    nft.load(ruleset(network), f"load the nftables rules of network '{network.name}' ({table})")
