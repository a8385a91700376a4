# The gateway image used by docker-compose.yml (gateway and simulators services).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY codecs codecs
COPY alarms alarms
COPY simulators simulators
COPY config config
COPY docs docs
RUN pip install --no-cache-dir . && mkdir -p /var/lib/railgate
EXPOSE 17001 17002 17100/udp 8080
CMD ["gateway", "run", "-c", "/app/config/compose-line.yaml"]
