# The courier image: `courier ingest`, `courier worker ...` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY courier ./courier
COPY workflows ./workflows
COPY activities ./activities
COPY ingest ./ingest
COPY worker.py ./
RUN pip install . \
 && useradd --create-home --uid 10001 courier \
 && mkdir -p /data /config \
 && chown courier /data
COPY config/ /config/

USER courier
CMD ["courier", "--help"]
