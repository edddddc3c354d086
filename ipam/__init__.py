"""percale's IPAM, installed as `percale.ipam`: IP pools cut into blocks with node affinity.

Pure logic over the datastore contract (`percale.datastore.contract.Datastore`): no backend is
imported here, and every write is a compare-and-swap retried only on conflict.

    blocks.py     block arithmetic on IPAMBlock values (assign, release, attributes)
    pools.py      which pools a node may use, and the host-seeded order of candidate blocks
    allocator.py  IPAM: auto-assign, assign a given address, release, affinities, pool deletion
    usage.py      utilisation per pool and block, borrowed addresses (percalectl ipam show)
    check.py      the leak check and its JSON report (percalectl ipam check)
    gc.py         releasing confirmed leaks and empty blocks, for the agent to run
    node_removal.py  what goes with a deleted Node (percalectl delete node): its endpoints'
                  and tunnel addresses, endpoints, affinities, BGPPeers, node.<name> config
    errors.py     the IPAM exception tree
"""
