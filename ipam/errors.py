"""IPAM's exceptions. Messages are Calico's where Calico has one, so runbooks still match.

    IPAMError
     ├── NoPools              no enabled pool of the family selects the node      -> fix the pools
     ├── PoolsExhausted       no address left in the usable pools                  -> add a pool
     ├── StrictAffinityExhausted  own blocks full, strict affinity forbids borrowing
     ├── BlockLimitReached    the node owns its maximum number of blocks
     ├── AddressInUse         assign_ip: the address is taken
     ├── NotInPool            assign_ip/release: the address is in no pool or block
     └── TooManyConflicts     compare-and-swap lost too often                      -> retry later

Datastore errors other than Conflict (unavailable, ...) pass through unchanged.
"""

from __future__ import annotations


class IPAMError(Exception):
    """Base of IPAM's own failures."""


class NoPools(IPAMError):
    """No pool may serve the request: none usable by the node, a named pool that is not, or,
    for a request that names none, only Manual pools or pools whose namespaceSelector leaves
    its namespace out (the message says which)."""


class PoolsExhausted(IPAMError):
    def __init__(self, pools: list[str]):
        self.pools = pools
        super().__init__(f"No IPs available in pools: [{' '.join(pools)}]")


class StrictAffinityExhausted(IPAMError):
    def __init__(self) -> None:
        super().__init__("No more free affine blocks and strict affinity enabled")


class BlockLimitReached(IPAMError):
    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(
            f"Need to allocate an IPAM block but could not - limit of {limit} blocks reached for this node"
        )


class AddressInUse(IPAMError):
    pass


class NotInPool(IPAMError):
    pass


class TooManyConflicts(IPAMError):
    def __init__(self) -> None:
        super().__init__("Max retries hit - excessive concurrent IPAM requests")
