# The stack's S3-protocol object store: moto's server mode (pinned moto[server]), in an image of
# its own so moto never enters the Lockstep image. moto keeps every object in memory: fine for a
# demo or a test stack, lost at a restart; in production point LOCKSTEP_INDEX_STORE and
# LOCKSTEP_S3_ENDPOINT_URL at a real S3 service or MinIO instead. The buckets are made by the
# compose service s3-init.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_INDEX_URL=${PIP_INDEX_URL} \
    PATH=/opt/venv/bin:${PATH} PYTHONUNBUFFERED=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
COPY deploy/ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null 2>&1 || true
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3.11 -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
RUN pip install -c /tmp/requirements.lock "moto[server]==5.2.6" && rm /tmp/requirements.lock \
    && useradd --uid 50001 --gid 0 --no-create-home s3
USER 50001
EXPOSE 5000
CMD ["moto_server", "-H", "0.0.0.0", "-p", "5000"]
