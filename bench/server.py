"""Run the real service (``create_app`` under uvicorn) on 127.0.0.1 in a child process.

The server gets its own process so that the benchmark's HTTP clients do not share its GIL; it is
the same app ``biomedsearch serve`` runs, built from a :class:`app.config.Settings`.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
from typing import Any

import httpx


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(settings_kwargs: dict[str, Any], port: int) -> None:
    import uvicorn

    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings(**settings_kwargs))
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)).run()


class Server:
    """``with Server(settings_kwargs) as srv: srv.url`` -- started, ready (or raises), stopped on exit."""

    def __init__(self, settings_kwargs: dict[str, Any], *, ready_timeout_s: float = 300.0,
                 need_index: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings_kwargs = settings_kwargs
        self.ready_timeout_s = ready_timeout_s
        self.need_index = need_index
        self.proc: Any = None
        self.startup_s = 0.0

    def __enter__(self) -> Server:
        ctx = mp.get_context("spawn")
        self.proc = ctx.Process(target=_serve, args=(self.settings_kwargs, self.port), daemon=True)
        start = time.perf_counter()
        self.proc.start()
        deadline = start + self.ready_timeout_s
        last = ""
        while time.perf_counter() < deadline:
            if not self.proc.is_alive():
                raise RuntimeError(f"the server exited with {self.proc.exitcode}")
            try:
                resp = httpx.get(f"{self.url}/readyz", timeout=5)
                body = resp.json()
                last = str(body)
                if resp.status_code == 200 or (not self.need_index and body.get("model_id")):
                    self.startup_s = time.perf_counter() - start
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError(f"the server was not ready within {self.ready_timeout_s:.0f}s: {last}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(30)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
