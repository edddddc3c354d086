# A percale node: percale-node (with ExaBGP), percalectl and the CNI plugins, installed by the
# README's own steps (`bash scripts/dev.sh setup`: the Debian packages, then .venv from
# pyproject.toml), so the image and a host set up by hand cannot drift apart.
# docker-compose.yml runs it privileged: the agent writes sysctls, veths, routes and blackholes.
FROM debian:bookworm
WORKDIR /percale
COPY . /percale
# .dockerignore keeps the host's .venv out: its stamp would make dev.sh skip the install.
RUN bash scripts/dev.sh setup && rm -rf /var/lib/apt/lists/* /root/.cache/pip
ENV PATH=/percale/.venv/bin:$PATH
CMD ["percale-node"]
