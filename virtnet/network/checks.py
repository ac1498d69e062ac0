"""libvirt's semantic rules for a network (virNetworkDefParse and its helpers), one function per
rule, each raising XMLInputError with the element's line. Everything that later reaches dnsmasq's
configuration or an nftables rule is checked here first (addresses parsed, names restricted by
the grammar, no control characters anywhere), so that nothing a user writes can add a line or a
word there."""

import ipaddress
import re

from virtnet.conf import ifname
from virtnet.conf.mac import is_multicast, is_zero
from virtnet.conf.text import has_control, visible
from virtnet.errors import XMLInputError
from virtnet.network.model import OWN_BRIDGE_MODES

MIN_MTU, MAX_MTU = 68, 65535
_TFTP_ROOT = re.compile(r"/[A-Za-z0-9_./+-]*")


def _fail(obj, message):
    raise XMLInputError(message, line=obj.line)


def _address(obj, value, what, version=None):
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        _fail(obj, f"{what} '{value}' is not an IP address; accepted: e.g. 192.168.122.1 or 2001:db8::1")
    if version and address.version != version:
        _fail(obj, f"{what} '{value}' is not an IPv{version} address, as the <ip> it belongs to")
    return address


def check_text(network):
    """No control character in any attribute or text (a newline would start a dnsmasq option)."""
    for node in network.node.iter():
        if not isinstance(node.tag, str):
            continue
        for key, value in node.attrib.items():
            if has_control(value):
                raise XMLInputError(f"<{node.tag} {key}='{visible(value)}'>: control characters are not "
                                    "accepted in any value", line=node.sourceline)
        if node.text and node.text.strip() and has_control(node.text.strip()):
            raise XMLInputError(f"<{node.tag}>: '{visible(node.text.strip())}' holds a control character, "
                                "which no value may hold", line=node.sourceline)


def check_name(network):
    from virtnet.store import check_name as store_check
    from virtnet.errors import StoreError

    try:
        store_check(network.name, "network name")
    except StoreError as e:
        raise XMLInputError(f"<name>: {e.message}", line=network.line_of("name")) from None


def check_mac(network):
    mac = network.mac
    if mac and (is_multicast(mac) or is_zero(mac)):
        _fail(network, f"<mac address='{mac}'>: a bridge needs a unicast, non-zero MAC address")


def check_mtu(network):
    if network.mtu is not None and not MIN_MTU <= network.mtu <= MAX_MTU:
        raise XMLInputError(f"<mtu size='{network.mtu}'>: accepted: {MIN_MTU} to {MAX_MTU}",
                            line=network.line_of("mtu"))


def check_forward(network):
    forward, mode = network.forward, network.mode
    if forward is None:
        return
    devs = [i.dev for i in forward.interfaces]
    if forward.dev and devs and forward.dev != devs[0]:
        _fail(forward, f"<forward dev='{forward.dev}'> differs from its first <interface dev='{devs[0]}'>")
    if mode == "open" and (forward.dev or devs):
        _fail(forward, "<forward mode='open'> takes no dev: an open network does not choose where traffic leaves")
    if mode in ("nat", "route", "open") and len(devs) > 1:
        _fail(forward, f"<forward mode='{mode}'> takes at most one <interface>")
    if mode == "bridge" and devs:
        _fail(forward, "<forward mode='bridge'> with <interface dev> (a pool of host devices for macvtap) is not "
                       "supported; accepted: <forward mode='bridge'/> with <bridge name='BRIDGE'/>")
    if mode != "nat" and forward.node.find("nat") is not None:
        _fail(forward, f"<nat> belongs to <forward mode='nat'>, not mode='{mode}'")
    if forward.nat_start:
        start = _address(forward, forward.nat_start, "<nat><address start>", 4)
        end = _address(forward, forward.nat_end, "<nat><address end>", 4)
        if start > end:
            _fail(forward, f"<nat><address>: start {start} is after end {end}")
    if forward.nat_port_start is not None and forward.nat_port_start > forward.nat_port_end:
        _fail(forward, f"<nat><port>: start {forward.nat_port_start} is after end {forward.nat_port_end}")


def check_bridge(network):
    bridge = network.bridge
    if network.mode == "bridge":
        if bridge is None or not bridge.name:
            _fail(network, "<forward mode='bridge'> needs <bridge name='BRIDGE'/>: the host bridge guests join")
        for what in ("ip", "dns", "domain", "mac", "route"):
            if network.node.find(what) is not None:
                _fail(network, f"<forward mode='bridge'> uses a bridge of the host's: <{what}> cannot be "
                               "applied to it")
    if bridge is not None and bridge.name:
        problem = ifname.problem(bridge.name)
        if problem or "%" in bridge.name:
            _fail(bridge, f"<bridge name='{bridge.name}'> {problem or 'may not hold %'}")
        if network.forward is not None and network.forward.dev == bridge.name:
            _fail(bridge, f"<bridge name='{bridge.name}'> is also the <forward dev>: traffic cannot leave "
                          "through the network's own bridge")


def _check_range(ip, rng):
    version = ip.ip.version
    start = _address(rng, rng.start, "<range start>", version)
    end = _address(rng, rng.end, "<range end>", version)
    for value in (start, end):
        if value not in ip.network:
            _fail(rng, f"<range start='{rng.start}' end='{rng.end}'>: {value} is outside the network "
                       f"{ip.network} of <ip address='{ip.address}'>")
    if start > end:
        _fail(rng, f"<range start='{rng.start}' end='{rng.end}'>: the start is after the end")


def _check_host(ip, host):
    version = ip.ip.version
    if host.ip is not None:
        address = _address(host, host.ip, "<host ip>", version)
        if address not in ip.network:
            _fail(host, f"<host ip='{host.ip}'> is outside the network {ip.network}")
    if version == 4:
        if host.id:
            _fail(host, "<host id> (a DHCPv6 DUID) belongs to an IPv6 <ip>; use mac= for IPv4")
        if not host.mac and not host.name:
            _fail(host, "<host> of an IPv4 <dhcp> needs mac= or name=")
        if host.ip is None:
            _fail(host, "<host> of an IPv4 <dhcp> needs ip=")
        if host.mac and (is_multicast(host.mac) or is_zero(host.mac)):
            _fail(host, f"<host mac='{host.mac}'>: a guest needs a unicast, non-zero MAC address")
    else:
        if host.mac:
            _fail(host, "<host mac> belongs to an IPv4 <ip>; an IPv6 host is named by id= (its DUID) or name=")
        if not host.id and not host.name:
            _fail(host, "<host> of an IPv6 <dhcp> needs id= (a DUID) or name=")


def check_ips(network):
    dhcp_families = set()
    for ip in network.ips:
        address = _address(ip, ip.address, "<ip address>")
        family = "ipv6" if address.version == 6 else "ipv4"
        if ip.family_attr and ip.family_attr != family:
            _fail(ip, f"<ip address='{ip.address}'> is not of family '{ip.family_attr}'")
        if ip.netmask and ip.prefix_attr is not None:
            _fail(ip, "<ip> takes netmask= or prefix=, not both")
        if ip.netmask:
            if address.version == 6:
                _fail(ip, "<ip netmask> is for IPv4; an IPv6 <ip> takes prefix=")
            try:
                ipaddress.ip_network(f"0.0.0.0/{ip.netmask}")
            except ValueError:
                _fail(ip, f"<ip netmask='{ip.netmask}'> is not a netmask; accepted: e.g. 255.255.255.0")
        limit = 128 if address.version == 6 else 32
        if ip.prefix_attr is not None and ip.prefix_attr > limit:
            _fail(ip, f"<ip prefix='{ip.prefix_attr}'>: accepted: 0 to {limit}")
        if ip.tftp_root is not None and not _TFTP_ROOT.fullmatch(ip.tftp_root):
            _fail(ip, f"<tftp root='{ip.tftp_root}'>: accepted: an absolute path of letters, digits and "
                      "'/', '.', '_', '+', '-' (dnsmasq reads a comma as the start of another parameter)")
        if ip.dhcp is None:
            continue
        if ip.has_dhcp:
            if family in dhcp_families:
                _fail(ip, f"<dhcp> is supported on one {family} <ip> of a network only")
            dhcp_families.add(family)
        for rng in ip.dhcp.ranges:
            _check_range(ip, rng)
        for host in ip.dhcp.hosts:
            _check_host(ip, host)
        if ip.dhcp.bootp is not None and address.version == 6:
            _fail(ip.dhcp.bootp, "<bootp> is for IPv4 DHCP")


def check_routes(network):
    for route in network.routes:
        address = _address(route, route.address, "<route address>")
        gateway = _address(route, route.gateway, "<route gateway>", address.version)
        if route.family and route.family != ("ipv6" if address.version == 6 else "ipv4"):
            _fail(route, f"<route address='{route.address}'> is not of family '{route.family}'")
        if not any(gateway in ip.network for ip in network.ips):
            _fail(route, f"<route gateway='{route.gateway}'> is not on any of the network's <ip> networks")


def check_dns(network):
    dns = network.dns
    if dns is None:
        return
    if dns.enable == "no" and (dns.forwarders or dns.txts or dns.hosts or dns.srvs
                               or dns.forward_plain_names is not None):
        _fail(dns, "<dns enable='no'> takes no forwarders, hosts, txt or srv records: DNS is off")
    for fwd in dns.forwarders:
        if fwd.addr is None and fwd.domain is None:
            _fail(fwd, "<forwarder> needs addr= or domain=")
        if fwd.addr is not None:
            _address(fwd, fwd.addr, "<forwarder addr>")
    for host in dns.hosts:
        _address(host, host.ip, "<dns><host ip>")
    for txt in dns.txts:
        if txt.value is not None and ("\\" in txt.value or '"' in txt.value):
            _fail(txt, "<txt value>: a backslash or a double quote is not accepted (dnsmasq would read them as "
                       "an escape or a quotation)")


def check_port(network):
    if network.port_isolated and network.mode not in OWN_BRIDGE_MODES + ("bridge",):
        _fail(network, "<port isolated> needs a bridge")


def check_dnsmasq_options(network):
    for value in network.dnsmasq_options:
        if value is None or has_control(value):
            _fail(network, "<dnsmasq:option value>: control characters are not accepted")


RULES = (check_text, check_name, check_mac, check_mtu, check_forward, check_bridge, check_ips, check_routes,
         check_dns, check_port, check_dnsmasq_options)


def check_network(network):
    for rule in RULES:
        rule(network)
