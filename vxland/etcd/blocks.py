"""Which address block a host tries to claim, and which addresses of it containers get (sans-IO).

A host holds one block per subnet.  It tries, in order: the block the store says it holds
(its own key, from before a restart), the blocks it held last (its hint key), then free
blocks in random order among the first `SPREAD` free ones -- hosts that start together
rarely try the same one, and when they do, the compare-and-swap lets one win and the other
tries its next.  One block per host and subnet, never a second: a host's containers then
sit in one prefix that names the host, and a block's size is the one number the operator
chooses for "containers per host" (a full block is a clear CNI error, not a quiet claim
of more of the fleet's space).
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any, Iterable

SPREAD = 100                      # free blocks chosen among at random (flannel's figure)


def candidates(subnet: Any, length: int, taken: set[Any], previous: Iterable[Any],
               rng: random.Random | None = None) -> list[Any]:
    """Blocks of `subnet` of prefix `length` to try, in order; none of them in `taken`."""
    rng = rng or random.Random()
    first = [b for b in previous if b.version == subnet.version and b.prefixlen == length
             and b.subnet_of(subnet) and b not in taken]
    free = []
    for block in subnet.subnets(new_prefix=length):
        if block not in taken and block not in first:
            free.append(block)
            if len(free) >= SPREAD:
                break
    rng.shuffle(free)
    return list(dict.fromkeys(first)) + free


def usable(block: Any, subnet: Any) -> tuple[str, str]:
    """The first and last address of `block` that a container may get: not the block's first
    (the subnet's network address, for the first block) nor its last (the broadcast address,
    for the last), and not the subnet's first host address, which host-local gives the
    network's gateway by default."""
    first = block.network_address + 1
    if first == subnet.network_address + 1:
        first += 1
    return str(first), str(block.broadcast_address - 1)


def parse(text: str) -> Any:
    """A block as a hint names it; ValueError unless it is a plain network (a scope id would make
    a second spelling of a block that no one has taken)."""
    if not isinstance(text, str) or "%" in text:
        raise ValueError(f"{text!r} is not a block")
    return ipaddress.ip_network(text)
