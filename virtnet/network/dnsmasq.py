"""dnsmasq for a network: its configuration file, DHCP hosts file and DNS hosts file, written from
the model as libvirt's network driver writes them (networkDnsmasqConfContents), and its command
line. Every value placed here was checked by virtnet.network.checks (addresses parsed, names
restricted to DNS characters, no control characters), so no value can start a new option."""

import ipaddress
import os

from virtnet.errors import XMLInputError

DNSMASQ_PATHS = ("/usr/sbin/dnsmasq", "/sbin/dnsmasq", "/usr/local/sbin/dnsmasq")


def _dhcp_ips(network):
    """(ipv4 <ip> with DHCP, ipv6 <ip> with DHCP): the first of each family (checks allow one)."""
    v4 = next((ip for ip in network.ips_of("ipv4") if ip.has_dhcp), None)
    v6 = next((ip for ip in network.ips_of("ipv6") if ip.has_dhcp), None)
    return v4, v6


def needs_dnsmasq(network):
    """libvirt starts dnsmasq for DNS on any network with an address, and for DHCP or TFTP."""
    return network.own_bridge and bool(network.ips)


def _range_size(ip, start, end):
    """How many leases a range holds: its addresses, but the bridge's own (libvirt's count)."""
    low, high = int(ipaddress.ip_address(start)), int(ipaddress.ip_address(end))
    return high - low + 1 - (1 if low <= int(ip.ip) <= high else 0)


def _ptr_domain(ip):
    """The reverse zone of an <ip localPtr='yes'> ('122.168.192.in-addr.arpa')."""
    step = 8 if ip.ip.version == 4 else 4
    total = 32 if ip.ip.version == 4 else 128
    if ip.prefix % step:
        raise XMLInputError(f"<ip address='{ip.address}' localPtr='yes'>: a PTR domain needs a prefix that is a "
                            f"multiple of {step}, not {ip.prefix}", line=ip.line)
    labels = ip.network.network_address.reverse_pointer.split(".")
    return ".".join(labels[(total - ip.prefix) // step:])


def _srv(srv):
    line = f"srv-host=_{srv.service}._{srv.protocol}"
    if srv.domain:
        line += f".{srv.domain}"
    if srv.target and srv.target != ".":
        line += f",{srv.target}"
        port, priority, weight = srv.port or 0, srv.priority or 0, srv.weight or 0
        if port or priority or weight:
            line += f",{port or 1}"
        if priority or weight:
            line += f",{priority}"
        if weight:
            line += f",{weight}"
    return line


def _dhcp(ip, out):
    """The dhcp-range lines of one <ip>; returns how many leases its ranges hold."""
    leases = 0
    for rng in ip.dhcp.ranges:
        if ip.ip.version == 6:
            line = f"dhcp-range={rng.start},{rng.end},{ip.prefix}"
        else:
            line = f"dhcp-range={rng.start},{rng.end},{ip.network.netmask}"
        if rng.lease is not None:
            line += f",{rng.lease.dnsmasq}"
        out.append(line)
        leases += _range_size(ip, rng.start, rng.end)
    if not ip.dhcp.ranges and ip.dhcp.hosts:
        out.append(f"dhcp-range={ip.address},static" + (f",{ip.prefix}" if ip.ip.version == 6 else ""))
    if ip.ip.version == 4:
        out += ["dhcp-no-override", "dhcp-authoritative"]
        bootp = ip.dhcp.bootp
        if bootp is not None:
            out.append(f"dhcp-boot={bootp.file}" + (f",,{bootp.server}" if bootp.server else ""))
    return leases


def config(network, paths):
    """The text of dnsmasq's configuration for NETWORK; PATHS names its hosts files (NetworkPaths)."""
    if network.dnsmasq_options:
        raise XMLInputError("<dnsmasq:options> would be passed to dnsmasq unchecked, which virtnet does not do; "
                            "remove them (accepted: what the network XML itself says)",
                            line=network.node.find("{http://libvirt.org/schemas/network/dnsmasq/1.0}options").sourceline)
    dns = network.dns
    want_dns = network.dns_enabled
    out = [f"## dnsmasq configuration of virtnet network '{network.name}' (written by net-start; changes are lost)",
           "strict-order"]
    if not want_dns:
        out.append("port=0")
    if want_dns and dns is not None and dns.forwarders:
        no_resolv = False
        for fwd in dns.forwarders:
            prefix = f"/{fwd.domain}/" if fwd.domain else ""
            out.append(f"server={prefix}{fwd.addr if fwd.addr else '#'}")
            no_resolv = no_resolv or (fwd.addr is not None and not fwd.domain)
        if no_resolv:
            out.append("no-resolv")
    if network.domain_name:
        if network.domain_local_only:
            out.append(f"local=/{network.domain_name}/")
        out += [f"domain={network.domain_name}", "expand-hosts"]
    if want_dns:
        out += [f"local=/{_ptr_domain(ip)}/" for ip in network.ips if ip.local_ptr]
    if want_dns and dns is not None and dns.forward_plain_names == "no":
        out += ["domain-needed", "local=//"]
    out += ["except-interface=lo", "bind-dynamic", f"interface={network.bridge_name}"]
    if network.mode is None:  # isolated: no default route, no forwarding of queries, no RA route
        out += ["dhcp-option=3", "no-resolv", "ra-param=*,0,0"]
    if want_dns and dns is not None:
        out += [f"txt-record={txt.name},{txt.value}" for txt in dns.txts]
        out += [_srv(srv) for srv in dns.srvs]
    tftp = False
    for ip in network.ips_of("ipv4"):
        if ip.tftp_root:
            if not tftp:
                out.append("enable-tftp")
                tftp = True
            out.append(f"tftp-root={ip.tftp_root}")
    v4, v6 = _dhcp_ips(network)
    leases = sum(_dhcp(ip, out) for ip in (v4, v6) if ip is not None)
    if leases:
        out.append(f"dhcp-lease-max={leases}")
    if v4 or v6:
        out.append(f"dhcp-hostsfile={paths.hostsfile}")
    if want_dns:
        out.append(f"addn-hosts={paths.addnhosts}")
    if network.mtu:
        out.append(f"dhcp-option=option:mtu,{network.mtu}")
    if v6:
        out.append("enable-ra")
    else:
        out += [f"dhcp-range={ip.address},ra-only" for ip in network.ips_of("ipv6")]
    return "\n".join(out) + "\n"


def hostsfile(network):
    """dnsmasq's dhcp-hostsfile: one line per <dhcp><host>, IPv4 then IPv6."""
    lines = []
    for ip in _dhcp_ips(network):
        if ip is None:
            continue
        for host in ip.dhcp.hosts:
            if ip.ip.version == 4:
                parts = [host.mac, host.ip] + ([host.name] if host.name else []) if host.mac else [host.name, host.ip]
            else:
                parts = ([f"id:{host.id}"] if host.id else []) + ([host.name] if host.name else []) + [f"[{host.ip}]"]
            if host.lease is not None:
                parts.append(host.lease.dnsmasq)
            lines.append(",".join(parts))
    return "".join(line + "\n" for line in lines)


def addnhosts(network):
    """dnsmasq's addn-hosts: one line per <dns><host>, its address and names."""
    dns = network.dns
    if dns is None:
        return ""
    return "".join(f"{host.ip}\t" + "\t".join(h.text for h in host.hostnames) + "\n" for host in dns.hosts)


def find_binary():
    for path in DNSMASQ_PATHS:
        if os.access(path, os.X_OK):
            return path
    return None


def command(binary, paths):
    """dnsmasq's command line: the configuration, and the pid and lease files in the network's
    runtime directory (dnsmasq keeps its own lease file: no helper script)."""
    return [binary, f"--conf-file={paths.conf}", f"--pid-file={paths.pid}", f"--dhcp-leasefile={paths.leases}",
            # As root it would drop to user nobody, who cannot read the hosts files or write the lease
            # file in virtnet's 0700 runtime directory.
            "--user=root", "--group=root"]
