# imip-gateway container image.  Build: docker build -t imip-gateway .
# Configuration comes from IMIP_GATEWAY_* environment variables (see
# config/gateway.example.toml) or a file mounted at /etc/imip-gateway/imip-gateway.toml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Install the package (with the PostgreSQL driver) before creating the runtime user,
# so the code is owned by root and read-only for the gateway.
COPY pyproject.toml README.md LICENSE ./
COPY gateway/ gateway/
COPY migrations/ migrations/
COPY config/ config/
RUN pip install '.[postgres]'

RUN useradd --system --uid 10001 --home-dir /var/lib/imip-gateway --create-home \
        --shell /usr/sbin/nologin imip-gateway

# The schema migrations shipped with this image; runtime files and the default SQLite
# database live in the working directory /var/lib/imip-gateway (mount a volume there).
# Listeners bind to all interfaces of the container; publish them on the host's
# loopback only (see docker-compose.yml).
ENV IMIP_GATEWAY_MIGRATIONS_DIR=/app/migrations \
    IMIP_GATEWAY_LISTENERS_SMTP_HOST=0.0.0.0 \
    IMIP_GATEWAY_LISTENERS_LMTP_HOST=0.0.0.0

USER imip-gateway
WORKDIR /var/lib/imip-gateway
VOLUME ["/var/lib/imip-gateway"]
EXPOSE 10025 10024

# SIGTERM drains and exits 0 (exec form: the gateway is PID 1 and gets the signal).
STOPSIGNAL SIGTERM
CMD ["imip-gateway", "serve"]
