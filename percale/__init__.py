"""percale: Calico-style Kubernetes networking in Python.

The shared core lives here: the resource model (`percale.resources`), Calico's selector language
(`percale.selector`), the datastore contract and its backends (`percale.datastore`) and the
`percalectl` command line (`percale.cli`). The IPAM allocator, the BGP agent and the CNI plugins
build on these.
"""

__version__ = "0.1.0"
