# etcd from Debian's package, the same one `bash scripts/dev.sh` installs on a host; etcdctl
# (etcd-client) too, for the health check the other services wait on.
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server etcd-client \
    && rm -rf /var/lib/apt/lists/*
EXPOSE 2379
CMD ["etcd", "--name", "etcd", "--data-dir", "/var/lib/etcd", \
     "--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", "http://etcd:2379", \
     "--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000"]
