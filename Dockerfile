# The worker image: one process per task (`python -m service worker`); the same image runs the
# `migrate` and `digest` tasks with another command.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app pipeline \
    && mkdir -p /app /scratch && chown pipeline /scratch
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER pipeline
WORKDIR /app
# Temp space for downloads and stamped outputs: mount ephemeral storage here on Fargate.
ENV WORK_DIR=/scratch PYTHONUNBUFFERED=1 LOG_FORMAT=json
ENTRYPOINT ["python", "-m", "service"]
CMD ["worker"]
