"""The gallery under a flood of large bodies: 8 clients each send a 1 GiB body to every POST route.

Prints, per mode, the gallery process's memory at start and at its peak (``VmHWM`` of /proc/PID/status), the
free disk of its temporary folder before, at its lowest during and after the flood, and how the requests were
answered. Mode ``limited`` is the site as ``ponybot gallery`` serves it (``gallery.bodies.BodyLimit``); mode
``unlimited`` is the same app without BodyLimit: what the site did before it.

The clients are signed in (a session cookie signed with the bench's own session secret, for a member row the
server makes), so each route gets as far as it can; half send url-encoded forms, half multipart with a file part;
half declare ``Content-Length``, half stream chunked. Bodies are generated as they are sent, never held whole.
Run: ``.venv/bin/python bench/gallery_flood.py [--bytes N] [--clients N] [--modes limited,unlimited]``
(the unlimited mode holds up to clients x bytes in memory: mind the machine's).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from common import ROOT, free_port, machine, table, wait_for_port  # type: ignore[import-not-found]

# bench/gallery.py is named like the gallery package: look for packages in the repository first
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

SECRET = "flood-bench-session-secret-of-at-least-32-bytes"
MEMBER = 4242
CHUNK = 1 << 20
MODES = ("unlimited", "limited")
BOUNDARY = "floodbenchboundary"


def serve(mode: str, folder: str, port: int) -> None:
    """The gallery's app on uvicorn in this process (``--serve``), with its member row in the database."""
    import uvicorn
    from sqlalchemy import insert

    from gallery.bodies import BodyLimit
    from gallery.db import users
    from gallery.server import build_app, server_config
    from ponybot.settings import load_settings

    # sign-in needs the bot's token (the gallery asks Discord for permissions): a closed local port answers at once
    settings = load_settings(None, discord={"token": "flood", "api_base": "http://127.0.0.1:9/api/v10"}, gallery={
        "database_url": f"sqlite:///{folder}/gallery.db", "store_dir": f"{folder}/images", "port": port,
        "public_url": f"http://127.0.0.1:{port}", "client_id": 1, "client_secret": "flood", "session_secret": SECRET})
    app = build_app(settings)
    if mode == "unlimited":
        app.user_middleware = [entry for entry in app.user_middleware if entry.cls is not BodyLimit]
    with app.state.gallery.engine.begin() as db:
        db.execute(insert(users).values(id=MEMBER, name="flood", nsfw_opt_in=False,
                                        updated_at=datetime.datetime.now(datetime.UTC)))
    uvicorn.Server(server_config(app, "127.0.0.1", port)).run()


def session_cookie() -> str:
    """A signed-in member's cookie, signed as Starlette's SessionMiddleware signs it."""
    import itsdangerous

    session = {"user_id": MEMBER, "name": "flood", "csrf": "not-the-one-sent", "epoch": 0}
    signed = itsdangerous.TimestampSigner(SECRET).sign(base64.b64encode(json.dumps(session).encode()))
    return "ponybot_gallery=" + signed.decode()


def post_paths() -> list[str]:
    from gallery.actions import ROUTES

    return [re.sub(r"\{\w+(:\w+)?\}", "1", route.path) for route in ROUTES if "POST" in (route.methods or ())]


def body_parts(kind: str, size: int) -> tuple[str, bytes, bytes, int]:
    """(content type, head, tail, filler bytes between them) of a ``size``-byte body."""
    if kind == "urlencoded":
        head, tail = b"csrf=x&reason=", b""
        content_type = "application/x-www-form-urlencoded"
    else:
        head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"reason\"; filename=\"a.bin\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
    return content_type, head, tail, max(0, size - len(head) - len(tail))


def answered(sock: socket.socket) -> bool:
    """Whether the server has answered (or closed) already: then the rest of the body is not sent."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def flood_one(port: int, path: str, cookie: str, kind: str, chunked: bool, size: int) -> tuple[str, int]:
    """One request; returns (status code or what ended it, body bytes sent before the answer)."""
    content_type, head, tail, filler = body_parts(kind, size)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(head) + filler + len(tail)}"
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
               f"Content-Type: {content_type}\r\n{framing}\r\nConnection: close\r\n\r\n").encode()
    # url-encoded: a new field each MiB, each just under Starlette's 1 MiB per field: the most a form parse holds
    block = b"&f=" + b"a" * (CHUNK - 3) if kind == "urlencoded" else b"a" * CHUNK
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        sock.sendall(request)

        def send(data: bytes) -> None:
            sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)

        try:
            send(head)
            sent += len(head)
            left = filler
            while left and not answered(sock):
                piece = block if left >= CHUNK else block[:left]
                send(piece)
                sent, left = sent + len(piece), left - len(piece)
            if not left and not answered(sock):
                send(tail)
                sent += len(tail)
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            line = sock.makefile("rb").readline().decode("latin-1")
        except OSError as error:
            return type(error).__name__, sent
    found = re.match(r"HTTP/1\.1 (\d{3})", line)
    return (found.group(1) if found else "closed"), sent


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def run_mode(mode: str, size: int, clients: int) -> list[object]:
    with tempfile.TemporaryDirectory(prefix="gallery-flood-") as folder:
        temp = Path(folder, "tmp")
        temp.mkdir()
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(temp), "PONYBOT_LOG__LEVEL": "WARNING"}
        server = subprocess.Popen([sys.executable, __file__, "--serve", mode, folder, str(port)], env=env)
        try:
            wait_for_port(port, server, "the gallery server")
            start_rss = proc_kib(server.pid, "VmRSS")
            free_before = shutil.disk_usage(temp).free
            lowest = [free_before]
            done = threading.Event()

            def watch_disk() -> None:
                while not done.wait(0.1):
                    lowest[0] = min(lowest[0], shutil.disk_usage(temp).free)

            cookie, paths = session_cookie(), post_paths()
            statuses: Counter[str] = Counter()
            sent = [0]
            lock = threading.Lock()

            def client(index: int) -> None:
                kind = "urlencoded" if index % 2 == 0 else "multipart"
                for path in paths:
                    status, count = flood_one(port, path, cookie, kind, chunked=index % 4 >= 2, size=size)
                    with lock:
                        statuses[status] += 1
                        sent[0] += count

            watcher = threading.Thread(target=watch_disk, daemon=True)
            watcher.start()
            started = time.perf_counter()
            threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            done.set()
            watcher.join()
            peak = proc_kib(server.pid, "VmHWM")
            free_after = shutil.disk_usage(temp).free
        finally:
            server.terminate()
            server.wait(timeout=60)
    answers = " ".join(f"{status}x{count}" for status, count in sorted(statuses.items()))
    return [mode, len(paths) * clients, answers, f"{sent[0] / 2**20:,.0f}", f"{elapsed:.1f}",
            f"{start_rss / 1024:,.0f}", f"{peak / 1024:,.0f}", f"{free_before / 2**20:,.0f}",
            f"{lowest[0] / 2**20:,.0f}", f"{free_after / 2**20:,.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bytes", type=int, default=1 << 30, help="each body's size (default 1 GiB)")
    parser.add_argument("--clients", type=int, default=8, help="clients at once (default %(default)s)")
    parser.add_argument("--modes", default=",".join(MODES), help="unlimited, limited or both (default: both)")
    parser.add_argument("--serve", nargs=3, metavar=("MODE", "FOLDER", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]))
        return
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: one or both of {', '.join(MODES)}")
    print(machine())
    paths = post_paths()
    rows = [run_mode(mode, args.bytes, args.clients) for mode in modes]
    title = (f"{args.clients} clients x {len(paths)} POST routes ({', '.join(paths)}), bodies of "
             f"{args.bytes / 2**20:,.1f} MiB each")
    print(table(title, ["body limit", "requests", "answers", "MiB sent", "s", "RSS start MiB", "peak RSS MiB",
                        "tmp free before MiB", "tmp free lowest MiB", "tmp free after MiB"], rows))


if __name__ == "__main__":
    main()
