# The worker image: one process per task (`python -m service worker`); the same image runs the
# `migrate` and `digest` tasks with another command.
#
# BASE_IMAGE: any Debian-like image with python3 (3.11+) and its venv module. The default is the
# official slim image; CI builds on a Debian bookworm base made by debootstrap (python3,
# python3-venv, ca-certificates: scripts/container-build), which has no `pip` on PATH, so the
# project is installed into its own venv, /opt/venv, with the venv's pip.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY service ./service
RUN /opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/venv/bin/python -m pip uninstall --yes pip

FROM ${BASE_IMAGE}
# Same base as the build stage, so the venv's interpreter link (/opt/venv/bin/python3) resolves.
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --home-dir /app pipeline \
    && mkdir -p /app /scratch && chown pipeline /scratch
USER pipeline
WORKDIR /app
# Temp space for downloads and stamped outputs: mount ephemeral storage here on Fargate. The
# worker touches its heartbeat file there on every pass of its loop; `health` reads it.
ENV PATH=/opt/venv/bin:$PATH WORK_DIR=/scratch PYTHONUNBUFFERED=1 LOG_FORMAT=json METRICS=emf
# Fails when the loop made no progress for 120 s (or never started): see README, "Health check".
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "service", "health"]
ENTRYPOINT ["python", "-m", "service"]
CMD ["worker"]
