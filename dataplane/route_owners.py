"""Who owns which routes in the kernel: one route protocol number per owner.

Every route percale writes carries the number of the part of percale that owns it, and each owner
dumps, reconciles and deletes only routes carrying its own number. A number is the one tag the
kernel keeps, lets a dump filter on and checks on delete (kube-router and Calico's felix both
learned to tag their routes; felix's guessing by shape is what it regrets).

    number  owner                          routes
    201     dataplane.pod_network          /32 and /128 host routes to a pod's veth
    202     dataplane.fib                  routes learned over BGP, via a peer's next hop
    203     dataplane.blackholes           a blackhole for each of the node's own blocks
    204     vxlan.agent (dataplane.fib)    blocks routed through vxlan.percale, or directly
                                           when no BGP runs (CrossSubnet, same subnet)
    205     bgpd (dataplane.fib)           a /32 or /128 to a BGPPeer's peerIP via its
                                           reachableBy gateway (bgpd/peer_routes.py)

Tests import these numbers instead of writing them out.
"""

from __future__ import annotations

from enum import IntEnum


class RouteProtocol(IntEnum):
    POD = 201
    BGP = 202
    BLACKHOLE = 203
    VXLAN = 204
    PEER = 205
