"""The gallery under load: 200,000 images, then 32 concurrent clients on newest, top, search and image pages.

Prints p50 and p99 latency per page kind (goal on SQLite: p99 <= 50 ms for list pages), as visitors get
them (``gallery.public_cache_s`` at its default) and with every page rendered (the cache off).
The server runs in its own process (uvicorn, one worker) as ``ponybot gallery`` does; the clients
(aiohttp, asyncio) in this one, each sending its next request as soon as the last one is answered.
Run: ``.venv/bin/python bench/gallery.py [--rows N] [--database-url URL]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import ROOT, free_port, machine, percentile, table, wait_for_port  # type: ignore[import-not-found]

# this file is named like the gallery package: look for packages in the repository first
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

WORDS = ("pinkie rarity twilight fluttershy applejack rainbow dash celestia luna spike discord trixie derpy "
         "balloons cake library orchard sky castle forest night sunrise rain flowers book dress party tea "
         "smiling flying reading running sleeping portrait landscape detailed cute happy").split()
TAGS = "pegasus unicorn earth_pony alicorn dragon solo duo group outdoors indoors".split()
GUILDS = 20
CLIENTS = (1, 32)  #: one client alone (the time a page costs), then 32 at once (the goal)
REQUESTS = 800
#: gallery.public_cache_s: the default (signed-out list pages reused), then off (every page rendered)
CACHE_S = (2.0, 0.0)


def fill(url: str, rows: int) -> None:
    from sqlalchemy import insert

    from gallery.db import channels, guilds, images, make_engine, upgrade

    engine = make_engine(url)
    upgrade(engine)
    rng = random.Random(42)
    now = datetime.now(UTC)
    with engine.begin() as db:
        db.execute(insert(guilds), [{"id": g, "enabled": g != 0, "updated_at": now} for g in range(GUILDS)])
        # each server: an SFW channel (1) and an age-restricted one (2), both open to @everyone, as Discord
        # would report them: the SFW channel's unflagged images are public
        db.execute(insert(channels), [{"guild_id": g, "id": c, "nsfw": c == 2, "everyone_view": True}
                                      for g in range(GUILDS) for c in (1, 2)])
    batch = []
    for n in range(rows):
        mode = "nsfw" if rng.random() < 0.2 else "sfw"
        flagged = rng.random() < 0.05
        prompt = ", ".join(rng.sample(WORDS, 6))
        batch.append({
            "job_id": f"{n:032x}", "idx": 0, "user_id": 1000 + rng.randrange(5000), "guild_id": rng.randrange(GUILDS),
            "channel_id": 2 if mode == "nsfw" else 1, "mode": mode, "flagged": flagged,
            "public": mode == "sfw" and not flagged,
            "hidden": rng.random() < 0.01, "kind": "txt2img", "request_prompt": prompt, "request_negative": "",
            "prompt": "safe, " + prompt, "negative_prompt": "", "tags": " ".join(rng.sample(TAGS, 2)),
            "seed": rng.randrange(2**32), "steps": 25, "cfg": 7.5, "width": 512, "height": rng.choice((512, 768)),
            "sampler": rng.choice(("ddim", "euler_a", "dpmpp_2m_karras")), "clip_skip": 2, "quality_tags": True,
            "model": "pony-diffusion-v4", "parameters": prompt + "\nNegative prompt: \nSteps: 25",
            "command": f"/generate prompt:{prompt}", "likes": int(rng.paretovariate(1.5)) - 1,
            "created_at": now - timedelta(days=60 * (rows - n) / rows),  # 60 days, oldest first
        })
        if len(batch) == 5000:
            with engine.begin() as db:
                db.execute(insert(images), batch)
            batch = []
    if batch:
        with engine.begin() as db:
            db.execute(insert(images), batch)
    engine.dispose()


def serve(url: str, port: int, store: str, cache_s: float) -> None:
    import uvicorn

    from gallery.server import build_app
    from ponybot.settings import load_settings

    settings = load_settings(None, gallery={"database_url": url, "store_dir": store, "port": port,
                                            "public_cache_s": cache_s})
    uvicorn.run(build_app(settings), host="127.0.0.1", port=port, log_level="warning")


async def load(base: str, rows: int, clients: int, requests: int) -> dict[str, list[float]]:
    """Each page's times (ms); ``"image 200"`` counts the image pages that were shown (a fill nobody may see
    would measure empty pages)."""
    import aiohttp

    rng = random.Random(7)
    timings: dict[str, list[float]] = {"newest": [], "newest p2": [], "top (week)": [], "search": [], "image": []}
    cursors: list[str] = []
    shown: list[float] = []

    async def client(http: aiohttp.ClientSession) -> None:
        for _ in range(requests // clients):
            kind = rng.choice(list(timings))
            if kind == "newest":
                path = "/"
            elif kind == "newest p2":
                path = f"/?cursor={rng.choice(cursors)}" if cursors else "/"
            elif kind == "top (week)":
                path = "/top?period=week"
            elif kind == "search":
                path = "/?q=" + "+".join(rng.sample(WORDS, 2))
            else:
                path = f"/i/{rng.randrange(1, rows + 1)}"
            start = time.perf_counter()
            async with http.get(base + path) as answer:
                body = await answer.text()
            timings[kind].append((time.perf_counter() - start) * 1000)
            if answer.status not in (200, 404):
                raise RuntimeError(f"{path}: {answer.status}")
            if kind == "image" and answer.status == 200:
                shown.append(1.0)
            if kind == "newest" and "cursor=" in body:
                cursors.append(body.split("cursor=", 1)[1].split('"', 1)[0])

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        for _ in range(3):  # warm-up
            async with http.get(base + "/") as answer:
                await answer.read()
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return {**timings, "image 200": shown}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary folder")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="requests per round (default %(default)s)")
    parser.add_argument("--serve", nargs=4, metavar=("URL", "PORT", "STORE", "CACHE_S"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2], float(args.serve[3]))
        return
    print(machine())
    with tempfile.TemporaryDirectory() as scratch:
        url = args.database_url or f"sqlite:///{scratch}/gallery.db"
        start = time.perf_counter()
        fill(url, args.rows)
        print(f"{args.rows:,} rows written in {time.perf_counter() - start:.1f} s ({url.split(':', 1)[0]})")
        # as visitors get it (signed-out list pages reused for 2 s), then every page rendered: what a page costs
        results = {cache_s: measure(url, args.rows, f"{scratch}/images", cache_s, args.requests)
                   for cache_s in CACHE_S}
    for cache_s, by_clients in results.items():
        for clients, timings in by_clients.items():
            rows = [(kind, len(values), f"{percentile(values, 50):.1f}", f"{percentile(values, 99):.1f}")
                    for kind, values in timings.items() if values and kind != "image 200"]
            title = (f"gallery.public_cache_s = {cache_s:g}: {clients} concurrent client(s), {args.requests} "
                     "requests, signed out (ms)")
            print(table(title, ["page", "requests", "p50", "p99"], rows))
            print(f"image pages shown signed out: {len(timings['image 200'])} of {len(timings['image'])}")
    for cache_s, by_clients in results.items():
        lists = [v for kind, values in by_clients[CLIENTS[-1]].items() if kind not in ("image", "image 200")
                 for v in values]
        p99 = percentile(lists, 99)
        print(f"public_cache_s = {cache_s:g}: list pages p99 under {CLIENTS[-1]} clients {p99:.1f} ms: "
              f"goal <= 50 ms {'met' if p99 <= 50 else 'NOT met'}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def measure(url: str, rows: int, store: str, cache_s: float, requests: int) -> dict[int, dict[str, list[float]]]:
    """Start ``ponybot gallery``'s app in its own process with this cache setting and load it."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PONYBOT_LOG__LEVEL": "WARNING"}
    server = subprocess.Popen([sys.executable, __file__, "--serve", url, str(port), store, str(cache_s)], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_port(port, server, "the gallery server")
        return {clients: asyncio.run(load(base, rows, clients, requests)) for clients in CLIENTS}
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
