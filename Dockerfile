# syntax=docker/dockerfile:1
# The gateway image used by docker-compose.yml (gateway and simulators services).
#
#   build    gcc and the Python headers; builds the railgate wheel with its compiled fast path
#            (Cython, a build requirement only; RAILGATE_REQUIRE_EXT=1 makes a failed compile fail
#            the build instead of falling back to the pure-Python path) and the dependencies' wheels.
#            Only the wheels reach the runtime stage.
#   runtime  python:3.11-slim with the wheels installed and no compiler, run as the unprivileged
#            user railgate (uid/gid 10001), its state in the /var/lib/railgate volume.
#
# No secrets in the image: config/ is not copied. The line file (MAC keys, the MySQL password) is
# mounted at run time; docker-compose.yml mounts it as the secret /run/secrets/railgate-line.yaml:
#   docker run -v $PWD/line.yaml:/run/secrets/railgate-line.yaml:ro -v railgate-state:/var/lib/railgate \
#              -p 17001:17001 -p 17002:17002 -p 17100:17100/udp railgate
# The line file's gateway.state_dir must be /var/lib/railgate and gateway.admin must be where the
# health check looks (RAILGATE_HEALTH_URL, default http://127.0.0.1:8080/status).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY gateway gateway
COPY codecs codecs
COPY alarms alarms
COPY simulators simulators
RUN RAILGATE_REQUIRE_EXT=1 pip wheel --no-cache-dir --wheel-dir /wheels . \
 && python -c "import sys, zipfile, glob; names = zipfile.ZipFile(glob.glob('/wheels/railgate-*.whl')[0]).namelist(); \
sys.exit(0 if any(n.startswith('railcodecs/_core') and n.endswith('.so') for n in names) else 'no compiled core in the wheel')"

FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RAILGATE_HEALTH_URL=http://127.0.0.1:8080/status
RUN groupadd --system --gid 10001 railgate \
 && useradd --system --uid 10001 --gid railgate --home-dir /var/lib/railgate --no-create-home \
            --shell /usr/sbin/nologin railgate \
 && install -d -m 0700 -o railgate -g railgate /var/lib/railgate
# the wheels are bind-mounted from the build stage for this one step: no layer keeps them
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels railgate
COPY --chmod=0755 deploy/healthcheck.py /usr/local/bin/railgate-healthcheck
USER railgate:railgate
WORKDIR /var/lib/railgate
# journal, history.db (SQLite), kafka-relay.log: a named volume in docker-compose.yml
VOLUME ["/var/lib/railgate"]
EXPOSE 17001 17002 17100/udp 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["railgate-healthcheck"]
STOPSIGNAL SIGTERM
CMD ["gateway", "run", "-c", "/run/secrets/railgate-line.yaml"]
