"""<filterref filter='clean-traffic'>: libvirt's guest address filter, as nftables rules in a table
of virtnet's own per domain and interface (`virtnet-DOMAIN-ALIAS`), loaded with `nft -f -`.

What libvirt's clean-traffic does with ebtables, on what the guest sends: only from the interface's
MAC address (no-mac-spoofing), ARP only with that MAC and, given IP parameters, those addresses
(no-arp-spoofing), IPv4 only from those addresses, DHCP discovery excepted (no-ip-spoofing), no IPv4
multicast (no-ip-multicast), and nothing but IPv4 and ARP (no-other-l2-traffic). Traffic to the
guest is not filtered. libvirt learns the guest's address when IP is not given; virtnet, without
a daemon, does not: then only the MAC is enforced.

A bridge's tap is filtered in the bridge family (prerouting: every frame it brings into the
bridge); a tap of its own (type='ethernet') in the netdev family, on its ingress hook, since no
bridge sees its frames. Every name and value comes from validated XML and is checked again here
before it reaches the rules.
"""

import hashlib
import re

from virtnet.errors import HostError
from virtnet.host import nft

FILTERS = ("clean-traffic",)
PARAMETERS = ("IP",)
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")  # what may appear quoted in a rule
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_IPV4_RE = re.compile(r"\d{1,3}(\.\d{1,3}){3}")


def table_name(domain, alias):
    """virtnet-DOMAIN-ALIAS, the domain's name in nft identifier characters (with a hash of the
    real name when any had to be replaced, so that two domains never share a table)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", domain)[:32]
    if safe != domain:
        safe += "_" + hashlib.sha1(domain.encode()).hexdigest()[:6]
    return f"virtnet-{safe}-{re.sub(r'[^A-Za-z0-9_]', '_', alias)}"


def nameable(ifname):
    """Whether IFNAME can appear (quoted) in a rule."""
    return bool(_NAME_RE.fullmatch(ifname))


def _checked(pattern, value, what):
    if not pattern.fullmatch(value):
        raise HostError(f"<filterref>: {what} '{value}' cannot be written into an nftables rule")
    return value


def ruleset(family, table, ifname, mac, ips):
    """The nft script that (re)creates TABLE for tap IFNAME with guest MAC and IPS (IPv4)."""
    ifname = _checked(_NAME_RE, ifname, "interface name")
    mac = _checked(_MAC_RE, mac.lower(), "MAC address")
    ips = [_checked(_IPV4_RE, ip, "IPv4 address") for ip in ips]
    if family == "netdev":
        hook, guard = f'type filter hook ingress device "{ifname}" priority -200; policy accept;', ""
    else:
        hook, guard = "type filter hook prerouting priority -200; policy accept;", f'iifname "{ifname}" '
    # Each drop counts what it dropped (`nft list ruleset` shows it).
    rules = [f"ether saddr != {mac} counter drop", f"ether type arp arp saddr ether != {mac} counter drop"]
    if ips:
        addresses = "{ " + ", ".join(ips) + " }"
        rules += [f"ether type arp arp saddr ip != {addresses} counter drop",
                  "ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept",
                  f"ether type ip ip saddr != {addresses} counter drop"]
    rules += ["ether type ip ip daddr 224.0.0.0/4 counter drop", "ether type != { ip, arp } counter drop"]
    body = "".join(f"    {guard}{rule}\n" for rule in rules)
    # Declared, deleted and defined in one transaction: a table left by an earlier run is replaced.
    return (f"table {family} {table}\ndelete table {family} {table}\n"
            f"table {family} {table} {{\n  chain from_guest {{\n    {hook}\n{body}  }}\n}}\n")


def apply(a):
    """Load the rules of an ApplyFilter action."""
    nft.load(ruleset(a.family, a.table, a.ifname, a.mac, a.ips), f"load the nftables rules of {a.device} ({a.table})")


def remove(family, table):
    """Delete the table of a RemoveFilter action."""
    nft.delete_table(family, table)
