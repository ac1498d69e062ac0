"""An active network's DHCP leases, read from dnsmasq's own lease file (net-dhcp-leases, and
`domifaddr --source lease` for interfaces on the network).

dnsmasq's lease file has one line per lease: `EXPIRY MAC IP HOSTNAME CLIENT-ID` for DHCPv4 and,
after a `duid SERVER-DUID` line, `EXPIRY IAID IP HOSTNAME CLIENT-DUID` for DHCPv6 ('*' where a
field is unknown; expiry 0 for an infinite lease). What a guest sends (its hostname, its client id)
is the guest's word: shown with control characters escaped, and malformed lines left out.
"""

import ipaddress
import time
from dataclasses import dataclass

from virtnet.conf.mac import is_mac, normal
from virtnet.conf.text import has_control, visible
from virtnet.errors import StoreError
from virtnet.network import defs
from virtnet.network.paths import NetworkPaths


@dataclass
class Lease:
    expiry: int  # seconds since the epoch; 0: never
    mac: str | None  # DHCPv4 only (DHCPv6 names the client by its DUID)
    protocol: str  # 'ipv4' or 'ipv6'
    address: str
    prefix: int
    hostname: str | None
    client_id: str | None


def _shown(value):
    if value in (None, "*"):
        return None
    return visible(value) if has_control(value) else value


def parse(text, network):
    """The leases in lease-file TEXT, with each address's prefix from NETWORK's <ip> covering it."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] == "duid":
            continue
        try:
            expiry = int(fields[0])
            address = ipaddress.ip_address(fields[2])
        except ValueError:
            continue
        ip = next((ip for ip in network.ips if address in ip.network), None)
        mac = normal(fields[1]) if address.version == 4 and is_mac(fields[1]) else None
        found.append(Lease(expiry, mac, f"ipv{address.version}", str(address), ip.prefix if ip else address.max_prefixlen,
                           _shown(fields[3]), _shown(fields[4]) if len(fields) > 4 else None))
    return found


def of_network(store, name, mac=None):
    """The leases of active network NAME (optionally only MAC's)."""
    nets = defs.files(store)
    network = defs.load_defined(store, name).network
    record = nets.read_runtime(name)
    if record is None:
        raise StoreError(f"network '{name}' is not active; `virtnet net-start {name}` starts it")
    path = NetworkPaths(store.runtime_dir, name).leases
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    except OSError as e:
        raise StoreError(f"cannot read the leases of network '{name}' ({path}): {e.strerror}") from None
    leases = parse(text, network)
    return [lease for lease in leases if mac is None or lease.mac == mac]


def table(leases):
    """virsh net-dhcp-leases' table."""
    lines = [f" {'Expiry Time':<21} {'MAC address':<19} {'Protocol':<10} {'IP address':<20} {'Hostname':<10} "
             "Client ID or DUID", "-" * 110]
    for lease in leases:
        expiry = "never" if lease.expiry == 0 else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.expiry))
        lines.append(f" {expiry:<21} {lease.mac or '-':<19} {lease.protocol:<10} "
                     f"{lease.address + '/' + str(lease.prefix):<20} {lease.hostname or '-':<10} "
                     f"{lease.client_id or '-'}".rstrip())
    return "\n".join(lines) + "\n"
