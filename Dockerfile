# Wheels are built in a first stage, so the final image has no compilers.
FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md constraints.txt ./
COPY streamer ./streamer
# The versions CI ran with, dependencies included: a rebuild gets the same code.
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

FROM python:3.11.14-slim-bookworm
# VERSION is the package's (a test keeps them equal); SOURCE, where the image is published
# from: docker build --build-arg SOURCE=https://...
ARG VERSION=0.1.0
ARG SOURCE=""
LABEL org.opencontainers.image.title="streamer" \
      org.opencontainers.image.description="Upload live video recordings to S3-compatible storage while they are being written" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --system --uid 10001 --home-dir /var/lib/streamer streamer \
 && mkdir -p /var/lib/streamer /input \
 && chown streamer:streamer /var/lib/streamer
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
# CAP_LEASE for the interpreter, permitted but not effective: streamer raises it when the
# container is given it (cap_add: LEASE), so that retention can tell whether a recording
# another user writes is still open before it deletes it. Without it (or under
# no-new-privileges, which ignores file capabilities) retention is blind to such files:
# it keeps each until ten minutes after its last write, and warns at each deletion.
RUN python -c "import os, struct, sys; os.setxattr(os.path.realpath(sys.executable), \
      'security.capability', struct.pack('<5I', 0x02000000, 1 << 28, 0, 0, 0))"
USER streamer
# The metrics port listens on every interface of the container's own network (loopback
# is the default outside a container): a published port, Prometheus and a kubelet's
# probes reach it from outside the container.
ENV PYTHONUNBUFFERED=1 \
    STREAMER_WATCH_DIRECTORY=/input \
    STREAMER_CHECKPOINT_PATH=/var/lib/streamer \
    STREAMER_METRICS_HOST=0.0.0.0
VOLUME ["/var/lib/streamer"]
EXPOSE 9108
# streamer itself answers, from the effective configuration: the configured metrics port,
# or, with metrics off, the heartbeat file its loop touches.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["streamer", "health"]
ENTRYPOINT ["streamer"]
CMD ["run"]
