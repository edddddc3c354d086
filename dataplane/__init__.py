"""percale's dataplane: everything that writes the kernel (pod wiring, the FIB, blackholes)."""
