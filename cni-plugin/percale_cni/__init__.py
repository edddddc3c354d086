"""The percale CNI plugins: shim.py, which `percalectl cni install` copies into /opt/cni/bin."""
