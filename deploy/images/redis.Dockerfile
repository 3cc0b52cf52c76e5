# Redis from Debian bookworm (7.0, BSD-licensed), for a machine that cannot pull
# redis:7.2-bookworm (docker-compose.local.yaml). redis-server and redis-cli on PATH, as the
# compose service's command and healthcheck expect.
ARG BASE_IMAGE=lockstep-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/*
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
