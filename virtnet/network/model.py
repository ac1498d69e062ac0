"""The network model: libvirt's <network> XML, each property declared once as a path.

Derived values (the effective forward mode, each <ip>'s prefix and network) live here too, so the
checks, dnsmasq's configuration, the firewall and net-start read them from one place.
"""

import ipaddress

from virtnet.conf.bandwidth import Rates
from virtnet.conf.xmlmodel import Child, Children, Prop, XMLObject, yes

DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"
# Forward modes virtnet runs a bridge of its own for (none: isolated).
OWN_BRIDGE_MODES = (None, "nat", "route", "open")
LEASE_UNITS = {"seconds": "s", "minutes": "m", "hours": "h"}


class Lease(XMLObject):
    expiry = Prop("@expiry", int)
    unit = Prop("@unit")

    @property
    def dnsmasq(self):
        """dnsmasq's lease time: '1h', '200s', or 'infinite' for expiry 0 (minutes by default)."""
        if self.expiry == 0:
            return "infinite"
        return f"{self.expiry}{LEASE_UNITS[self.unit or 'minutes']}"


class Range(XMLObject):
    start = Prop("@start")
    end = Prop("@end")
    lease = Child("lease", Lease)


class DhcpHost(XMLObject):
    mac = Prop("@mac")
    id = Prop("@id")
    name = Prop("@name")
    ip = Prop("@ip")
    lease = Child("lease", Lease)


class Bootp(XMLObject):
    file = Prop("@file")
    server = Prop("@server")


class Dhcp(XMLObject):
    ranges = Children("range", Range)
    hosts = Children("host", DhcpHost)
    bootp = Child("bootp", Bootp)


class IP(XMLObject):
    address = Prop("@address")
    netmask = Prop("@netmask")
    prefix_attr = Prop("@prefix", int)
    family_attr = Prop("@family")
    local_ptr = Prop("@localPtr", yes)
    tftp_root = Prop("tftp/@root")
    dhcp = Child("dhcp", Dhcp)

    @property
    def ip(self):
        return ipaddress.ip_address(self.address)

    @property
    def family(self):
        return "ipv6" if self.ip.version == 6 else "ipv4"

    @property
    def prefix(self):
        """The prefix length: prefix, else netmask, else the class's (libvirt's rule for IPv4
        without either), else 64 for IPv6."""
        if self.prefix_attr is not None:
            return self.prefix_attr
        if self.netmask:
            return ipaddress.ip_network(f"0.0.0.0/{self.netmask}").prefixlen
        if self.ip.version == 6:
            return 64
        first = int(self.address.split(".")[0])
        return 8 if first < 128 else 16 if first < 192 else 24

    @property
    def network(self):
        return ipaddress.ip_interface(f"{self.address}/{self.prefix}").network

    @property
    def has_dhcp(self):
        return self.dhcp is not None and bool(self.dhcp.ranges or self.dhcp.hosts)


class Route(XMLObject):
    family = Prop("@family")
    address = Prop("@address")
    netmask = Prop("@netmask")
    prefix_attr = Prop("@prefix", int)
    gateway = Prop("@gateway")
    metric = Prop("@metric", int)

    @property
    def prefix(self):
        if self.prefix_attr is not None:
            return self.prefix_attr
        if self.netmask:
            return ipaddress.ip_network(f"0.0.0.0/{self.netmask}").prefixlen
        return 128 if ":" in self.address else 32


class Forwarder(XMLObject):
    addr = Prop("@addr")
    domain = Prop("@domain")


class Txt(XMLObject):
    name = Prop("@name")
    value = Prop("@value")


class Hostname(XMLObject):
    @property
    def text(self):
        return (self.node.text or "").strip()


class DnsHost(XMLObject):
    ip = Prop("@ip")
    hostnames = Children("hostname", Hostname)


class Srv(XMLObject):
    service = Prop("@service")
    protocol = Prop("@protocol")
    domain = Prop("@domain")
    target = Prop("@target")
    port = Prop("@port", int)
    priority = Prop("@priority", int)
    weight = Prop("@weight", int)


class Dns(XMLObject):
    enable = Prop("@enable")
    forward_plain_names = Prop("@forwardPlainNames")
    forwarders = Children("forwarder", Forwarder)
    txts = Children("txt", Txt)
    hosts = Children("host", DnsHost)
    srvs = Children("srv", Srv)


class ForwardInterface(XMLObject):
    dev = Prop("@dev")


class Forward(XMLObject):
    mode_attr = Prop("@mode")
    dev = Prop("@dev")
    nat_start = Prop("nat/address/@start")
    nat_end = Prop("nat/address/@end")
    nat_port_start = Prop("nat/port/@start", int)
    nat_port_end = Prop("nat/port/@end", int)
    nat_ipv6 = Prop("nat/@ipv6", yes)
    interfaces = Children("interface", ForwardInterface)


class Bridge(XMLObject):
    name = Prop("@name")
    stp = Prop("@stp")
    delay = Prop("@delay", int)
    mac_table_manager = Prop("@macTableManager")
    zone = Prop("@zone")


class Network(XMLObject):
    tag = "network"
    # libvirt's order of <network>'s children (virNetworkDefFormatBuf); the canonical form uses it.
    CHILD_ORDER = ("name", "uuid", "title", "description", "metadata", "forward", "bridge", "mtu", "mac",
                   "domain", "dns", "bandwidth", "port", "ip", "route", f"{{{DNSMASQ_NS}}}options")

    name = Prop("name")
    uuid = Prop("uuid")
    ipv6 = Prop("@ipv6", yes)
    forward = Child("forward", Forward)
    bridge = Child("bridge", Bridge)
    mtu = Prop("mtu/@size", int)
    mac = Prop("mac/@address")
    domain_name = Prop("domain/@name")
    domain_local_only = Prop("domain/@localOnly", yes)
    dns = Child("dns", Dns)
    inbound = Child("bandwidth/inbound", Rates)
    outbound = Child("bandwidth/outbound", Rates)
    port_isolated = Prop("port/@isolated", yes)
    ips = Children("ip", IP)
    routes = Children("route", Route)

    @property
    def mode(self):
        """The forward mode: 'nat', 'route', 'open', 'bridge', or None (isolated)."""
        forward = self.forward
        if forward is None:
            return None
        return forward.mode_attr or "nat"

    @property
    def bridge_name(self):
        return self.bridge.name if self.bridge is not None else None

    @property
    def own_bridge(self):
        """True when net-start makes the bridge (every mode but 'bridge', which uses the host's)."""
        return self.mode in OWN_BRIDGE_MODES

    @property
    def dns_enabled(self):
        return self.dns is None or self.dns.enable != "no"

    def ips_of(self, family):
        return [ip for ip in self.ips if ip.family == family]

    @property
    def dnsmasq_options(self):
        return [node.get("value") for node in self.node.iterfind(f"{{{DNSMASQ_NS}}}options/{{{DNSMASQ_NS}}}option")]
