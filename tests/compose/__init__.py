"""The docker-compose stack, checked as far as it can be without a Docker engine.

What runs here, for real:
- docker-compose.yaml, after compose-style ${VAR} interpolation, against the Compose
  Specification JSON schema that Docker Compose v2.40.3 applies (tests/data/compose-spec.json);
- every file, folder and in-image path the stack refers to exists (and is in the build context);
- every service and healthcheck command names a real executable and subcommand of our image,
  and every --option it passes is one that command documents (`... --help`, run natively);
- the PostgreSQL init script, the Lockstep schema step and airflow-init run against a real
  PostgreSQL server with the environment the compose file gives them;
- nginx.conf passes `nginx -t` (when nginx is installed), prometheus.yml `promtool` (when
  present), and cross-file names and ports agree (proxy -> replicas, Prometheus -> replicas,
  Airflow -> execution API, everything -> postgres/redis/mlflow);
- no secret has a literal value or a default anywhere in the compose file.

The Celery provider is in the tested set; Flower lives only in the image
(deploy/requirements-docker.txt). Commands of image-only packages are checked when they are
importable; to check them without touching the venv:
    pip install --target /tmp/docker-extras --no-deps -r deploy/requirements-docker.txt
    LOCKSTEP_DOCKER_EXTRAS=/tmp/docker-extras pytest tests/compose
"""
