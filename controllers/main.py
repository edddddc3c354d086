"""`percale-controllers`: cluster-wide work that belongs to no one node, one instance per cluster
(as Calico runs calico-kube-controllers as a single-replica Deployment).

Today that is IPAM garbage collection (ipam/gc.py, Calico's kube-controllers IPAM GC, calico.md
§1.9): every `--gc-interval` a full round finds addresses no pod uses and releases them once
they are confirmed leaks (`--leak-grace-period`, 15 minutes; at once for a deleted node; 0 turns
leak collection off, as Calico's leakGracePeriod: 0 does), and
gives back a node's empty blocks after two rounds saw them empty (never the last block of a node
that still exists; a deleted node's in the round its addresses go). A block given back is
withdrawn by its node's agent and can be claimed again by any node.

Several instances would be safe (every release is a compare-and-swap with the sequence number
it checked) but wasteful.

A round that fails (datastore unavailable, too many conflicts, a bug) is logged and the next
round runs as planned: the process holds the grace timers, which a restart would start over.

With `--metrics-listen HOST:PORT` it serves Prometheus metrics of the last round at /metrics
(`controllers/metrics.py`; the operator's Deployment listens on Calico kube-controllers' port,
9094).
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from datetime import datetime, timedelta, timezone
from typing import Annotated, Optional

import typer

from percale.api.listen import listen_address
from percale.controllers.metrics import serve_metrics
from percale.datastore.options import (
    ConfigFile,
    EtcdCACertFile,
    EtcdCertFile,
    EtcdEndpoints,
    DatastoreType,
    EtcdKeyFile,
    Kubeconfig,
    datastore_settings,
)
from percale.datastore import DatastoreError
from percale.datastore.config import ConfigError, load_config, open_datastore
from percale.ipam.allocator import IPAM
from percale.ipam.errors import IPAMError
from percale.ipam.gc import DEFAULT_GRACE_PERIOD, GarbageCollector

log = logging.getLogger("percale.controllers")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


# The longest duration either option takes: a year is already far past any sensible round or
# grace period, and a bound keeps timedelta and asyncio's timers from overflowing.
LONGEST = 365 * 24 * 3600


def seconds(text: str, option: str, *, zero: bool = True) -> float:
    """'300', '300s', '5m', '1h' -> seconds; a bad value names the option. `zero`: whether 0
    is a meaningful value of the option."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if not text.isascii() or "_" in text:
            raise ValueError(text)  # float() would read '１２' and '1_0' as numbers
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        value = math.nan
    # Comparisons with NaN are all false, so "nan" is refused here along with "soon".
    if not 0 <= value <= LONGEST:
        raise typer.BadParameter(f"{text!r} is not a duration such as 30s, 5m or 1h (at most "
                                 f"a year)", param_hint=option)
    if value == 0 and not zero:
        raise typer.BadParameter("must be longer than 0", param_hint=option)
    return value


async def run(settings: dict, interval: float, grace: float, rounds: int | None,
              metrics_listen: tuple[str, int] | None = None) -> None:
    store = open_datastore(load_config(**settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    collector = GarbageCollector(IPAM(store), grace_period=timedelta(seconds=grace))
    metrics = None
    if metrics_listen is not None:
        try:
            metrics = serve_metrics(collector, metrics_listen)
        except OSError as err:
            await store.close()
            host, port = metrics_listen
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise OSError(f"--metrics-listen (PERCALE_METRICS_LISTEN) {shown!r}: cannot listen "
                          f"there: {err.strerror or err}") from None
    done = 0
    try:
        while not stop.is_set() and (rounds is None or done < rounds):
            try:
                outcome = await collector.run_once(datetime.now(timezone.utc))
                if outcome.released or outcome.released_blocks or outcome.candidates:
                    log.info("IPAM GC: %d candidate leaks, %d addresses released, %d empty "
                             "blocks released", outcome.candidates, outcome.released,
                             outcome.released_blocks)
            except (DatastoreError, IPAMError) as err:
                # IPAMError: TooManyConflicts, the round lost to other writers too often. The
                # next round scans afresh; ending here would lose every grace timer kept so far.
                log.warning("IPAM GC round failed, trying again next round: %s", err)
                log.debug("The failed round's traceback:", exc_info=True)
            except Exception:
                # A bug in one round, for the same reason; cancellation (SIGTERM's stop aside)
                # is no Exception and still ends the loop.
                log.exception("IPAM GC round failed unexpectedly, trying again next round")
            done += 1
            try:
                # not wait_for, which in Python 3.11 can swallow a cancellation for good
                async with asyncio.timeout(interval):
                    await stop.wait()
            except TimeoutError:
                pass
    finally:
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()
        await store.close()


@app.command()
def main(
    config: ConfigFile = None,
    etcd_endpoints: EtcdEndpoints = None,
    etcd_ca_cert_file: EtcdCACertFile = None,
    etcd_cert_file: EtcdCertFile = None,
    etcd_key_file: EtcdKeyFile = None,
    datastore_type: DatastoreType = None,
    kubeconfig: Kubeconfig = None,
    gc_interval: Annotated[str, typer.Option(
        envvar="PERCALE_GC_INTERVAL", help="Time between IPAM GC rounds (30s, 5m, ...)")] = "5m",
    leak_grace_period: Annotated[str, typer.Option(
        envvar="PERCALE_LEAK_GRACE_PERIOD",
        help="How long an unused address stays allocated before GC releases it (0: never). "
             "On a node that has no Node (deleted, even before GC first ran) it goes in the "
             "next round at any value, with the node's blocks and affinities, once older "
             "than 60s")] =
        f"{int(DEFAULT_GRACE_PERIOD.total_seconds())}s",
    rounds: Annotated[Optional[int], typer.Option(
        min=1, help="Stop after this many rounds (default: run until SIGTERM)")] = None,
    metrics_listen: Annotated[str, typer.Option(
        envvar="PERCALE_METRICS_LISTEN",
        help="HOST:PORT for Prometheus /metrics of IPAM GC ([ADDR]:PORT for IPv6, :PORT for"
        " 127.0.0.1); empty (the default) for none. Calico kube-controllers uses port 9094")] = "",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run percale's cluster-wide controllers (IPAM garbage collection) until SIGTERM."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # An interval of 0 would be a busy loop against the datastore.
    interval = seconds(gc_interval, "--gc-interval", zero=False)
    grace = seconds(leak_grace_period, "--leak-grace-period")
    try:
        listen = listen_address(metrics_listen) if metrics_listen else None
    except ValueError as err:
        raise typer.BadParameter(f"{metrics_listen!r}: {err}",
                                 param_hint="--metrics-listen (PERCALE_METRICS_LISTEN)") from None
    settings = datastore_settings(config, etcd_endpoints, etcd_ca_cert_file, etcd_cert_file,
                                  etcd_key_file, datastore_type, kubeconfig)
    try:
        asyncio.run(run(settings, interval, grace, rounds, listen))
    except (ConfigError, DatastoreError, OSError) as err:
        typer.echo(f"percale-controllers: {err}", err=True)
        raise typer.Exit(1) from None


def entry() -> None:
    app()
