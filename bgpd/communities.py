"""The BGP communities a node adds to the routes it exports: BGPConfiguration
prefixAdvertisements, as Calico's confd renders them into BIRD's apply_communities() (pure).

Calico's rules, followed here:
- a node's own BGPConfiguration (`node.<name>`) that lists prefixAdvertisements replaces the
  global one's (`default`) whole, even with an empty list; otherwise the global one's apply;
- each advertisement names communities by value (aa:nn standard, aa:nn:mm large) or by the name
  of an entry in the same configuration's `communities`;
- every exported route inside an advertisement's CIDR (the CIDR itself included) gets its
  communities, from every advertisement that covers it; apply_communities() runs in the export
  filter of every session, so the node's own blocks, borrowed /32s and service CIDRs get them,
  and so do the routes it passes on or reflects (added to those they carry).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from percale.api import BGPConfiguration
from percale.api.bgp import community_problem, configuration_for
from percale.bgpd.prefixes import inside

Standard = tuple[int, int]
Large = tuple[int, int, int]


@dataclass(frozen=True)
class CommunityRule:
    """One prefixAdvertisement: the routes inside `network` get these communities."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    standard: tuple[Standard, ...]
    large: tuple[Large, ...]


def community_rules(node: str, configs: Iterable[BGPConfiguration]) -> tuple[CommunityRule, ...]:
    """The rules that apply on `node`, from the cluster's BGPConfigurations."""
    chosen = configuration_for(node, configs, "prefix_advertisements")
    if chosen is None:
        return ()
    defined = {c.name: c.value for c in chosen.spec.communities or ()}
    rules = []
    for advertisement in chosen.spec.prefix_advertisements or ():
        standard: dict[Standard, None] = {}
        large: dict[Large, None] = {}
        for community in advertisement.communities:
            # A literal first, as confd reads it; a name the model let through otherwise.
            value = community if community_problem(community) is None else defined.get(community)
            if value is None:
                continue
            parts = tuple(int(p) for p in value.split(":"))
            if len(parts) == 2:
                standard[parts] = None  # type: ignore[index]
            else:
                large[parts] = None  # type: ignore[index]
        if standard or large:
            rules.append(CommunityRule(ipaddress.ip_network(advertisement.cidr),
                                       tuple(standard), tuple(large)))
    return tuple(rules)


def communities_for(prefix: ipaddress.IPv4Network | ipaddress.IPv6Network,
                    rules: Iterable[CommunityRule]) -> tuple[tuple[Standard, ...], tuple[Large, ...]]:
    """The standard and large communities every rule covering `prefix` adds, each once, in the
    order the rules give them."""
    standard: dict[Standard, None] = {}
    large: dict[Large, None] = {}
    for rule in rules:
        if inside(prefix, rule.network):
            standard.update(dict.fromkeys(rule.standard))
            large.update(dict.fromkeys(rule.large))
    return tuple(standard), tuple(large)


def community_text(standard: Iterable[Standard], large: Iterable[Large]) -> str:
    """ExaBGP's words for the communities ('' for none), to follow an `announce route`."""
    parts = []
    standard, large = list(standard), list(large)
    if standard:
        parts.append(f"community [ {' '.join(f'{a}:{b}' for a, b in standard)} ]")
    if large:
        parts.append(f"large-community [ {' '.join(f'{a}:{b}:{c}' for a, b, c in large)} ]")
    return " ".join(parts)
