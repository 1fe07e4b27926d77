"""Which node pulls which configured source: rendezvous (highest random weight) hashing over
the live nodes. Every node computes the same owner from the same set of nodes; when a node
joins, only the sources that hash to it move; when one leaves, only its sources move."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(node: str, name: str) -> int:
    digest = hashlib.blake2b(f"{node}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(name: str, nodes: Iterable[str]) -> str:
    """The node ``name`` belongs to among ``nodes`` (not empty)."""
    return max(nodes, key=lambda node: (weight(node, name), node))
