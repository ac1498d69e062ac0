"""MAC address rules in one place: syntax, normal form, unicast, generated guest MACs, host tap MACs."""

import re

MAC_RE = re.compile(r"[0-9A-Fa-f]{1,2}(:[0-9A-Fa-f]{1,2}){5}")
ZERO = "00:00:00:00:00:00"  # the all-zero MAC in normal form (is_zero tells it in any form)
# A valid MAC this long has two digits in every octet: the longest a valid one can be.
TWO_DIGIT_LENGTH = len(ZERO)
QEMU_OUI = "52:54:00"  # QEMU/KVM's prefix, as libvirt uses for generated MACs


def is_mac(text):
    return MAC_RE.fullmatch(text) is not None


def normal(mac):
    """Two lowercase hex digits per octet, as QEMU requires ('52:54:0:a:b:c' → '52:54:00:0a:0b:0c').
    MAC: a valid one (see is_mac)."""
    if len(mac) == TWO_DIGIT_LENGTH:
        # Two digits per octet already: only the case to fold. Told by the length, not by a
        # pattern: most MACs are written so, and a match costs ten times more.
        return mac.lower()
    return ":".join(f"{int(octet, 16):02x}" for octet in mac.split(":"))


def normalized(text):
    """TEXT in normal form if it is a MAC address, else None."""
    return normal(text) if is_mac(text) else None


def is_multicast(mac):
    return bool(int(mac.split(":", 1)[0], 16) & 1)


def is_zero(mac):
    """Whether MAC (valid, in any form) is the all-zero one: nothing but zeros between its colons."""
    return not mac.replace(":", "").strip("0")


def generated(seed, index):
    """A deterministic guest MAC under QEMU's prefix (same domain, same MACs: golden-testable)."""
    import hashlib  # only for an interface without a MAC (it costs start-up time otherwise)

    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return QEMU_OUI + "".join(f":{b:02x}" for b in digest[:3])


def unused(seed, position, used):
    """A generated MAC for the interface at POSITION that USED does not hold (libvirt's rule: a MAC
    is unique among a domain's interfaces; callers add more that must be avoided)."""
    new, attempt = generated(seed, position), 0
    while new in used:
        attempt += 1
        new = generated(seed, f"{position}.{attempt}")
    return new


def host_side(guest_mac):
    """A tap's own MAC: the guest's with the first octet FE (FA if the guest's already is FE),
    so the host never sees its own address and a bridge never adopts the tap's MAC."""
    first, rest = guest_mac.lower().split(":", 1)
    return ("fa:" if first == "fe" else "fe:") + rest
