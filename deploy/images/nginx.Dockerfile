# nginx from Debian bookworm, for a machine that cannot pull nginx:1.28-alpine
# (docker-compose.local.yaml). The compose file mounts deploy/nginx.conf over
# /etc/nginx/nginx.conf; wget is there for the healthcheck, as in the alpine image.
ARG BASE_IMAGE=lockstep-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light wget \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/*
EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
