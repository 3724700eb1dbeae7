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
# CAP_LEASE for the interpreter, permitted but not effective: streamer raises it when the
# container is given it (cap_add: LEASE), so that retention can tell whether a recording
# another user writes is still open before it deletes it. Without it, nothing changes but
# a retention_blind warning.
RUN python -c "import os, struct, sys; os.setxattr(os.path.realpath(sys.executable), \
      'security.capability', struct.pack('<5I', 0x02000000, 1 << 28, 0, 0, 0))"
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
