"""Debian's nginx as the reverse proxy in front of several Saffrons, one ``location`` per
VM, started by the test as an ordinary process: its own prefix directory, config, logs,
pid and temp files, listening on 127.0.0.1 only. The ``location`` blocks are the ones
the README gives users (README "Many VMs behind one reverse proxy")."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from saffron.bench.process import StartError, free_port, wait_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

STOP_WAIT_S = 10.0

UPGRADE_MAP = """\
map $http_upgrade $connection_upgrade {
    default upgrade;
    ''      close;
}
"""
"""In the ``http`` block: ``Connection: upgrade`` for WebSocket handshakes, ``close`` else."""

LOCATION = """\
location {path} {{
    proxy_pass http://127.0.0.1:{port};
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $connection_upgrade;
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $http_host;
    proxy_read_timeout 1h;
}}
"""
"""One VM's Saffron, run with ``--base-path {path} --trusted-proxy 127.0.0.1``: paths
pass unchanged (no URI after the port), WebSockets are upgraded, and the proxy says
who the client is and what scheme and host it used."""

STRIPPED = LOCATION.replace("{port};", "{port}/;").replace(
    "    proxy_read_timeout",
    "    proxy_set_header X-Forwarded-Prefix {path};\n    proxy_read_timeout",
)
"""The other way: nginx strips the prefix (a ``/`` after the port) and names it in
``X-Forwarded-Prefix``, for a Saffron run without ``--base-path``."""


def config(root: Path, port: int, locations: Mapping[str, int], stripped: Mapping[str, int]) -> str:
    """nginx.conf for a proxy on 127.0.0.1:``port`` with one location per ``path: port``
    (``stripped``: the prefix stripped and named in X-Forwarded-Prefix)."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers would be nobody's
    temp = "\n".join(
        f"    {name}_temp_path {root / 'temp' / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    blocks = "".join(LOCATION.format(path=path, port=p) for path, p in locations.items())
    blocks += "".join(STRIPPED.format(path=path, port=p) for path, p in stripped.items())
    indented = "".join(f"        {line}\n" if line else "\n" for line in blocks.splitlines())
    upgrade = "".join(f"    {line}\n" for line in UPGRADE_MAP.splitlines())
    return f"""{user}worker_processes 1;
error_log {root / "error.log"} info;
events {{
    worker_connections 256;
}}
http {{
    access_log {root / "access.log"};
{temp}
{upgrade}
    server {{
        listen 127.0.0.1:{port};
{indented}    }}
}}
"""


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        """Its error log and access log, for a failing assertion."""
        return "\n".join(
            (self.root / name).read_text(errors="replace")
            for name in ("error.log", "access.log")
            if (self.root / name).exists()
        )


@contextmanager
def nginx(
    root: Path, locations: Mapping[str, int], stripped: Mapping[str, int] | None = None
) -> Iterator[Nginx]:
    """nginx in front of Saffrons on ``locations`` (path → web port; ``stripped``: see
    :func:`config`), until the block ends."""
    if not Path(NGINX).exists():
        raise StartError("nginx is not installed (scripts/apt-packages.txt)")
    root.mkdir(parents=True, exist_ok=True)
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / "temp" / name).mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(config(root, port, locations, stripped or {}))
    argv = [
        NGINX,
        "-p",
        str(root),
        "-e",
        str(root / "error.log"),
        "-c",
        str(conf),
        "-g",
        f"daemon off; pid {root / 'nginx.pid'};",
    ]
    with open(root / "nginx.out", "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    running = Nginx(proc, root, port)
    try:
        try:
            wait_port(port, 20)
        except StartError:
            raise StartError(f"nginx did not start:\n{running.logs()}") from None
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast shutdown: open WebSockets are cut
            try:
                proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
