"""What the agent does for each CNI request from the `percale` and `percale-ipam` plugins.

ADD undoes every earlier step when a later one fails (the addresses it took, the veth), so a
failed ADD leaves nothing behind. An ADD the agent's death cut short (the shim answered 11) may
be sent again: one that had finished is answered as it was, one that had not is done afresh
(_earlier_attachment). DEL is idempotent and works when the netns is already gone. The request
arrives as cni-plugin/PROTOCOL.md describes; the answer is (CNI code, stdout).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from percale.datastore import (
    AlreadyExists,
    Conflict,
    Datastore,
    DatastoreError,
    DatastoreUnavailable,
    Key,
    KVPair,
    NotFound,
)
from percale.datastore.contract import reads_pod_annotations
from percale.ipam.allocator import IPAM, Allocation, Holding, read_reservations
from percale.ipam.errors import IPAMError, NoPools, TooManyConflicts
from percale.ipam.pools import usable
from percale.ipam.usage import usage
from percale.api.fields import IPV6_MIN_MTU
from percale.vxlan.plan import pod_mtu
from percale.dataplane import pod_network
from percale.dataplane.workers import DataplaneWorkers
from percale.node.policy_agent import NOT_STORED, PolicyAgent
from percale.node import cni_annotations
from percale.node.cni_types import (
    BAD_ANNOTATION,
    CHECK_FAILED,
    DATAPLANE_FAILED,
    INTERFACE_EXISTS,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    NO_ADDRESSES,
    NOT_AVAILABLE,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
    DECODING_FAILURE,
    INTERNAL,
    CNIError,
    NetConf,
    addresses_on,
    check_container_id,
    check_interface_name,
    check_ipam_type,
    ipv6_mtu_problem,
    parse_cni_args,
    parse_netconf,
    result,
)
from percale.api import IPPool, ObjectMeta, WorkloadEndpoint
from percale.api.meta import DNS_SUBDOMAIN_MAX, validation_problems
from percale.api.workloadendpoint import WorkloadEndpointPort, workload_endpoint_name

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class Pod:
    """Who a request is for: the container, and the Kubernetes pod when CNI_ARGS names it.

    `deleting`: DEL takes pod names ADD refuses (parse_cni_args), as it must succeed for a pod
    whose ADD was refused, and that left nothing to find under them."""

    def __init__(self, request: dict[str, Any], conf: NetConf, *, deleting: bool = False):
        args = parse_cni_args(request.get("args", ""), kubernetes_names=not deleting)
        self.container_id = check_container_id(request.get("containerID"))
        self.ifname = check_interface_name(request.get("ifname") or "eth0")
        netns = request.get("netns") or ""
        if not isinstance(netns, str):
            raise CNIError(INVALID_ENVIRONMENT, "CNI_NETNS must be a path")
        self.netns = netns
        self.namespace = args.get("K8S_POD_NAMESPACE") or "default"
        # Without Kubernetes arguments the container stands for the pod, as in Calico.
        self.named_by = "K8S_POD_NAME" if args.get("K8S_POD_NAME") else "CNI_CONTAINERID"
        self.name = args.get("K8S_POD_NAME") or self.container_id
        self.handle_id = f"{conf.name}.{self.container_id}"
        if len(self.handle_id) > DNS_SUBDOMAIN_MAX:
            # The IPAM handle is a datastore object named so: refused now, not once IPAM is
            # asked (999, every step undone).
            raise CNIError(INVALID_ENVIRONMENT,
                           f"CNI_CONTAINERID is too long: the IPAM handle {conf.name}.<container ID> "
                           f"may have at most {DNS_SUBDOMAIN_MAX} characters, and would have "
                           f"{len(self.handle_id)}")
        # Older allocations, and CRI runtimes that changed container IDs, used the workload ID.
        self.workload_handle_id = f"{self.namespace}.{self.name}"
        self.host_veth = pod_network.host_veth_name(self.namespace, self.name, self.ifname)


log = logging.getLogger("percale.node.cni")


@dataclass(frozen=True)
class _Earlier:
    """What an earlier ADD of the same container and interface left in the namespace this ADD
    names (_earlier_attachment): its endpoint and its veth pair; `wired` when that ADD had
    finished, its pod wired as the endpoint says."""
    endpoint: WorkloadEndpoint
    link: pod_network.PodLink
    wired: bool


async def _settled(future: asyncio.Future) -> Any:
    """`future`'s result once it is done; None when it failed or was cancelled (its error
    belongs to whoever reports the ADD's failure)."""
    await asyncio.wait((future,))
    if future.cancelled() or future.exception() is not None:
        return None
    return future.result()


class CNIHandlers:
    def __init__(self, store: Datastore, ipam: IPAM, node: str, host_mtu: int,
                 policy: PolicyAgent | None = None):
        self.store, self.ipam, self.node = store, ipam, node
        # Told of each endpoint as it is written; an ADD waits until the pod's host interface
        # has its policy in the kernel (node/policy_agent.py).
        self.policy = policy
        self.host_mtu = host_mtu  # the underlay's (--mtu, or detected: node/host_mtu.py)
        self.workers = DataplaneWorkers()
        # Deleting a veth pair waits out RCU grace periods in the kernel (~16 ms each, one at a
        # time): a thread of its own, so no ADD or DEL queues behind a burst of them.
        self.teardowns = DataplaneWorkers(count=1)
        # The deletions DEL has left to do, by (namespace, interface name): an ADD of that
        # interface into that namespace waits for them (_after_teardowns).
        self._tearing_down: dict[tuple[int, int, str], set[asyncio.Future]] = {}
        self._background: set[asyncio.Future] = set()
        # The host veths ADDs are making or wiring now, each with how many (two containers of one
        # pod share its veth's name). Such an ADD's route stands before its endpoint is stored,
        # so the pod routes' reconciler (node/pod_routes.py) and GC leave these veths alone, and
        # a second ADD does not take their pod interface for one a killed ADD left. The ADD
        # pays an insertion and a removal in this dict for it, no I/O.
        self.adding: dict[str, int] = {}

    async def start(self) -> None:
        await asyncio.gather(self.workers.start(), self.teardowns.start())

    async def _undo_link(self, linking: asyncio.Future, host_veth: str,
                         configuring: asyncio.Future | None = None) -> None:
        if configuring is not None:
            await _settled(configuring)  # its link goes only once it is done with it
        try:
            await linking
        except Exception:
            return  # it made nothing, or removed what it made
        await self.workers.run(pod_network.remove_host_veth, host_veth)

    async def _undo_endpoint(self, writing: asyncio.Future | None) -> None:
        """Delete the endpoint a failed ADD stored, if it did, and if it is still that one."""
        written = await _settled(writing) if writing is not None else None
        if written is None:
            return
        try:
            await self.store.delete(written.key, revision=written.revision)
        except (NotFound, Conflict):
            pass  # gone already, or a newer ADD for the pod has written its own
        except DatastoreError as err:
            log.warning("could not delete endpoint %s of a failed ADD: %s", written.key.name, err)

    def _in_background(self, work: Awaitable[object]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)

        def done(finished: asyncio.Future) -> None:
            self._background.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.warning("deleting a pod's interface failed: %s", finished.exception())

        task.add_done_callback(done)

    def _tear_down_later(self, unwired: pod_network.Unwired) -> None:
        tearing = asyncio.ensure_future(self.teardowns.run(pod_network.tear_down, unwired))
        pending = self._tearing_down.setdefault(unwired.key, set())
        pending.add(tearing)

        def done(finished: asyncio.Future) -> None:
            pending.discard(finished)
            if not pending and self._tearing_down.get(unwired.key) is pending:
                del self._tearing_down[unwired.key]

        tearing.add_done_callback(done)
        self._in_background(tearing)

    async def _after_teardowns(self, pod: Pod) -> None:
        """Wait until the interface an earlier DEL cut off in this pod's namespace, under this
        name, is deleted: a runtime may ADD it again as soon as the DEL answered, and the ADD
        found it still there (102, "already has an interface named eth0")."""
        key = pod_network.pending_key(pod.netns, pod.ifname)
        pending = self._tearing_down.get(key) if key is not None else None
        if pending:
            await asyncio.wait(set(pending))

    def _start_adding(self, host_veth: str) -> None:
        self.adding[host_veth] = self.adding.get(host_veth, 0) + 1

    def _done_adding(self, host_veth: str) -> None:
        left = self.adding[host_veth] - 1
        if left:
            self.adding[host_veth] = left
        else:
            del self.adding[host_veth]

    def set_host_mtu(self, host_mtu: int) -> None:
        """The host MTU changed (node/host_mtu.py): pods wired from now on are sized from it."""
        self.host_mtu = host_mtu

    def close(self) -> None:
        self.workers.close()
        self.teardowns.close()

    async def handle(self, request: Any) -> tuple[int, str]:
        """(CNI code, stdout) for one request (cni-plugin/PROTOCOL.md). Bad input and failures
        a retry can cure come back as CNI errors; anything else is a bug, raised for the server
        to log and answer with 999."""
        version = "1.0.0"
        try:
            if not isinstance(request, dict):
                raise CNIError(DECODING_FAILURE, "the request is not a JSON object")
            conf = parse_netconf(request.get("config", ""))
            version = conf.cni_version
            command = request.get("command")
            _check_version_allows(command, version)
            ipam_only = request.get("plugin") == "percale-ipam"
            if command == "ADD":
                return 0, json.dumps(await (self.ipam_add if ipam_only else self.add)(request, conf))
            if command == "DEL":
                await (self.ipam_del if ipam_only else self.delete)(request, conf)
                return 0, ""
            if command == "CHECK":
                await (self.ipam_check if ipam_only else self.check)(request, conf)
                return 0, ""
            if command == "STATUS":
                await self.status(conf)
                return 0, ""
            if command == "GC":
                await self.gc(conf)
                return 0, ""
            if command == "VERSION":
                return 0, json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)})
            raise CNIError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND {command!r}")
        except CNIError as err:
            return err.code, err.to_json(version)
        except (DatastoreUnavailable, TooManyConflicts) as err:
            # The datastore cannot be reached, or other nodes kept winning the compare-and-swap:
            # both pass, so the runtime's retry can succeed.
            return TRY_AGAIN_LATER, CNIError(TRY_AGAIN_LATER, str(err)).to_json(version)
        except DatastoreError as err:
            # The datastore answered and refused: retrying the same request would meet the same
            # answer.
            return INTERNAL, CNIError(INTERNAL, f"the datastore refused: {err}").to_json(version)

    # -- percale (main plugin) -----------------------------------------------------------------

    def _node(self, conf: NetConf) -> str:
        return conf.nodename or self.node

    def _endpoint_key(self, pod: Pod, conf: NetConf) -> Key:
        """Where the pod's WorkloadEndpoint for this interface is stored."""
        return Key("WorkloadEndpoint", workload_endpoint_name(self._node(conf), "k8s", pod.name, pod.ifname),
                   pod.namespace)

    async def _asked(self, pod: Pod) -> cni_annotations.Requested:
        """What Calico's annotations of the pod and its namespace ask of the ADD (pools, exact
        addresses), on the Kubernetes datastore; nothing on etcd, which has no Pods to read."""
        read = reads_pod_annotations(self.store)
        if read is None or pod.named_by != "K8S_POD_NAME":
            return cni_annotations.Requested()
        try:
            found = await read(pod.namespace, pod.name)
        except NotFound:
            # Writing the endpoint, which lives on the Pod there, says so.
            return cni_annotations.Requested()
        except DatastoreError as err:
            raise CNIError(TRY_AGAIN_LATER, f"cannot read the annotations of Pod "
                                            f"{pod.namespace}/{pod.name}: {err}") from None
        try:
            return cni_annotations.requested(found)
        except cni_annotations.AnnotationError as err:
            raise CNIError(BAD_ANNOTATION, f"Pod {pod.namespace}/{pod.name}: {err}") from None

    async def _allocate(self, pod: Pod, conf: NetConf, narrow: bool = True,
                        asked: cni_annotations.Requested | None = None) -> list[Interface]:
        asked = asked or cni_annotations.Requested()
        # The interface too: the handle is the container's on this network, shared by every
        # CNI_IFNAME the runtime attaches to it (_release_attachment).
        attrs = {"namespace": pod.namespace, "pod": pod.name, "interface": pod.ifname}
        if asked.addresses is not None:
            return await self._assign_asked(pod, conf, asked.addresses, attrs)
        try:
            got = await self.ipam.auto_assign(
                self._node(conf), handle_id=pod.handle_id,
                num4=1 if conf.ipam.assign_ipv4 else 0, num6=1 if conf.ipam.assign_ipv6 else 0,
                attrs=attrs,
                ipv4_pools=asked.ipv4_pools or conf.ipam.ipv4_pools or None,
                ipv6_pools=asked.ipv6_pools or conf.ipam.ipv6_pools or None,
                namespace=pod.namespace,  # for pools with a namespaceSelector
            )
        except TooManyConflicts:
            raise
        except (NoPools, IPAMError) as err:
            raise CNIError(NO_ADDRESSES, f"failed to allocate an address: {err}") from None
        addresses = [*got.ipv4, *got.ipv6]
        if not narrow:
            return addresses
        # Pods get /32 and /128; the block prefix is for routing between nodes.
        return [ipaddress.ip_interface(f"{a.ip}/{a.max_prefixlen}") for a in addresses]

    async def _assign_asked(
        self, pod: Pod, conf: NetConf, addresses: list[cni_annotations.Address],
        attrs: dict[str, str],
    ) -> list[Interface]:
        """The exact addresses the pod's ipAddrs annotation names, each from the pool holding it,
        narrowed to /32 (/128); all or none."""
        given: list[str] = []
        try:
            for address in addresses:
                try:
                    await self.ipam.assign_ip(self._node(conf), str(address),
                                              handle_id=pod.handle_id, attrs=attrs)
                except (NoPools, IPAMError) as err:
                    raise CNIError(NO_ADDRESSES, f"pod annotation {cni_annotations.IP_ADDRS}: "
                                                 f"cannot assign {address}: {err}") from None
                given.append(str(address))
        except BaseException:
            if given:
                await asyncio.shield(self.ipam.release_ips(given, cooldown=False))
            raise
        return [ipaddress.ip_interface(f"{a}/{a.max_prefixlen}") for a in addresses]

    async def _mtu_for(self, conf: NetConf) -> int:
        """The config's MTU, else the host's less the largest overhead of an encapsulation an
        enabled pool uses: a pod whose packets grow past the underlay MTU inside a tunnel loses
        them silently (Calico users meet this as "large packets vanish")."""
        if conf.mtu:
            mtu, said = conf.mtu, f"mtu {conf.mtu}"
        else:
            mtu = pod_mtu(self.host_mtu, await self.ipam.pools())
            said = (f"the pod MTU {mtu} (percale-node's host MTU {self.host_mtu}, less"
                    " encapsulation)")
        # Only ADD: a DEL under the same configuration must still free what a pod holds.
        if conf.ipam.assign_ipv6 and mtu < IPV6_MIN_MTU:
            raise CNIError(INVALID_CONFIG, ipv6_mtu_problem(said))
        return mtu

    async def add(self, request: dict[str, Any], conf: NetConf) -> dict[str, Any]:
        # Everything that can be refused is refused before anything is taken.
        pod = Pod(request, conf)
        check_ipam_type(conf)
        labels, ports = endpoint_args(conf)
        self._check_endpoint(pod, conf, labels, ports)
        _check_netns(pod.netns, "ADD")
        try:
            stored: WorkloadEndpoint | None = (
                await self.store.get(self._endpoint_key(pod, conf))).value
        except NotFound:
            stored = None
        earlier = await self._earlier_attachment(pod, conf, stored)
        if earlier is not None and earlier.wired:
            return await self._answer_again(pod, conf, earlier)
        await self._refuse_second_interface(pod, conf)
        asked = await self._asked(pod)
        await self._after_teardowns(pod)
        mtu = await self._mtu_for(conf)
        # With another ADD of this pod's veth running, what stands under its name may be that
        # ADD's, not one a killed ADD left: it is not taken (create_link then answers 102).
        others_adding = pod.host_veth in self.adding
        self._start_adding(pod.host_veth)
        try:
            if earlier is not None and not others_adding:
                await self._clear_unfinished(pod, earlier)
            other_container = stored is not None and stored.spec.container_id != pod.container_id
            # The veth pair needs no address: make it while IPAM picks one.
            linking = asyncio.ensure_future(self.workers.run(
                functools.partial(pod_network.create_link, replace_leftover=not others_adding,
                                  spare_mac=stored.spec.mac if other_container else None),
                pod.netns, pod.ifname, pod.host_veth, mtu))
        except BaseException:
            self._done_adding(pod.host_veth)
            raise
        addresses: list[Interface] = []
        announced: Key | None = None
        configuring: asyncio.Future | None = None
        writing: asyncio.Future | None = None
        try:
            addresses = await self._allocate(pod, conf, asked=asked)
            try:
                link = await linking
            except pod_network.InterfaceExists as err:
                raise CNIError(INTERFACE_EXISTS, str(err)) from None
            except pod_network.DataplaneError as err:
                raise CNIError(DATAPLANE_FAILED, str(err)) from None
            if link.replaced_leftover:
                await self._release_leftover(pod, addresses)
            endpoint = self._endpoint(pod, conf, labels, ports, link.host_name, link.container_mac,
                                      addresses)
            if self.policy is not None:
                # Its chains are compiled and written while the pod is configured and the
                # datastore stores it.
                announced = Key.of(endpoint)
                self.policy.endpoint_written(KVPair(announced, endpoint, NOT_STORED))
            # The pod's addresses and routes, and its endpoint in the datastore, at once: neither
            # needs the other, and one after the other they were half an ADD. A failure of
            # either undoes both (below).
            configuring = asyncio.ensure_future(self.workers.run(
                pod_network.configure, pod.netns, pod.ifname, pod.host_veth, addresses))
            writing = asyncio.ensure_future(self._write_endpoint(endpoint))
            await asyncio.wait((configuring, writing))
            try:
                configuring.result()
            except pod_network.DataplaneError as err:
                raise CNIError(DATAPLANE_FAILED, str(err)) from None
            written = writing.result()
            announced = None
            if self.policy is not None:
                self.policy.endpoint_written(written)
            if self.policy is not None and not await self.policy.wait_programmed(link.host_name):
                # The table drops the pod's traffic until its chains are in (fail closed); the
                # pod is wired, its connectivity follows when the policy side catches up.
                log.warning("pod %s/%s: policy not programmed yet for %s; its traffic is dropped "
                            "until it is", pod.namespace, pod.name, link.host_name)
        except BaseException:
            # Undo in reverse: the announced endpoint, the stored one, the veth (if this ADD
            # made it), then the addresses this ADD took (not those of an earlier ADD under the
            # same handle). No pod was ever given them, so no cooldown: with ipCooldownSeconds
            # each retry of a failing ADD held one more address.
            if announced is not None and self.policy is not None:
                self.policy.endpoint_dropped(announced)
            await asyncio.shield(self._undo_endpoint(writing))
            await asyncio.shield(self._undo_link(linking, pod.host_veth, configuring))
            if addresses:
                await asyncio.shield(self.ipam.release_ips([str(a.ip) for a in addresses],
                                                           cooldown=False))
            raise
        finally:
            self._done_adding(pod.host_veth)
        return self._result(pod, conf, link, addresses)

    def _result(self, pod: Pod, conf: NetConf, link: pod_network.PodLink,
                addresses: list[Interface]) -> dict[str, Any]:
        """The ADD's result: the pod's addresses on its interface, both ends of the veth pair,
        the default routes, after whatever a plugin earlier in the chain reported."""
        interfaces = [
            {"name": link.host_name, "mac": link.host_mac},
            {"name": link.container_name, "mac": link.container_mac, "sandbox": pod.netns},
        ]
        routes = []
        if any(a.version == 4 for a in addresses):
            routes.append({"dst": "0.0.0.0/0"})
        if any(a.version == 6 for a in addresses):
            routes.append({"dst": "::/0"})
        prev = conf.prev_result or {}
        # A plugin earlier in the chain already reported its interfaces: ours follow them, and
        # everything it reported passes through (CNI spec, "prevResult").
        first = len(prev.get("interfaces") or [])
        ours = result(conf.cni_version, addresses, interfaces, first + 1, routes, conf.dns)
        if not prev:
            return ours
        return {**prev, "cniVersion": conf.cni_version,
                "interfaces": (prev.get("interfaces") or []) + ours["interfaces"],
                "ips": (prev.get("ips") or []) + ours["ips"],
                "routes": (prev.get("routes") or []) + ours["routes"],
                "dns": prev.get("dns") or ours["dns"]}

    def _endpoint(self, pod: Pod, conf: NetConf, labels: dict[str, str],
                  ports: list[dict[str, Any]], host_name: str, mac: str | None,
                  addresses: list[Interface]) -> WorkloadEndpoint:
        key = self._endpoint_key(pod, conf)
        # Validated as one document, so a refusal names its field by its path (spec.containerID).
        return WorkloadEndpoint.model_validate({
            "metadata": {"name": key.name, "namespace": key.namespace, "labels": labels},
            "spec": {
                "orchestrator": "k8s", "node": self._node(conf),
                "containerID": pod.container_id, "pod": pod.name, "endpoint": pod.ifname,
                "ipNetworks": [str(a) for a in addresses], "profiles": [f"kns.{pod.namespace}"],
                "interfaceName": host_name, "mac": mac, "ports": ports,
            },
        })

    def _check_endpoint(self, pod: Pod, conf: NetConf, labels: dict[str, str],
                        ports: list[dict[str, Any]]) -> None:
        """Refuse, before anything is taken, names the pod's WorkloadEndpoint cannot hold: the
        endpoint itself is built with everything but the link and the addresses, which are
        percale's own. A name libcni or the kernel allows can still fail here: a container ID
        with '_' or '.', an interface name in upper case, or a long pod name whose '-'s the
        endpoint's name doubles (<node>-k8s-<pod>-<interface>, at most 253 characters)."""
        try:
            self._endpoint(pod, conf, labels, ports, pod.host_veth, None, [])
        except ValidationError as err:
            problems = {p.field: p.reason for p in validation_problems(err)}
            if not problems.keys() & {"spec.node", "spec.containerID", "metadata"}:
                raise  # no input of the request explains it: a bug, for the agent's log
        else:
            return
        if "spec.node" in problems:
            raise CNIError(INVALID_CONFIG, f"nodename: {problems['spec.node']}")
        if "spec.containerID" in problems:
            raise CNIError(INVALID_ENVIRONMENT,
                           f"CNI_CONTAINERID {pod.container_id!r} cannot be recorded in the pod's "
                           f"WorkloadEndpoint: {problems['spec.containerID']}")
        name = self._endpoint_key(pod, conf).name
        if pod.named_by == "CNI_CONTAINERID":
            culprit = f"CNI_CONTAINERID {pod.container_id!r} (the pod's name without K8S_POD_NAME)"
        elif len(name) > DNS_SUBDOMAIN_MAX:
            raise CNIError(INVALID_ENVIRONMENT,
                           f"CNI_ARGS K8S_POD_NAME is too long for this node: the pod's WorkloadEndpoint "
                           f"name <node>-k8s-<pod>-<interface>, each '-' in them doubled, would be "
                           f"{len(name)} characters, at most {DNS_SUBDOMAIN_MAX}")
        else:
            culprit = f"CNI_IFNAME {pod.ifname!r}"
        raise CNIError(INVALID_ENVIRONMENT,
                       f"{culprit} cannot make the pod's WorkloadEndpoint: {problems['metadata']}")

    async def _earlier_attachment(self, pod: Pod, conf: NetConf,
                                  current: WorkloadEndpoint | None) -> _Earlier | None:
        """What an earlier ADD of this container and interface left in the netns this ADD names,
        as its endpoint (`current`, stored for the pod's interface) says; None when nothing of
        it stands. Looked at only when that endpoint is this container's.

        A container ID names one sandbox: while an ADD's attachment of this container and
        interface stands (its endpoint is there until a DEL) in another netns, a second ADD is
        the runtime's mistake (CNI spec: no ADD twice for a (CNI_CONTAINERID, CNI_IFNAME)
        without a DEL); there it replaced the pod's host veth, cutting off the first netns, and
        took a second address under the handle. Refused (102) before anything is taken. An
        endpoint of another container of the pod is a sandbox replaced, and the new one takes
        over (Calico does the same).

        Into the same netns it is the runtime trying again after an ADD that got no answer (the
        agent died, and the shim said 11, "try again later"): Calico's ADD allocates and writes
        the endpoint again, so its retry succeeds, where this one was refused (102) until a DEL.
        If that ADD had finished (the pod's interface is the peer of the endpoint's host veth,
        wired as the endpoint says, and the handle holds its addresses), the retry is answered
        with its result and takes nothing (`wired`); if not, the ADD clears what it left and
        goes on afresh (_clear_unfinished). An ADD killed before it stored the endpoint left no
        endpoint to find here: create_link takes the interface it left (replace_leftover).

        An endpoint whose host veth is gone is an attachment that did not survive (a reboot, an
        agent that died before the DEL): runtimes that keep container IDs across restarts
        (Podman, nerdctl) ADD it again. Its addresses, under this container's handle, are freed
        and the ADD goes on, rather than refusing it until someone runs DEL by hand."""
        if current is None or current.spec.container_id != pod.container_id:
            return None
        veth = current.spec.interface_name
        if not veth or not await self.workers.run(pod_network.host_link_exists, veth):
            log.info("container %s: its earlier %s (host veth %s) is gone; adding it afresh",
                     pod.container_id, pod.ifname, veth)
            await self._release_attachment(pod.handle_id, pod.ifname, unrecorded=True)
            return None
        addresses = [ipaddress.ip_interface(n) for n in current.spec.ip_networks]
        found = None
        if veth not in self.adding:  # an ADD still wiring it is no earlier one
            try:
                found = await self.workers.run(pod_network.find_attachment, pod.netns,
                                               pod.ifname, veth, addresses)
            except pod_network.DataplaneError as err:
                raise CNIError(DATAPLANE_FAILED, str(err)) from None
        if found is not None:
            wired = found.wired and _same_mac(found.link.container_mac, current.spec.mac)
            if wired:
                held = set(await self.ipam.ips_by_handle(pod.handle_id))
                wired = bool(addresses) and all(str(a.ip) in held for a in addresses)
            return _Earlier(current, found.link, wired)
        where = ", ".join(current.spec.ip_networks) or "no address"
        raise CNIError(INTERFACE_EXISTS,
                       f"container {pod.container_id} already has {pod.ifname}, added for pod "
                       f"{pod.namespace}/{pod.name} on node {self._node(conf)} ({where}, host veth "
                       f"{current.spec.interface_name}); DEL it before adding it again")

    async def _answer_again(self, pod: Pod, conf: NetConf, earlier: _Earlier) -> dict[str, Any]:
        """The result the finished ADD would have answered, for the runtime's retry of it."""
        link = earlier.link
        log.info("container %s: %s is wired as its endpoint says; answering its ADD again",
                 pod.container_id, pod.ifname)
        if self.policy is not None and not await self.policy.wait_programmed(link.host_name):
            log.warning("pod %s/%s: policy not programmed yet for %s; its traffic is dropped "
                        "until it is", pod.namespace, pod.name, link.host_name)
        addresses = [ipaddress.ip_interface(n) for n in earlier.endpoint.spec.ip_networks]
        return self._result(pod, conf, link, addresses)

    async def _clear_unfinished(self, pod: Pod, earlier: _Earlier) -> None:
        """Remove what an ADD of this attachment that never finished left (its endpoint stored,
        its pod not wired as that says): the veth pair and the host routes first, then the
        addresses, or the next pod given one would find its route taken. The endpoint is
        written over by this ADD."""
        log.info("container %s: an earlier ADD of %s did not finish; adding it afresh",
                 pod.container_id, pod.ifname)
        await self.workers.run(pod_network.remove_host_veth, earlier.link.host_name)
        await self._release_attachment(pod.handle_id, pod.ifname, unrecorded=True)

    async def _release_leftover(self, pod: Pod, taken: Iterable[Interface]) -> None:
        """Free what an ADD killed before it stored its endpoint took for this interface: its
        pod interface, found by create_link, is gone with its routes, and no endpoint lists the
        addresses; this ADD's own (`taken`) stay. By sequence number, so an address handed out
        again meanwhile stays with its new holder."""
        kept = {str(a.ip) for a in taken}
        mine, _ = await self._addresses_of_interface(pod.handle_id, pod.ifname, unrecorded=False)
        stale = {a: n for a, n in mine.items() if a not in kept}
        log.info("container %s: took over %s left by an ADD that did not finish%s",
                 pod.container_id, pod.ifname,
                 f"; releasing {', '.join(sorted(stale))}" if stale else "")
        if stale:
            await self.ipam.release_ips(
                list(stale), sequence_numbers={a: n for a, n in stale.items() if n is not None})

    async def _refuse_second_interface(self, pod: Pod, conf: NetConf) -> None:
        """percale wires one interface per pod (the pod's gateway and default routes go through
        it: pod_network.configure). An ADD of the container on another CNI_IFNAME while one of
        its attachments to this network stands failed there, after taking an address under the
        handle both share and making a veth. Refused before anything is taken, naming the
        attachment that stands; the runtime's DEL that follows frees none of its addresses
        (delete)."""
        standing = await self._other_attachments(pod, conf)
        if not standing:
            return
        other = standing[0].spec
        where = ", ".join(other.ip_networks) or "no address"
        raise CNIError(INTERFACE_EXISTS,
                       f"container {pod.container_id} is attached to network {conf.name} on "
                       f"{other.endpoint} already, for pod {pod.namespace}/{pod.name} ({where}, "
                       f"host veth {other.interface_name}); percale wires one interface per pod, "
                       f"so {pod.ifname} is refused")

    async def _other_attachments(self, pod: Pod, conf: NetConf) -> list[WorkloadEndpoint]:
        """This container's endpoints on this node for its other interfaces on this network:
        those listing an address the network's handle holds. An endpoint of another network
        (another percale network attached as net1) shares no handle with this one."""
        # "<node>-k8s-<pod>-" begins the names of the pod's endpoints, one per interface (and,
        # for pod web, those of pod web-1, "web--1": the container ID tells them apart).
        prefix = workload_endpoint_name(self._node(conf), "k8s", pod.name, "")
        own = self._endpoint_key(pod, conf).name
        listed = (await self.store.list("WorkloadEndpoint", pod.namespace)).items
        others = [kv.value for kv in listed
                  if kv.key.name.startswith(prefix) and kv.key.name != own
                  and kv.value.spec.container_id == pod.container_id]
        if not others:
            return []  # the common case: read from the agent's view, with no datastore request
        held = set(await self.ipam.ips_by_handle(pod.handle_id))
        return [e for e in others
                if any(str(ipaddress.ip_interface(n).ip) in held for n in e.spec.ip_networks)]

    async def _may_free_unrecorded(self, pod: Pod, conf: NetConf) -> bool:
        """Whether this attachment's DEL may free the handle's addresses that have no interface
        recorded (allocated before percale recorded it): when this container's endpoint for
        this interface stands, or when none of its other interfaces on this network has one (an
        ADD that died before writing its endpoint is cleaned up by its DEL all the same). The
        runtime's DEL after a refused second interface freed the first's live address."""
        try:
            current = await self.store.get(self._endpoint_key(pod, conf))
            if current.value.spec.container_id == pod.container_id:
                return True
        except NotFound:
            pass
        return not await self._other_attachments(pod, conf)

    async def _addresses_of_interface(
        self, handle_id: str, ifname: str, *, unrecorded: bool,
    ) -> tuple[dict[str, int | None], list[str]]:
        """What `handle_id` holds for interface `ifname` and for its others
        (`_split_by_interface`)."""
        return _split_by_interface(await self.ipam.holding(handle_id), ifname, unrecorded)

    async def _release_attachment(self, handle_id: str, ifname: str, *, unrecorded: bool) -> bool:
        """Free what `handle_id` holds for interface `ifname` (`_split_by_interface`); False
        when there is no such handle. The handle, "<network>.<container ID>", is shared by
        every interface the runtime attaches to the network (CNI spec: an attachment is
        (CNI_CONTAINERID, CNI_IFNAME), and the DEL of one must not undo another); released
        whole, the runtime's DEL for a refused net2 freed eth0's live address, for the next pod
        to get twice."""
        holding = await self.ipam.holding(handle_id)
        if holding is None:
            return False
        mine, kept = _split_by_interface(holding, ifname, unrecorded)
        if not kept:
            # All of it is this attachment's: released whole, which deletes a handle that
            # overstated what it holds as well. Written against the handle just read.
            await self.ipam.release_by_handle(handle_id, stored=holding.stored)
        elif mine:
            await self.ipam.release_ips(
                list(mine), sequence_numbers={a: n for a, n in mine.items() if n is not None})
        return True

    async def _release_pod_attachment(self, pod: Pod, *, unrecorded: bool) -> None:
        """Free what the pod's attachment holds, in Calico's order: by the container's handle,
        and only when there is none by the workload's (allocations older than container
        handles). Reading both every time cost each DEL two handle reads of the datastore."""
        if not await self._release_attachment(pod.handle_id, pod.ifname, unrecorded=unrecorded):
            await self._release_attachment(pod.workload_handle_id, pod.ifname,
                                           unrecorded=unrecorded)

    async def _write_endpoint(self, endpoint: WorkloadEndpoint) -> KVPair:
        # An ADD always writes the endpoint, even over an older container's (Calico does too);
        # that container's DEL then leaves it alone because the container ID differs.
        for _ in range(10):
            try:
                return await self.store.create(endpoint)  # the common case: a new pod
            except AlreadyExists:
                pass
            try:
                current = await self.store.get(Key.of(endpoint))
                return await self.store.update(endpoint, revision=current.revision)
            except (NotFound, Conflict):
                continue
        raise CNIError(TRY_AGAIN_LATER, f"could not write WorkloadEndpoint "
                                        f"{endpoint.metadata.namespace}/{endpoint.metadata.name}")

    async def delete(self, request: dict[str, Any], conf: NetConf) -> None:
        pod = Pod(request, conf, deleting=True)
        if pod.netns and pod_network.is_node_namespace(pod.netns):
            # DEL removes CNI_IFNAME from CNI_NETNS: here that is the node's own (eth0, the
            # uplink).
            _check_netns(pod.netns, "DEL")
        # Any other problem means the pod's namespace is gone, which is normal for DEL (CNI
        # spec: it must succeed, releasing what the container holds): a path that names
        # nothing, or cannot (too long), or the empty file a bind mount leaves when it is
        # unmounted. Nothing is unwired in it; the endpoint and the addresses go all the same.
        present = bool(pod.netns) and pod_network.netns_problem(pod.netns) is None
        key = self._endpoint_key(pod, conf)
        unwired: pod_network.Unwired | None = None
        # Judged before the endpoint goes (below, at the same time as the unwiring).
        unrecorded = await self._may_free_unrecorded(pod, conf)

        async def forget_endpoint() -> None:
            try:
                current = await self.store.get(key)
                # Only this container's endpoint: a newer ADD for the same pod may own it by now.
                if current.value.spec.container_id == pod.container_id:
                    await self.store.delete(key, revision=current.revision)
            except NotFound:
                pass

        async def unwire_then_release() -> None:
            nonlocal unwired
            # The host routes to the pod go first; only then may its addresses be handed out
            # again, or the next pod to get one would find its route taken.
            if present:
                unwired = await self.workers.run(pod_network.unwire, pod.netns, pod.ifname)
            await self._release_pod_attachment(pod, unrecorded=unrecorded)

        try:
            await asyncio.gather(forget_endpoint(), unwire_then_release())
        finally:
            if unwired is not None:
                # Deleting the veth pair is slow in the kernel and DEL need not wait for it:
                # the pod is cut off. An ADD into the same namespace waits for it instead.
                self._tear_down_later(unwired)

    async def check(self, request: dict[str, Any], conf: NetConf) -> None:
        pod = Pod(request, conf)
        check_ipam_type(conf)
        _check_netns(pod.netns, "CHECK")
        # Only the addresses on this plugin's interface: chained after another plugin, the
        # result lists that plugin's too, and they are on no interface of percale's.
        addresses = addresses_on(conf.prev_result or {}, pod.ifname)
        if not addresses:
            raise CNIError(CHECK_FAILED, f"CHECK needs prevResult with the addresses ADD returned "
                                         f"on {pod.ifname}")
        key = self._endpoint_key(pod, conf)
        name = key.name
        stored: list[str] = []
        try:
            endpoint = (await self.store.get(key)).value
        except NotFound:
            endpoint = None
            stored.append(f"WorkloadEndpoint {pod.namespace}/{name} is missing")
        host_veth = pod.host_veth
        if endpoint is not None:
            if endpoint.spec.container_id != pod.container_id:
                stored.append(f"WorkloadEndpoint {name} belongs to container "
                              f"{endpoint.spec.container_id}")
            elif endpoint.spec.interface_name:
                # The name the ADD gave it: an interface other than eth0 wired before its name
                # was hashed with '/' keeps the older one.
                host_veth = endpoint.spec.interface_name
            if sorted(endpoint.spec.ip_networks) != sorted(str(a) for a in addresses):
                stored.append(f"WorkloadEndpoint {name} lists {endpoint.spec.ip_networks}")
        problems = await self.workers.run(pod_network.check, pod.netns, pod.ifname, host_veth,
                                          addresses)
        problems += stored
        held = set(await self.ipam.ips_by_handle(pod.handle_id))
        problems += [f"{a.ip} is not allocated to {pod.handle_id}" for a in addresses if str(a.ip) not in held]
        if problems:
            raise CNIError(CHECK_FAILED, "; ".join(problems))

    # -- percale-ipam --------------------------------------------------------------------------

    async def ipam_add(self, request: dict[str, Any], conf: NetConf) -> dict[str, Any]:
        pod = Pod(request, conf)
        await self._refuse_second_ipam_add(pod, conf)
        # As IPAM hands them out, with the block's prefix (10.244.3.7/26), like calico-ipam's
        # library: a main plugin such as ptp expects a subnet it can route, and percale's own
        # main plugin narrows to /32 itself. The gateway is the link-local one every percale pod
        # uses, so a main plugin that puts it on the host veth needs no address from the pool.
        addresses = await self._allocate(pod, conf, narrow=False)
        return result(conf.cni_version, addresses, dns=conf.dns,
                      gateways={4: pod_network.GATEWAY_V4})

    async def _refuse_second_ipam_add(self, pod: Pod, conf: NetConf) -> None:
        """While the container's handle holds addresses for this interface, a second ADD is the
        runtime's mistake (CNI spec: no ADD twice for a (CNI_CONTAINERID, CNI_IFNAME) without a
        DEL), as for the main plugin. It took a second address under the handle; and when the
        main plugin's second ADD then failed, it called this plugin's DEL, which freed the
        running pod's address with it. Refused before anything is taken (host-local refuses a
        duplicate too). The same container on another CNI_IFNAME of the network is another
        attachment, which the spec allows and host-local serves; an address with no interface
        recorded may be this interface's, and refuses it."""
        held, _ = await self._addresses_of_interface(pod.handle_id, pod.ifname, unrecorded=True)
        if held:
            raise CNIError(INTERFACE_EXISTS,
                           f"container {pod.container_id} already holds {', '.join(held)} on "
                           f"network {conf.name} for {pod.ifname} (IPAM handle "
                           f"{pod.handle_id}); DEL it before adding it again")

    async def ipam_del(self, request: dict[str, Any], conf: NetConf) -> None:
        pod = Pod(request, conf, deleting=True)
        await self._release_pod_attachment(pod, unrecorded=True)

    async def ipam_check(self, request: dict[str, Any], conf: NetConf) -> None:
        pod = Pod(request, conf)
        # This attachment's: the container's other interfaces on the network are in other
        # results.
        held = set((await self._addresses_of_interface(pod.handle_id, pod.ifname,
                                                       unrecorded=True))[0])
        result = {str(ipaddress.ip_interface(ip["address"]).ip)
                  for ip in (conf.prev_result or {}).get("ips", [])}
        # What this plugin gave must be in the result; an address another plugin of the chain
        # added beside it is not this plugin's to vouch for.
        if not held or not held <= result:
            raise CNIError(CHECK_FAILED, f"{pod.handle_id} holds {sorted(held)}, but the result "
                                         f"has {sorted(result)}")

    # -- STATUS and GC -------------------------------------------------------------------------

    async def status(self, conf: NetConf) -> None:
        """CNI STATUS: 50 ("cannot service ADD") while an ADD would fail for want of an address:
        the datastore cannot be read, no pool is enabled, or for a family the configuration
        assigns, the pools this node may take from (those it names, else the Automatic ones)
        are full. Counted as `percalectl ipam show` counts (ipam.usage), from one read of the
        blocks, a region of a pool no block holds yet as free. Cheap, so it weighs neither
        block affinity nor namespaceSelectors: it errs towards "available", where ADD says why."""
        node = self._node(conf)
        try:
            pools = await self.ipam.pools()
            listed = (await self.store.list("IPAMBlock", defer_errors=True)).items
            # An unreadable reservation or block is left out: its addresses count as free.
            reservations = await read_reservations(self.store, lambda err: None)
            try:
                labels = (await self.store.get(Key("Node", node))).value.metadata.labels
            except NotFound:
                labels = {}  # not registered yet: only pools selecting every node serve it
        except DatastoreError as err:
            raise CNIError(NOT_AVAILABLE, f"the datastore is not reachable: {err}") from None
        if not any(not p.spec.disabled for p in pools):
            raise CNIError(NOT_AVAILABLE, "no enabled IP pool: pods cannot get addresses yet")
        blocks = []
        for kv in listed:
            try:
                blocks.append(kv.value)
            except DatastoreError:
                pass
        for version, assigned, named in ((4, conf.ipam.assign_ipv4, conf.ipam.ipv4_pools),
                                         (6, conf.ipam.assign_ipv6, conf.ipam.ipv6_pools)):
            if not assigned:
                continue
            serving = [p for p in usable(pools, version, labels) if _serves_config(p, named)]
            if not serving:
                raise CNIError(NOT_AVAILABLE, f"no enabled IPv{version} pool serves node {node}: "
                                              "pods cannot get addresses")
            counted = usage(serving, blocks, reservations).pools
            if not any(p.free > 0 for p in counted):
                full = ", ".join(f"{p.name} {p.in_use} of {p.capacity} in use" for p in counted)
                raise CNIError(NOT_AVAILABLE, f"every IPv{version} pool node {node} may take from "
                                              f"is full ({full}): pods cannot get addresses")

    async def gc(self, conf: NetConf) -> None:
        """Release this network's allocations on this node whose attachment the runtime no
        longer lists in cni.dev/valid-attachments."""
        if conf.valid_attachments is None:
            # A key of the configuration the runtime derives for GC (CNI spec, "GC: Input"),
            # not a variable of its environment.
            raise CNIError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments in the network "
                                           "configuration (the attachments still in use)")
        valid = {f"{conf.name}.{a['containerID']}" for a in conf.valid_attachments}
        node = self._node(conf)
        # A runtime lists every attachment it still has, so one it does not list is gone; but
        # if its host veth still stands (a sandbox the runtime lost track of), its routes hold
        # the addresses: they go first, with its endpoint, as DEL takes them, or the next pod
        # given one of the addresses would find its route taken.
        endpoints = [kv for kv in (await self.store.list("WorkloadEndpoint")).items
                     if kv.value.spec.node == node]
        collected: list[tuple[str, list[str], list[Allocation]]] = []
        for kv in (await self.store.list("IPAMHandle")).items:
            handle = kv.value.spec.handle_id
            if not handle.startswith(f"{conf.name}.") or handle in valid:
                continue
            holding = await self.ipam.holding(handle)
            owners = holding.allocations if holding is not None else []
            if owners and all(o.attributes.get("node") == node and of_network(handle, conf.name)
                              for o in owners):
                collected.append((handle, [o.address for o in owners], owners))
        # A container's endpoints: those listing an address its handle holds (another network
        # attached to the same container has other handles and addresses).
        of_collected = {handle: [kv for kv in endpoints
                                 if f"{conf.name}.{kv.value.spec.container_id}" == handle
                                 and any(str(ipaddress.ip_interface(n).ip) in addresses
                                         for n in kv.value.spec.ip_networks)]
                        for handle, addresses, _ in collected}
        gone = {kv.key for kvs in of_collected.values() for kv in kvs}
        # A host veth is named for the pod, not the container (host_veth_name): a newer
        # container of the same pod, still in use, has the one a collected container had.
        in_use = {kv.value.spec.interface_name for kv in endpoints if kv.key not in gone}
        for handle, _, owners in collected:
            mine = of_collected[handle]
            # Its veth found by name as well: an ADD killed before it stored the endpoint, or an
            # endpoint deleted by hand, left a veth that no endpoint names.
            veths = {kv.value.spec.interface_name for kv in mine} | set(_host_veths_of(owners))
            for veth in sorted(v for v in veths if v and v not in in_use and v not in self.adding):
                await self.workers.run(pod_network.remove_host_veth, veth)
            for endpoint in mine:
                try:
                    await self.store.delete(endpoint.key, revision=endpoint.revision)
                except (NotFound, Conflict):
                    pass  # deleted, or taken by a newer ADD of the pod, meanwhile
            await self.ipam.release_by_handle(handle)


def _split_by_interface(holding: Holding | None, ifname: str, unrecorded: bool,
                        ) -> tuple[dict[str, int | None], list[str]]:
    """What a handle holds for interface `ifname`, each address with its sequence number (so a
    release cannot free the address once it is handed out again): the addresses recorded as
    given to it, and with `unrecorded` those with no interface recorded. Then the addresses it
    holds for other interfaces."""
    mine: dict[str, int | None] = {}
    kept: list[str] = []
    for allocation in holding.allocations if holding is not None else ():
        given_to = allocation.attributes.get("interface")
        if given_to == ifname or (given_to is None and unrecorded):
            mine[allocation.address] = allocation.sequence_number
        else:
            kept.append(allocation.address)
    return mine, kept


def _host_veths_of(allocations: Iterable[Allocation | None]) -> list[str]:
    """The host veth names the pods holding these allocations were wired with, from the pod,
    namespace and interface each records (an allocation from before percale recorded the
    interface was eth0's)."""
    return [pod_network.host_veth_name(a.attributes["namespace"], a.attributes["pod"],
                                       a.attributes.get("interface") or "eth0")
            for a in allocations
            if a is not None and a.attributes.get("namespace") and a.attributes.get("pod")]


def _same_mac(found: str, recorded: str | None) -> bool:
    """Whether the kernel's MAC is the one the endpoint records (none recorded: any)."""
    return not recorded or found.lower() == recorded.lower()


def _serves_config(pool: IPPool, named: list[str]) -> bool:
    """Whether an ADD under a configuration that names the pools `named` (by name or CIDR; none:
    any Automatic one) may take from `pool`. A Manual pool serves only requests that name it."""
    if named:
        return pool.metadata.name in named or pool.spec.cidr in named
    return pool.spec.assignment_mode == "Automatic"


def of_network(handle: str, network: str) -> bool:
    """Whether the allocation under `handle` ("<network>.<container ID>", Calico's) is of CNI
    network `network`. Both parts may hold dots: "k8s-pod-network.v2.c1" is container c1 of
    network k8s-pod-network.v2 as much as container v2.c1 of k8s-pod-network (GC of the one
    freed the live pods of the other). So it is `network`'s only when no dot follows
    "<network>.", where no longer network name can claim it; a container ID with a dot (rare:
    runtimes use hex) is then never collected by GC, which keeps it rather than free a live
    pod's address. The allocation's attributes stay Calico's (node, namespace, pod, timestamp),
    with percale's interface beside them (Calico's are a free map of strings)."""
    container = handle.removeprefix(f"{network}.")
    return container != handle and "." not in container


def endpoint_args(conf: NetConf) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The pod's labels and named ports a runtime passes in the network configuration's args:
    `args.cni.labels` ([{key, value}], the CNI conventions' form) and percale's
    `args.percale.namedPorts` ([{name, protocol, port}]). Policy selects and resolves with them
    where no Kubernetes Pod says (the etcd datastore, the lab). A refusal names the field by its
    path in the configuration."""
    args = _object(conf.raw, "args")
    labels: dict[str, str] = {}
    items = _object(args, "cni", "args.").get("labels") or []
    if not isinstance(items, list):
        raise CNIError(INVALID_CONFIG, "args.cni.labels must be a list of {\"key\": ..., \"value\": ...}")
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not isinstance(item.get("value"), str):
            raise CNIError(INVALID_CONFIG, "args.cni.labels: each label is {\"key\": ..., \"value\": ...} with strings")
        labels[item["key"]] = item["value"]
    ports = _object(args, "percale", "args.").get("namedPorts") or []
    if not isinstance(ports, list):
        raise CNIError(INVALID_CONFIG, "args.percale.namedPorts must be a list")
    try:
        ObjectMeta(name="labels", labels=labels)
    except ValidationError as err:
        raise CNIError(INVALID_CONFIG, f"args.cni.labels: {validation_problems(err)[0].reason}") from None
    checked = []
    for i, port in enumerate(ports):
        try:
            checked.append(WorkloadEndpointPort.model_validate(port).model_dump(by_alias=True,
                                                                                exclude_none=True))
        except ValidationError as err:
            problem = validation_problems(err)[0]
            where = f"args.percale.namedPorts[{i}]" + (f".{problem.field}" if problem.field else "")
            raise CNIError(INVALID_CONFIG, f"{where}: {problem.reason}") from None
    return labels, checked


def _object(parent: dict[str, Any], key: str, path: str = "") -> dict[str, Any]:
    value = parent.get(key)
    value = {} if value is None else value  # [] or "" is no object: refused, not read as absent
    if not isinstance(value, dict):
        raise CNIError(INVALID_CONFIG, f"{path}{key} must be an object")
    return value


# The CNI version each command came in; a configuration of an older version cannot ask for it
# (libcni refuses so too). GC's list of attachments in use is a key only 1.1.0 defines.
_COMMAND_SINCE = {"CHECK": (0, 4, 0), "STATUS": (1, 1, 0), "GC": (1, 1, 0)}


def _check_version_allows(command: Any, version: str) -> None:
    since = _COMMAND_SINCE.get(command) if isinstance(command, str) else None
    if since and tuple(int(part) for part in version.split(".")) < since:
        raise CNIError(INCOMPATIBLE_VERSION, f"cniVersion {version} does not allow {command}: it "
                                             f"came in CNI {'.'.join(map(str, since))}")


def _check_netns(path: str, command: str) -> None:
    problem = pod_network.netns_problem(path)
    if problem:
        raise CNIError(INVALID_ENVIRONMENT, f"{command}: CNI_NETNS {path!r} {problem}")
