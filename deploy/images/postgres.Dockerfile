# PostgreSQL 15 from Debian bookworm, for a machine that cannot pull postgres:15-bookworm
# (docker-compose.local.yaml). Behaves like the official image as far as the stack uses it:
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, scripts in /docker-entrypoint-initdb.d/ run
# once on an empty /var/lib/postgresql/data, pg_isready for the healthcheck.
ARG BASE_IMAGE=lockstep-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 gosu \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /docker-entrypoint-initdb.d /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:${PATH} \
    PGDATA=/var/lib/postgresql/data
COPY deploy/images/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["bash", "/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
