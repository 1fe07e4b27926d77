"""Which hosts a pull may reach: allow-list entries matched on names and resolved addresses.

An entry is a host name (``cam1.lan``, ``*.cams.example.com``: ``*`` stands for whole labels),
an address, a network (``10.0.0.0/24``) or ``"*"``. Addresses that reach this machine or its
link (loopback, link-local such as 169.254.169.254, unspecified, multicast, broadcast, reserved)
pass only when an entry lists them by address or network: ``"*"`` and names never open them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Reaches this host or its link, whatever the destination port: never implied by "*" or a name.
_SPECIAL_V4 = [ipaddress.ip_network(n) for n in ("0.0.0.0/8", "255.255.255.255/32")]


def address_of(text: str) -> Address | None:
    """``text`` as an address (IPv4-mapped IPv6 as the IPv4 it is), or None for a name."""
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_special(addr: Address) -> bool:
    """Loopback, link-local, unspecified, multicast, broadcast or reserved."""
    if addr.is_loopback or addr.is_link_local or addr.is_unspecified:
        return True
    if addr.is_multicast or addr.is_reserved:
        return True
    return isinstance(addr, ipaddress.IPv4Address) and any(addr in n for n in _SPECIAL_V4)


def name_matches(pattern: str, host: str) -> bool:
    """Does host name ``host`` match ``pattern``, label by label? A leading ``*`` stands for
    one or more labels (``*.example.com`` matches ``a.example.com`` and ``a.b.example.com``,
    not ``example.com`` or ``badexample.com``); any other ``*`` for exactly one label
    (``10.0.0.*`` matches ``10.0.0.7``, not ``10.0.0.evil.example``)."""
    want = pattern.strip().lower().rstrip(".").split(".")
    have = host.strip().lower().rstrip(".").split(".")
    if not all(want) or not all(have):
        return False
    if want[0] == "*" and len(want) > 1:
        tail = want[1:]
        return len(have) > len(tail) and _labels_match(tail, have[-len(tail) :])
    return len(want) == len(have) and _labels_match(want, have)


def _labels_match(want: list[str], have: list[str]) -> bool:
    return all(w == "*" or w == h for w, h in zip(want, have, strict=True))


class HostAllowList:
    """Parsed allow-list entries; ``setting`` is what refusals name."""

    def __init__(self, entries: Iterable[str], setting: str) -> None:
        self.setting = setting
        self.any = False
        self.names: list[str] = []
        self.networks: list[Network] = []
        for entry in entries:
            entry = entry.strip()
            if entry == "*":
                self.any = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.names.append(entry)

    def __bool__(self) -> bool:
        return self.any or bool(self.names or self.networks)

    def listed(self, addr: Address) -> bool:
        """Is ``addr`` inside a network or address entry?"""
        return any(addr.version == n.version and addr in n for n in self.networks)

    def host_may_be_tried(self, host: str) -> bool:
        """Could ``host`` be allowed at all (before resolving it)? A name nothing lists is
        refused without a DNS look-up."""
        if self.any or any(name_matches(p, host) for p in self.names):  # "10.0.0.*" too
            return True
        addr = address_of(host)
        return self.listed(addr) if addr is not None else bool(self.networks)

    def allows(self, host: str, addr: Address) -> bool:
        """May a connection to ``addr``, which ``host`` resolved to, be made?"""
        if self.listed(addr):
            return True
        if is_special(addr):
            return False
        return self.any or any(name_matches(p, host) for p in self.names)


def resolve(host: str, port: int | None) -> list[Address]:
    """Every address ``host`` resolves to (blocking: run it in an executor), in the resolver's
    order; an address literal is itself."""
    addr = address_of(host)
    if addr is not None:
        return [addr]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[Address] = []
    for info in infos:
        found = address_of(str(info[4][0]))
        if found is not None and found not in out:
            out.append(found)
    return out
