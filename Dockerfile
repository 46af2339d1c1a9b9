# permgate: sidecar authorization gateway (small, non-root, no build tools in the final image).
#
#   docker build -t permgate .
#   docker run -p 8080:8080 -p 9090:9090 -e PERMGATE_UPSTREAM=http://api:8000 permgate
#
# Stage 1 builds wheels for permgate and every runtime dependency; stage 2 installs
# them with pip --no-index (no compilers, no network, no wheel files left behind).
# CI (.ci/deploy-check.sh) lints this file with hadolint, builds it with buildah and
# smoke-runs the result on loopback.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# README.md is the package long description (pyproject `readme`); the glob keeps the
# build working in a tree that has none yet.
COPY pyproject.toml README.md* ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels .


FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="permgate" \
      org.opencontainers.image.description="Sidecar authorization gateway for insurance APIs: tenant scope, then every permission, on every request." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The wheels come in through a bind mount, so none of them stays in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/permgate-*.whl \
 && groupadd --gid 65532 permgate \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin permgate \
 && mkdir -p /etc/permgate /var/lib/permgate \
 && chown 65532:65532 /var/lib/permgate \
 && printf '%s\n' \
      '# Defaults of the permgate image; every key can be overridden by PERMGATE_<KEY>.' \
      'listen: 0.0.0.0:8080' \
      'admin_listen: 0.0.0.0:9090' \
      'upstream: http://127.0.0.1:8000' \
      'endpoint_map: /etc/permgate/endpoint_map.yaml' \
      'store: sqlite:///var/lib/permgate/permgate.db' \
      'audit: {sink: stdout}' \
      > /etc/permgate/permgate.yaml

# The shipped endpoint map of the insurance platform's API: the default;
# on Kubernetes the chart mounts the team's own map from a ConfigMap instead.
COPY endpoint_map.yaml /etc/permgate/endpoint_map.yaml

# The only place permgate writes: the embedded SQLite store.
VOLUME ["/var/lib/permgate"]
WORKDIR /var/lib/permgate
USER 65532:65532
EXPOSE 8080 9090

# Probes /healthz on the admin listener (PERMGATE_ADMIN_LISTEN if set, else :9090).
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; h, _, p = os.environ.get('PERMGATE_ADMIN_LISTEN', ':9090').rpartition(':'); h = '127.0.0.1' if h in ('', '0.0.0.0', '::', '[::]') else h; u.urlopen(f'http://{h}:{p}/healthz', timeout=2)"]

ENTRYPOINT ["permgate"]
CMD ["serve", "--config", "/etc/permgate/permgate.yaml"]
