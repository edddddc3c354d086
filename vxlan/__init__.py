"""percale's VXLAN side: which routes go through the tunnel (plan.py, pure), the node's tunnel
address (tunnel_address.py), and the agent part that keeps the device, its tunnel ends and the
VXLAN routes current (agent.py). See docs/architecture.md."""
