"""percale-node, the per-node agent: one asyncio process per node.

Today it serves CNI requests (cni_server.py) for the thin plugins in cni-plugin/, doing IPAM and
netlink work in a warm process; the BGP speaker joins it later.

    main.py         the percale-node command: settings, task group, signals
    cni_server.py   the unix-socket server speaking cni-plugin/PROTOCOL.md
    cni_types.py    CNI network configuration, results and errors (spec 1.1)
    cni_handlers.py ADD, DEL, CHECK, STATUS and GC for the percale and percale-ipam plugins
    pod_network.py  the pod's kernel side: veth pair, addresses, routes, sysctls (pyroute2)
    status.py       BGP status: the socket `percalectl node status` reads, the NodeStatus record
"""
