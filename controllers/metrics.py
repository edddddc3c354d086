"""percale-controllers' /metrics: the IPAM garbage collector's, read from it when Prometheus
asks, on a thread of prometheus_client's own server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from percale.ipam.gc import GarbageCollector


class GCMetrics:
    """The collector's metrics, read from it when Prometheus asks (from the server's thread:
    each is one int the event loop replaces whole, so no read sees half a round).

    Names are Calico kube-controllers' (calico.md §1.9), so its dashboards and alerts carry
    over, with percale's prefix (STYLE.md 6) and `_total` on counters (Prometheus naming):
      percale_ipam_allocations_gc_candidates           Calico's ipam_allocations_gc_candidates:
                                                       unused addresses in their grace period;
                                                       staying above 0 means GC is stuck
      percale_ipam_allocations_gc_reclamations_total   Calico's ipam_allocations_gc_reclamations:
                                                       addresses released
    and two of percale's own, named after them:
      percale_ipam_allocations_gc_held_back            unused addresses kept because an object
                                                       that may own them cannot be read
      percale_ipam_blocks_gc_reclamations_total        empty blocks given back
    No labels: a round's GCRound keeps the cluster's totals."""

    def __init__(self, collector: GarbageCollector):
        self.collector = collector

    def collect(self):
        last = self.collector.last_round
        yield GaugeMetricFamily(
            "percale_ipam_allocations_gc_candidates",
            "Addresses allocated but used by no one, as the last IPAM GC round found them",
            value=last.candidates)
        yield GaugeMetricFamily(
            "percale_ipam_allocations_gc_held_back",
            "Unused addresses the last IPAM GC round kept because an object that may own them "
            "cannot be read (the log names it)", value=last.held_back)
        yield CounterMetricFamily(
            "percale_ipam_allocations_gc_reclamations",
            "Leaked addresses IPAM GC released", value=self.collector.total_released)
        yield CounterMetricFamily(
            "percale_ipam_blocks_gc_reclamations",
            "Empty blocks IPAM GC gave back", value=self.collector.total_released_blocks)


def serve_metrics(collector: GarbageCollector, listen: tuple[str, int]):
    """Serve /metrics on `listen` from a thread of prometheus_client's; OSError if this machine
    cannot listen there. Returns the server, to shut down."""
    registry = CollectorRegistry()
    registry.register(GCMetrics(collector))
    server, _ = start_http_server(listen[1], addr=listen[0], registry=registry)
    return server
