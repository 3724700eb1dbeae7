"""`make run`: streamer and a local MinIO, for trying streamer without Docker.

MinIO (MINIO_BIN, from the build cache) serves 127.0.0.1:$MINIO_PORT (9000; its console
on $MINIO_CONSOLE_PORT, 9001) as minioadmin/minioadmin, its data in .cache/run/minio.
streamer runs with the config file its commands find: $STREAMER_CONFIG, else the user's
(~/.config/streamer/config.json), written by `streamer config init` for this MinIO and
./input when there is none yet, so `streamer status` and the others read it in another
terminal too. Not the system's file (/etc/streamer/config.json): that one is a service's,
with a store of its own. Ctrl-C stops streamer (gracefully; a second press: at once),
then MinIO, which runs in a session of its own so that it outlives streamer's stop.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from streamer import config
from streamer.naming import host_instance

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".cache" / "run"
USER = PASSWORD = "minioadmin"  # MinIO's well-known development pair: a trial only
MINIO_START = 60.0  # seconds: a first start on a slow disk formats its data directory
BIN = Path(sys.executable).parent  # the virtualenv's: `streamer`, `activate`


def main() -> int:
    port = int(os.environ.get("MINIO_PORT", "9000"))
    console = int(os.environ.get("MINIO_CONSOLE_PORT", "9001"))
    path = os.environ.get(config.CONFIG_VARIABLE) or config.user_config()
    written = not os.path.lexists(path)
    if written:
        init = [str(BIN / "streamer"), "config", "init", path]
        for setting in (
            f"watch.directory={ROOT / 'input'}",
            f"checkpoint.path={STATE / 'checkpoint'}",
            f"s3.endpoint=127.0.0.1:{port}",
            f"s3.access_key={USER}",
            f"s3.secret_key={PASSWORD}",
            "log.format=text",
        ):
            init += ["--set", setting]
        made = subprocess.run(init, stdout=subprocess.DEVNULL)  # it says why not on stderr
        if made.returncode:
            return made.returncode
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        print(f"streamer: invalid configuration: {exc}", file=sys.stderr)
        return 2
    (ROOT / "input").mkdir(exist_ok=True)
    (STATE / "minio").mkdir(parents=True, exist_ok=True)

    daemon: subprocess.Popen | None = None

    def stop(signum: int, frame) -> None:
        if daemon is None:
            raise KeyboardInterrupt
        # Ctrl-C reaches streamer from the terminal, as it reaches this process (its
        # second press stops streamer at once); a SIGTERM sent here alone is passed on.
        if signum == signal.SIGTERM:
            daemon.terminate()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with open(STATE / "minio.log", "ab") as log:
        minio = subprocess.Popen(
            [
                os.environ["MINIO_BIN"],
                "server",
                str(STATE / "minio"),
                "--address",
                f"127.0.0.1:{port}",
                "--console-address",
                f"127.0.0.1:{console}",
            ],
            env={**os.environ, "MINIO_ROOT_USER": USER, "MINIO_ROOT_PASSWORD": PASSWORD},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        if not ready(minio, port):
            said = (STATE / "minio.log").read_text(errors="replace").splitlines()[-5:]
            print(
                f"MinIO did not start: see {STATE / 'minio.log'}", *said, sep="\n", file=sys.stderr
            )
            return 1
        print(banner(cfg, path, written, port, console), flush=True)
        daemon = subprocess.Popen([str(BIN / "streamer"), "run", "--config", path])
        return daemon.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        minio.terminate()
        try:
            minio.wait(timeout=30)
        except subprocess.TimeoutExpired:
            minio.kill()
            minio.wait()


def ready(minio: subprocess.Popen, port: int) -> bool:
    deadline = time.monotonic() + MINIO_START
    while minio.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/minio/health/live", timeout=2):
                return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    return False


def banner(cfg: config.Config, path: str, written: bool, port: int, console: int) -> str:
    how = "written now by `streamer config init`" if written else "yours"
    scheme = "https" if cfg.s3.secure else "http"
    where = "/".join(p for p in (cfg.s3.bucket, cfg.s3.prefix.strip("/")) if p)
    instance = cfg.instance or host_instance()
    idle = f"{cfg.stream.idle_timeout:g}"
    recording = shlex.quote(os.path.join(cfg.watch.directory, "cam1.mp4"))
    return f"""
MinIO      http://127.0.0.1:{port}, console http://127.0.0.1:{console} ({USER} / {PASSWORD})
config     {path} ({how}: every streamer command reads it)
watching   {cfg.watch.directory} ({cfg.watch.pattern})
uploading  to s3://{where}/{instance}/ at {scheme}://{cfg.s3.endpoint}

In another terminal, record, then look (a recording is whole in the bucket
{idle} s after its recorder stops: stream.idle_timeout):
  . {shlex.quote(str(BIN / "activate"))}
  ffmpeg -re -f lavfi -i testsrc2 -t 60 -c:v libx264 {recording}
  streamer status              # what streamer is doing
  streamer remote list         # what is in the bucket
  streamer restore STREAM_ID -o cam1.mp4   # a recording back, checked

Ctrl-C stops streamer, then MinIO.
"""


if __name__ == "__main__":
    sys.exit(main())
