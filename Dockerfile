# One image for every service of docker-compose.yml; the command picks the part.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir --config-settings editable_mode=compat -e .
USER nobody
