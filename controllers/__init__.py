"""percale-controllers: the cluster-wide controllers (Calico's calico-kube-controllers)."""
