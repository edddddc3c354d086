"""Removing a node: its Node, and every piece of state that hangs off it, as Calico's node
deletion (libcalico-go clientv3 node.go, Delete) takes them down. `percalectl delete node` calls
it (ctl/crud.py).

Deleting the Node alone leaked for good: its WorkloadEndpoints stayed, so their addresses looked
in use and neither the garbage collector nor `ipam check` freed them; its block affinities kept
its blocks from every other node; its BGPPeers and BGPConfiguration stayed configured.

Order, Calico's:
  1. the addresses the node's WorkloadEndpoints list, and its tunnel addresses, are released;
  2. those WorkloadEndpoints are deleted;
  3. its block affinities are released: an empty block goes, one still holding addresses (other
     nodes' borrowed ones) loses its affinity and goes with its last address;
  4. the BGPPeers whose spec.node is the node, and its BGPConfiguration node.<name>, go;
  5. the Node, last. Until then a failure leaves it standing, and running the delete again goes on
     from where it stopped: every step works from what is left, and what is gone is no error.
     A Node that is gone already (deleted by a percalectl that left all this behind) has its
     state removed all the same, and is then reported missing, as calicoctl reports it.
Calico's FelixConfiguration node.<name> and HostEndpoints have no kind in percale.

Nothing of another node's is touched:
  * endpoints are the node's by spec.node, not by name: node `a`'s endpoint names are a prefix of
    node `a-b`'s (Calico filters the same way);
  * an address an endpoint lists is released only while its allocation is still the node's
    (its `node` attribute), at the sequence number read: an endpoint left behind may list an
    address freed since and handed to another node's pod;
  * tunnel addresses go by the node's own handles (vxlan-tunnel-addr-<node>) as well as by the
    Node's fields, so they are found after the Node is gone too.

On the Kubernetes datastore a Node is the Kubernetes Node, which the datastore does not delete
(`kubectl delete node` does, and percale-controllers then frees what its pods held), and the
endpoints are the Pods. Its deletion is asked for first, so that its refusal leaves the node's
pods, addresses and peers exactly as they are. Calico clears and releases the pods' addresses
first and fails on the Node afterwards: running pods lose their addresses to new ones. For a
Kubernetes Node that is gone, the rest is removed, but the Pods are neither changed nor deleted
and their addresses are left to percale-controllers, which frees them once the Pods are gone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from percale.api import BGPConfiguration, Node
from percale.api.bgp import NODE_CONFIG_PREFIX
from percale.api.ipam import block_name
from percale.datastore import Conflict, Datastore, Key, KVPair, NotFound
from percale.datastore.contract import reads_pod_annotations
from percale.ipam.allocator import IPAM, tunnel_handle


@dataclass
class NodeRemoval:
    """What removing a node's state has done so far: filled in step by step, so that a failure
    half-way still says what was done before it."""

    node: str
    released: list[str] = field(default_factory=list)  # addresses freed
    # Listed by the node's endpoints or Node, but allocated to another node now: left alone.
    others: list[str] = field(default_factory=list)
    endpoints: int = 0  # WorkloadEndpoints deleted
    # Kubernetes: endpoints that are Pods, left as they are (their addresses too).
    pods_left: int = 0
    affinities: int = 0  # block affinities released
    # Of their blocks, those still holding addresses (borrowed by other nodes, or leaked):
    # now unaffine, they go with their last address.
    kept_blocks: int = 0
    peers: list[str] = field(default_factory=list)  # BGPPeers deleted
    configuration: bool = False  # BGPConfiguration node.<name> deleted

    @property
    def anything_done(self) -> bool:
        return bool(self.released or self.endpoints or self.affinities or self.peers
                    or self.configuration)

    def summary(self) -> str:
        """One line saying what was released and deleted with the node."""
        affinities = _count(self.affinities, "block affinity", "block affinities")
        if self.kept_blocks:
            affinities += (f" ({_count(self.kept_blocks, 'block', 'blocks')} kept without "
                           "affinity: still holding addresses)")
        deleted = [_count(self.endpoints, "WorkloadEndpoint", "WorkloadEndpoints"),
                   _count(len(self.peers), "BGPPeer", "BGPPeers")]
        if self.configuration:
            deleted.append(f"BGPConfiguration {NODE_CONFIG_PREFIX}{self.node}")
        line = (f"Node {self.node}: released "
                f"{_count(len(self.released), 'IP address', 'IP addresses')} and {affinities}; "
                f"deleted {', '.join(deleted[:-1])} and {deleted[-1]}")
        if self.others:
            line += (f"; left {_count(len(self.others), 'address', 'addresses')} allocated to "
                     f"other nodes now ({', '.join(self.others)})")
        if self.pods_left:
            line += (f"; left the addresses of {_count(self.pods_left, 'Pod', 'Pods')} to "
                     "percale-controllers")
        return line


def _count(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


async def remove_node(store: Datastore, name: str, *, revision: str | None = None,
                      removal: NodeRemoval | None = None) -> KVPair:
    """Delete Node `name` with its endpoints, addresses, affinities, BGPPeers and BGPConfiguration
    (see the module's docstring), and return the Node as it was. With a revision, the Node must
    still be at it, or Conflict before anything is touched. NotFound when there is no Node, after
    its state is removed. `removal` is filled in as the work goes."""
    removal = removal if removal is not None else NodeRemoval(name)
    key = Key("Node", name)
    try:
        node: KVPair | None = await store.get(key)
    except NotFound:
        node = None
    if node is not None and revision is not None and node.revision != revision:
        raise Conflict(key, node)
    on_pods = reads_pod_annotations(store) is not None
    deleted: KVPair | None = None
    if on_pods and node is not None:
        # The Kubernetes datastore refuses: its answer stands before anything else is touched.
        deleted = await store.delete(key, revision=node.revision)
    ipam = IPAM(store)
    endpoints = [kv for kv in (await store.list("WorkloadEndpoint")).items
                 if kv.value.spec.node == name]
    if on_pods:
        removal.pods_left = len(endpoints)
        endpoints = []
    addresses = [str(ipaddress.ip_interface(str(n)).ip)
                 for kv in endpoints for n in kv.value.spec.ip_networks]
    if node is not None:
        addresses += _tunnel_addresses(node.value)
    await _release_own(ipam, name, list(dict.fromkeys(addresses)), removal)
    for version in (4, 6):
        removal.released += await ipam.release_by_handle(tunnel_handle(name, version))
    for kv in endpoints:
        if await _delete_if_there(store, kv.key):
            removal.endpoints += 1
    await _release_affinities(ipam, name, removal)
    for kv in (await store.list("BGPPeer")).items:
        if kv.value.spec.node == name:
            if await _delete_if_there(store, kv.key):
                removal.peers.append(kv.key.name)
    configuration = Key(BGPConfiguration.info.kind, f"{NODE_CONFIG_PREFIX}{name}")
    removal.configuration = await _delete_if_there(store, configuration)
    if deleted is not None:
        return deleted
    if node is None or on_pods:
        raise NotFound(key)
    return await store.delete(key, revision=node.revision)


def _tunnel_addresses(node: Node) -> list[str]:
    """The tunnel addresses the Node holds (Calico's list: IP-in-IP and VXLAN; percale's IPv6
    VXLAN one too)."""
    found = [node.spec.ipv4_vxlan_tunnel_addr, node.spec.ipv6_vxlan_tunnel_addr]
    if node.spec.bgp is not None:
        found.append(node.spec.bgp.ipv4_ipip_tunnel_addr)
    return [str(a) for a in found if a is not None]


async def _release_own(ipam: IPAM, name: str, addresses: list[str],
                       removal: NodeRemoval) -> None:
    """Release those of `addresses` still allocated to node `name` (an allocation that names no
    node is taken to be the node's, as Calico releases every one), each at the sequence number
    read, so that one handed to another node between the read and the write stays with it."""
    own: list[str] = []
    sequence_numbers: dict[str, int] = {}
    for address in addresses:
        allocation = await ipam.get_allocation(address)
        if allocation is None:
            continue  # free already: released by an earlier run, or never allocated
        if allocation.attributes.get("node", name) != name:
            removal.others.append(address)
            continue
        own.append(address)
        if allocation.sequence_number is not None:
            sequence_numbers[address] = allocation.sequence_number
    if own:
        result = await ipam.release_ips(own, sequence_numbers=sequence_numbers)
        removal.released += result.released
        removal.others += result.stale


async def _release_affinities(ipam: IPAM, name: str, removal: NodeRemoval) -> None:
    cidrs = [kv.value.spec.cidr for kv in
             (await ipam.store.list("BlockAffinity", node=name)).items]
    await ipam.release_host_affinities(name)
    removal.affinities += len(cidrs)
    for cidr in cidrs:
        try:
            await ipam.store.get(Key("IPAMBlock", block_name(cidr)))
        except NotFound:
            continue  # empty, so deleted with its affinity
        removal.kept_blocks += 1


async def _delete_if_there(store: Datastore, key: Key) -> bool:
    """Delete `key`; False when it was gone already (a run before this one deleted it)."""
    try:
        await store.delete(key)
    except NotFound:
        return False
    return True
