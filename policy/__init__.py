"""Network policy: Kubernetes NetworkPolicies converted into percale's model (convert), a reference
evaluator of the semantics (reference), and the compiler to an nftables ruleset (compile)."""
