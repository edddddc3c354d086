"""percale-node, the per-node agent: one asyncio process per node, assembled from the layers
below it (docs/architecture.md).

It registers the node (its BGP address, --ip), follows the datastore through its view
(datastore/cache.py), serves CNI requests for the thin plugins in cni-plugin/ with IPAM over that
view and pod wiring in its dataplane worker threads (dataplane/), and runs BGP (bgpd/agent.py) with its
status socket, NodeStatus record and health endpoints.

    main.py         the percale-node command: settings, the parts it runs, signals
    registration.py the node's own Node: --ip/--ip6 (given or autodetected as calico-node does), --as
    cni_server.py   the unix-socket server speaking cni-plugin/PROTOCOL.md: an answer to every request
    cni_types.py    CNI requests checked, results and errors with their codes (spec 1.1; pure)
    cni_handlers.py ADD, DEL, CHECK, STATUS and GC for the percale and percale-ipam plugins
    status.py       BGP status served: the socket `percalectl node status` reads, the NodeStatus record
    health.py       /livez, /readyz and /metrics
"""
