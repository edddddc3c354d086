"""How much the BGP side logs: BGPConfiguration `logSeverityScreen` (pure).

Calico turns it into BIRD's `debug` setting (Debug: every message and route; anything else:
state changes) and confd's log level. percale's BGP side is the agent's `percale.bgpd` loggers,
so the severity sets their level: a cluster's BGP debugging is switched on and off through the
API, as with Calico, without restarting percale-node or touching its --log-level. A node's own
BGPConfiguration (`node.<name>`) that sets it wins over the global one, as confd reads them;
where neither sets it, the loggers follow --log-level.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from percale.api import BGPConfiguration
from percale.api.bgp import configuration_for

LEVELS = {"Trace": logging.DEBUG, "Debug": logging.DEBUG, "Info": logging.INFO,
          "Warning": logging.WARNING, "Error": logging.ERROR, "Fatal": logging.CRITICAL}


def bgp_log_level(node: str, configs: Iterable[BGPConfiguration]) -> int | None:
    """The level of `node`'s percale.bgpd loggers, or None: --log-level's."""
    chosen = configuration_for(node, configs, "log_severity_screen")
    if chosen is None or chosen.spec.log_severity_screen is None:
        return None
    return LEVELS[chosen.spec.log_severity_screen]
