"""percale's dataplane: everything that writes the kernel, each class of state with one owner.

    netlink.py       rtnetlink packed by hand: requests, batches, dumps the kernel filters
    route_owners.py  the route protocol number of each owner (pods 201, BGP 202, blackholes 203)
    pod_network.py   a pod's veth pair, addresses and routes (run in the workers)
    workers.py       the agent's dataplane worker processes, called with typed functions
    fib.py           the BGP-learned routes: a desired-state map, batched, reconciled
    blackholes.py    a blackhole for each of the node's own blocks
    host.py          the node's addresses, MTU and forwarding, read and set at start

Nothing here decides anything: the BGP side (bgpd/) and the CNI handlers (node/) say what the
kernel should hold, and these modules make it so.
"""
