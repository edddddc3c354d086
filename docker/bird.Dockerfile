# BIRD 2 from Debian as the cluster's route reflector (docker/bird-rr.conf).
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bird2 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /run/bird
COPY docker/bird-rr.conf /etc/bird/bird.conf
EXPOSE 179
# In the foreground, logging to stderr (docker logs); `birdc` finds /run/bird/bird.ctl.
CMD ["bird", "-f", "-c", "/etc/bird/bird.conf", "-s", "/run/bird/bird.ctl"]
