# The gateway image: `docker compose -f compose/docker-compose.yml up` builds it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml setup.cfg README.md ./
COPY tentaculo ./tentaculo
COPY providers ./providers
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/tentaculo --create-home tentaculo

USER tentaculo
ENV TENTACULO_HOST=0.0.0.0 \
    TENTACULO_PORT=8000 \
    TENTACULO_LOG_FORMAT=json \
    TENTACULO_STATE_DIR=/var/lib/tentaculo
EXPOSE 8000
STOPSIGNAL SIGINT
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
CMD ["tentaculo", "run"]
