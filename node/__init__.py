"""percale-node, the per-node agent: one asyncio process per node.

It registers the node (its BGP address, --ip), serves CNI requests for the thin plugins in
cni-plugin/ with IPAM in the agent and pod wiring in its dataplane workers (dataplane/), and runs BGP
(bgpd/) with its status socket, NodeStatus record and health endpoints.

    main.py         the percale-node command: settings, task group, signals
    registration.py the node's own Node: --ip/--ip6 (given or autodetected as calico-node does), --as
    cni_server.py   the unix-socket server speaking cni-plugin/PROTOCOL.md
    cni_types.py    CNI network configuration, results and errors (spec 1.1)
    cni_handlers.py ADD, DEL, CHECK, STATUS and GC for the percale and percale-ipam plugins
    status.py       BGP status: the socket `percalectl node status` reads, the NodeStatus record
    health.py       /livez, /readyz and /metrics
"""
