# syntax=docker/dockerfile:1
# One image for both services; docker-compose.yml picks the service with
# `command:`. Build: docker build -t votes-app:latest .

# ---- builder: resolve and install the pinned dependencies into a venv ----
FROM python:3.11.13-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Only the lock first, so code changes don't reinstall dependencies. The
# lock (pip-compile --generate-hashes of requirements.txt) pins the whole
# runtime closure with hashes: nothing floats, nothing unverified installs.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --require-hashes --no-deps -r /tmp/requirements.lock

# ---- runtime: the venv plus the code, run as an unprivileged user ----
FROM python:3.11.13-slim-bookworm

ARG VERSION=1.0.0
LABEL org.opencontainers.image.title="votes" \
      org.opencontainers.image.description="Up/down votes on posts, counted exactly once, on Nameko, RabbitMQ and Redis" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Fixed uid/gid, so volume and file ownership is predictable across hosts.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app

WORKDIR /app

COPY --from=builder /opt/venv /opt/venv
# Code stays root-owned (read-only to the app user); byte-compiled at build
# time because the container may run with a read-only root filesystem.
COPY services/ ./services/
COPY config.yml ./
RUN python -m compileall -q services

USER 10001:10001

# gateway HTTP API / votes health+metrics
EXPOSE 5000 9100

# Sensible default; compose overrides it per service.
CMD ["nameko", "run", "--config", "config.yml", "services.gateway.service"]
