"""percale-node's policy side: the view's policies, profiles and endpoints in, this node's
`inet percale` table out (policy/compile.py decides, policy/nft.py writes).

Every change to a NetworkPolicy, GlobalNetworkPolicy, Profile or WorkloadEndpoint marks the
table due; the changes that arrive while a ruleset is compiled and written are taken together in
the next (so a burst of changes is few transactions), and the whole ruleset is compiled again and
the difference applied. An endpoint is converted for the compiler once per revision, and its
chains are built again only when it, its profile or a policy changed (RulesetCompiler). The
table is checked against the kernel every `reconcile_seconds` (--policy-reconcile-seconds, 30
by default) and written whole when it drifted. The CNI ADD announces its endpoint before
writing it (`endpoint_written`), and waits (`wait_programmed`) until the new pod's interface is
in the table: until then the table's dispatch drops everything to or
from an unknown pcl* interface, so a pod is never reachable before its policy holds.

Nodes and IPPools, when the view follows them (percale-node's does, for its other parts), give
the table its guard of the VXLAN port (compile.vxlan_guard): while a pool of a family has VXLAN
in use, VXLAN to the node is taken only from the Nodes' addresses of that family, the ones the
VXLAN side sends from and points its FDB entries at (vxlan/plan.py's node_interface). A Node
that comes, goes or changes its address changes that set, and the table's set with it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time

from percale.api import Profile, WorkloadEndpoint
from percale.api.policy import NAMESPACE_PROFILE_PREFIX
# Aliased: namespace_labels is the name of the per-namespace map in this module.
from percale.api.policy import namespace_labels as labels_of_namespace
from percale.datastore import Key, KVPair
from percale.datastore.cache import Cache, Change
from percale.policy.compile import NamedPort, PolicyEndpoint, Ruleset, RulesetCompiler
from percale.policy.nft import NftError, PolicyTable
from percale.vxlan.plan import node_interface, vxlan_pools

log = logging.getLogger("percale.node.policy")

POLICY_KINDS = ("WorkloadEndpoint", "NetworkPolicy", "GlobalNetworkPolicy", "Profile")
RECONCILE_SECONDS = 30.0
RETRY_SECONDS = 1.0
# The revision of an endpoint the CNI side announced before its write came back: its chains are
# compiled while the datastore stores it (node/cni_handlers.py).
NOT_STORED = ""
# How long a stored endpoint this agent wrote outranks the view while the watch has not brought
# that revision back. The watch normally does within milliseconds; a view that lists again
# after compaction may skip the revision (it jumps to a later one, a relabel for instance), and
# then the view is current and must win.
TRUST_WRITTEN_SECONDS = 10.0


def policy_endpoint(endpoint: WorkloadEndpoint, node: str,
                    namespace_labels: dict[str, dict[str, str]]) -> PolicyEndpoint:
    """The endpoint as the compiler sees it; its selector labels add Calico's to the pod's
    (PolicyEndpoint.selector_labels), from its namespace, orchestrator and service account."""
    namespace = endpoint.metadata.namespace or "default"
    return PolicyEndpoint(
        key=f"{namespace}/{endpoint.spec.workload_name}",
        namespace=namespace,
        interface=endpoint.spec.interface_name if endpoint.spec.node == node else None,
        addresses=tuple(str(ipaddress.ip_network(n).network_address) for n in endpoint.spec.ip_networks),
        labels=dict(endpoint.metadata.labels),
        namespace_labels=namespace_labels.get(namespace, labels_of_namespace(namespace, None)),
        ports=tuple(NamedPort(p.name, p.protocol, p.port) for p in endpoint.spec.ports if p.name),
        orchestrator=endpoint.spec.orchestrator,
        service_account=endpoint.spec.service_account_name)


class PolicyAgent:
    def __init__(self, cache: Cache, node: str, table: PolicyTable | None = None,
                 reconcile_seconds: float = RECONCILE_SECONDS,
                 trust_written_seconds: float = TRUST_WRITTEN_SECONDS):
        self.cache, self.node = cache, node
        self.reconcile_seconds = reconcile_seconds
        self.trust_written_seconds = trust_written_seconds
        self.table = table or PolicyTable()
        self._due = asyncio.Event()
        self._programmed: set[str] = set()
        # Endpoints this agent's CNI side just wrote, until the watch brings them: a pod's chains
        # need not wait for the round trip through the datastore.
        self._written: dict[Key, KVPair] = {}
        self._written_at: dict[Key, float] = {}  # when each stored one was handed over
        # Announced endpoints whose key the watch changed while their write was on its way:
        # most likely that write itself, coming back before its answer. Judged on the answer.
        self._changed_while_announced: set[Key] = set()
        self._waiters: dict[str, list[asyncio.Future]] = {}
        # Each endpoint as the compiler sees it, by key: (revision, its namespace's labels,
        # PolicyEndpoint), so a compilation converts only what changed.
        self._converted: dict[Key, tuple[str | None, dict[str, str] | None, PolicyEndpoint]] = {}
        # Endpoint keys that may have changed since the last conversion (None: all of them), so
        # a compilation looks at what changed, not at every endpoint of the cluster.
        self._stale: set[Key] | None = None
        self._namespace_labels: dict[str, dict[str, str]] = {}
        self._compiler = RulesetCompiler()  # keeps unchanged endpoints' chains between compilations
        self.last_apply_seconds = 0.0
        # For the VXLAN guard, kept from the changes: each Node's address per IP version, the IP
        # version of each pool with VXLAN in use, and what the compiler was given (None: to
        # work out again).
        self._node_addresses: dict[str, dict[int, str]] = {}
        self._vxlan_pools: dict[str, int] = {}
        self._vxlan_sources: dict[int, tuple[str, ...]] | None = {}
        cache.subscribe(self._changed)

    def _changed(self, change: Change) -> None:
        if change.kind in ("Node", "IPPool"):
            self._vxlan_changed(change)
            return
        if change.kind == "WorkloadEndpoint":
            self._mark_stale(change.key)
        ours = self._written.get(change.key)
        if ours is not None and any(pair is not None and pair.revision == ours.revision
                                    for pair in (change.new, change.old)):
            self._forget_written(change.key)  # the view has it (or has seen it go)
            if change.new is not None and change.new.revision == ours.revision:
                return  # this agent's own write coming back: programmed from it already
        elif ours is not None and ours.revision == NOT_STORED and change.new is not None:
            # The watch often brings the write before the write's own answer comes: compiling
            # now would only find what the announcement programmed. endpoint_written() decides.
            self._changed_while_announced.add(change.key)
            return
        if change.kind in POLICY_KINDS:
            self._due.set()

    def _vxlan_changed(self, change: Change) -> None:
        """A Node or an IPPool changed: the table is due if the VXLAN guard's sources did."""
        value = change.new.value if change.new is not None else None
        name = change.key.name
        if change.kind == "Node":
            addresses = {version: str(interface.ip) for version in (4, 6)
                         if (interface := node_interface(value, version)) is not None}
            if self._node_addresses.get(name, {}) == addresses:
                return  # another field of the Node (its tunnel address, its ASN)
            if addresses:
                self._node_addresses[name] = addresses
            else:
                self._node_addresses.pop(name, None)
            if not self._vxlan_pools:
                return
        else:
            version = value.spec.network.version if value is not None else None
            using = version if version is not None and vxlan_pools([value], version) else None
            if self._vxlan_pools.get(name) == using:
                return
            families = set(self._vxlan_pools.values())
            if using is None:
                self._vxlan_pools.pop(name, None)
            else:
                self._vxlan_pools[name] = using
            if set(self._vxlan_pools.values()) == families:
                return
        self._vxlan_sources = None
        self._due.set()

    def vxlan_sources(self) -> dict[int, tuple[str, ...]]:
        """Each IP version a VXLAN pool uses -> the Nodes' addresses of that version."""
        if self._vxlan_sources is None:
            self._vxlan_sources = {
                version: tuple(sorted({found[version] for found in self._node_addresses.values()
                                       if version in found}))
                for version in sorted(set(self._vxlan_pools.values()))}
        return self._vxlan_sources

    def endpoint_written(self, pair: KVPair) -> None:
        """The CNI side wrote this endpoint, or is about to (revision NOT_STORED): program it
        now, not when the watch says so."""
        self._mark_stale(pair.key)
        announced = self._written.get(pair.key)
        current = self.cache.get(pair.key)
        changed_meanwhile = pair.key in self._changed_while_announced
        self._changed_while_announced.discard(pair.key)
        if current is not None and current.revision == pair.revision:
            self._forget_written(pair.key)  # the watch was faster
            changed_meanwhile = False  # and what it brought was this write
        else:
            self._written[pair.key] = pair
            if pair.revision == NOT_STORED:
                self._written_at.pop(pair.key, None)  # announced anew: no stored write to doubt
            else:
                self._written_at[pair.key] = time.monotonic()
                # A look once the trust has run out, only if the watch has not confirmed the
                # write by then: an ADD confirmed as usual costs no second compilation.
                asyncio.get_running_loop().call_later(
                    self.trust_written_seconds, self._unconfirmed_after_trust, pair.key)
        if announced is not None and announced.revision == NOT_STORED != pair.revision:
            if changed_meanwhile:
                self._due.set()  # the watch brought something other than this write
            return  # the announced endpoint, now stored: its chains hold as compiled
        self._due.set()

    def endpoint_dropped(self, key: Key) -> None:
        """The CNI side gave up an endpoint it announced and did not store (its ADD failed)."""
        self._changed_while_announced.discard(key)
        self._mark_stale(key)
        pair = self._written.get(key)
        if pair is not None and pair.revision == NOT_STORED:
            del self._written[key]
            self._due.set()

    def _unconfirmed_after_trust(self, key: Key) -> None:
        if key in self._written_at:
            self._due.set()

    def _forget_written(self, key: Key) -> None:
        self._written.pop(key, None)
        self._written_at.pop(key, None)
        self._mark_stale(key)

    def _mark_stale(self, key: Key) -> None:
        if self._stale is not None:
            self._stale.add(key)

    def _expire_written(self) -> None:
        """Stored endpoints the watch has not confirmed within the trust: the view wins."""
        now = time.monotonic()
        for key, since in list(self._written_at.items()):
            if now - since >= self.trust_written_seconds:
                log.info("the view never showed endpoint %s at the revision written; "
                         "following the view", key.name)
                self._forget_written(key)

    def _convert(self, key: Key, pair: KVPair, namespace_labels: dict[str, dict[str, str]]
                 ) -> tuple[str | None, dict[str, str] | None, PolicyEndpoint]:
        """(revision, namespace labels, PolicyEndpoint) for an endpoint: the one converted
        before while both are the same, so the compiler sees the same object."""
        labels = namespace_labels.get(key.namespace or "default")
        was = self._converted.get(key)
        # An announced endpoint (NOT_STORED) is converted each time: a retried ADD may announce
        # other values under the same key and the same (non-)revision.
        if was is not None and was[0] == pair.revision != NOT_STORED and was[1] == labels:
            return was
        endpoint = policy_endpoint(pair.value, self.node, namespace_labels)
        if was is not None and was[2] == endpoint:
            # The same endpoint at another revision (an announced one, now stored): the same
            # object, so the compiler keeps its chains instead of building them again.
            endpoint = was[2]
        return (pair.revision, labels, endpoint)

    def desired(self) -> Ruleset:
        profiles: dict[str, Profile] = {}
        namespace_labels: dict[str, dict[str, str]] = {}
        for profile in self.cache.values("Profile"):
            name = profile.metadata.name
            if name.startswith(NAMESPACE_PROFILE_PREFIX):
                namespace = name[len(NAMESPACE_PROFILE_PREFIX):]
                profiles[namespace] = profile
                namespace_labels[namespace] = labels_of_namespace(namespace, profile)
        self._expire_written()
        if namespace_labels != self._namespace_labels:
            self._stale = None  # a namespace's labels changed: its endpoints convert anew
        self._namespace_labels = namespace_labels
        if self._stale is None:
            # Everything: what the view holds and what the CNI side wrote, the latter first.
            converted = {}
            for key, pair in {**self.cache.items("WorkloadEndpoint"), **self._written}.items():
                converted[key] = self._convert(key, pair, namespace_labels)
        else:
            converted = self._converted
            for key in self._stale:
                pair = self._written.get(key) or self.cache.get(key)
                if pair is None:
                    converted.pop(key, None)
                else:
                    converted[key] = self._convert(key, pair, namespace_labels)
        self._converted, self._stale = converted, set()
        endpoints = [endpoint for _, _, endpoint in converted.values()]
        policies = [*self.cache.values("NetworkPolicy"), *self.cache.values("GlobalNetworkPolicy")]
        return self._compiler.compile(policies, profiles, endpoints, self.vxlan_sources())

    async def wait_programmed(self, interface: str, timeout: float = 10.0) -> bool:
        """Until `interface` has its chains in the kernel (True), or `timeout` (False)."""
        if interface in self._programmed:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(interface, []).append(waiter)
        self._due.set()
        try:
            # not wait_for, which in Python 3.11 can swallow a cancellation (a CNI request
            # given up) that arrives as the chains land
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter)
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(interface, [])
            if waiter in waiters:
                waiters.remove(waiter)

    async def run(self) -> None:
        await self.cache.wait_synced()
        self._due.set()
        next_check = time.monotonic() + self.reconcile_seconds
        while True:
            try:
                # not wait_for, which in Python 3.11 can swallow a cancellation: the agent would
                # go on after percale-node was told to stop
                async with asyncio.timeout(max(0.0, next_check - time.monotonic())):
                    await self._due.wait()
            except TimeoutError:
                next_check = time.monotonic() + self.reconcile_seconds
                if await asyncio.to_thread(self.table.drifted):
                    log.warning("the policy table changed behind percale; writing it whole")
                    self.table.applied = None
                    self._due.set()
                continue
            self._due.clear()
            try:
                await self.program()
            except (NftError, OSError) as err:
                log.warning("programming policy failed, trying again: %s", err)
                await asyncio.sleep(RETRY_SECONDS)
                self._due.set()

    async def program(self) -> None:
        ruleset = self.desired()
        started = time.perf_counter()
        await asyncio.to_thread(self.table.apply, ruleset)
        self.last_apply_seconds = time.perf_counter() - started
        self._programmed = set(ruleset.from_endpoint)
        for interface in list(self._waiters):
            if interface in self._programmed:
                for waiter in self._waiters.pop(interface):
                    if not waiter.done():
                        waiter.set_result(True)
