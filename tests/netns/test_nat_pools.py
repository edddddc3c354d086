"""natOutgoing as the kernel gets it from the node's IPPool follower, in a fresh network namespace:
a disabled pool's addresses are still masqueraded, a LoadBalancer pool's addresses are not kept
from masquerade, an MTU file that cannot be written holds none of it back, and a table someone
flushed away is written again at the next check."""

from __future__ import annotations

import json

import pytest

from tests.helpers.netns_script import run_in_new_netns

pytestmark = pytest.mark.netns

SCRIPT = r"""
import asyncio, json, pathlib, shutil, subprocess, sys, tempfile
from percale.api import parse
from percale.dataplane.nat import OutgoingNAT
from percale.datastore import MemoryDatastore
from percale.datastore.cache import Cache
from percale.node.pools import PoolFollower

def pool(name, cidr, **spec):
    return parse({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": name},
                  "spec": {"cidr": cidr, **spec}})

def elements(listing, name):
    for item in listing["nftables"]:
        found = item.get("set")
        if found and found["name"] == name:
            return sorted(f"{e['prefix']['addr']}/{e['prefix']['len']}" if "prefix" in e else json.dumps(e)
                          for e in found.get("elem", []))
    return None

async def main():
    memory = MemoryDatastore()
    for p in (pool("old-pods", "10.244.0.0/16", natOutgoing=True, disabled=True),
              pool("new-pods", "10.250.0.0/16", natOutgoing=True),
              pool("services", "192.0.2.0/24", allowedUses=["LoadBalancer"])):
        await memory.create(p)
    blocker = pathlib.Path(tempfile.mkdtemp()) / "not-a-directory"
    blocker.write_text("")
    cache = Cache(memory, ["IPPool"])
    follower = PoolFollower(cache, 1500, str(blocker / "mtu"), OutgoingNAT())
    tasks = [asyncio.create_task(cache.run()), asyncio.create_task(follower.run())]
    for _ in range(300):
        done = subprocess.run(["nft", "-j", "list", "table", "ip", "percale"], capture_output=True, text=True)
        if done.returncode == 0:
            listing = json.loads(done.stdout)
            print(json.dumps({"masq": elements(listing, "masq-pools"),
                              "all": elements(listing, "all-pools")}))
            break
        await asyncio.sleep(0.01)
    else:
        print(json.dumps(None))
    for task in tasks:
        task.cancel()
    shutil.rmtree(blocker.parent)

asyncio.run(main())
"""


def test_the_kernel_masquerades_a_disabled_pool_while_the_mtu_file_cannot_be_written():
    done = run_in_new_netns("pnat", SCRIPT)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found is not None, f"no natOutgoing table was written: {done.stderr}"
    assert found == {"masq": ["10.244.0.0/16", "10.250.0.0/16"], "all": ["10.244.0.0/16", "10.250.0.0/16"]}


FLUSHED = r"""
import asyncio, subprocess, tempfile
from percale.api import parse
from percale.dataplane.nat import OutgoingNAT
from percale.datastore import MemoryDatastore
from percale.datastore.cache import Cache
from percale.node.pools import PoolFollower

def present():
    return subprocess.run(["nft", "list", "table", "ip", "percale"], capture_output=True).returncode == 0

async def until(check, seconds):
    for _ in range(int(seconds * 100)):
        if check():
            return True
        await asyncio.sleep(0.01)
    return False

async def main():
    memory = MemoryDatastore()
    await memory.create(parse({"apiVersion": "percale.io/v1", "kind": "IPPool",
                               "metadata": {"name": "pods"},
                               "spec": {"cidr": "10.244.0.0/16", "natOutgoing": True}}))
    cache = Cache(memory, ["IPPool"])
    follower = PoolFollower(cache, 1500, tempfile.mkdtemp() + "/mtu", OutgoingNAT(), resync=0.5)
    tasks = [asyncio.create_task(cache.run()), asyncio.create_task(follower.run())]
    written = await until(present, 3)
    subprocess.run(["nft", "flush", "ruleset"], check=True)  # as `systemctl restart nftables`
    flushed = not present()
    back = await until(present, 3)
    print(written, flushed, back)
    for task in tasks:
        task.cancel()

asyncio.run(main())
"""


def test_a_flushed_natoutgoing_table_is_written_again():
    """Pods lost outbound NAT until a pool changed or the agent restarted."""
    done = run_in_new_netns("pnat", FLUSHED)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"], done.stdout + done.stderr


TUNNEL_FIX = r"""
import json, subprocess
from percale.dataplane.nat import OutgoingNAT

nat = OutgoingNAT()
# No pool masquerades, but both families have VXLAN pools: the source fix alone.
nat.sync([], ["10.244.0.0/16", "fd00:10::/48"], tunnels=[4, 6])
rules = {}
for family in ("ip", "ip6"):
    listing = subprocess.run(["nft", "list", "table", family, "percale"], capture_output=True,
                             text=True, check=True).stdout
    rules[family] = [line.strip() for line in listing.splitlines() if "masquerade" in line]
nat.sync([], ["10.244.0.0/16"], tunnels=[])
gone = subprocess.run(["nft", "list", "table", "ip", "percale"], capture_output=True).returncode != 0
print(json.dumps({"rules": rules, "gone": gone}))
"""


def test_the_tunnel_device_gets_felixs_source_fix_without_any_masquerading_pool():
    """A host process bound to the node IP sending into vxlan.percale leaves with the tunnel
    address, as felix's rule makes it: with the node IP, a peer with strict rp_filter dropped
    its packets (the route back to the node IP is not through the tunnel)."""
    done = run_in_new_netns("pnat", TUNNEL_FIX)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["rules"] == {
        "ip": ['oifname "vxlan.percale" fib saddr . oif type != local fib saddr type local masquerade'],
        "ip6": ['oifname "vxlan6.percale" fib saddr . oif type != local fib saddr type local masquerade'],
    }
    assert found["gone"]
