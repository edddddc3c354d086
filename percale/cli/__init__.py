"""percalectl, the calicoctl-like command line: resource commands now, ipam and node later."""
