# Wheels are built in a first stage, so the final image has no compilers.
FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY streamer ./streamer
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.14-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /var/lib/streamer streamer \
 && mkdir -p /var/lib/streamer /input \
 && chown streamer:streamer /var/lib/streamer
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER streamer
ENV PYTHONUNBUFFERED=1 \
    STREAMER_WATCH_DIRECTORY=/input \
    STREAMER_CHECKPOINT_PATH=/var/lib/streamer
VOLUME ["/var/lib/streamer"]
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
ENTRYPOINT ["streamer"]
CMD ["run"]
