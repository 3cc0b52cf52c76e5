# Prometheus from Debian bookworm, for a machine that cannot pull prom/prometheus
# (docker-compose.local.yaml). The compose service passes --config.file and the storage flags;
# wget is there for the healthcheck, as in the official image.
ARG BASE_IMAGE=lockstep-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
