"""percale's BGP side, installed as `percale.bgpd`: the decisions percale-node makes about BGP.

ExaBGP holds the sessions; everything here decides what they carry and what reaches the kernel.
The pure parts (who peers with whom, the RIB) import no I/O library; the FIB owns the kernel's
percale routes. See bgpd/README.md for what is here and what is still to come.
"""
