"""RQ's command channel (``rq:pubsub:<worker>``: shutdown, stop-job ...), read so that a stop never waits on it.

RQ 3.0 reads the channel on redis-py's pub/sub thread, each read blocking up to 60 s, and stops it by
sending UNSUBSCRIBE first and then waiting for the thread without a limit: a thread that read the
UNSUBSCRIBE reply and went back to its read before it was told to stop held the worker's exit for
the whole minute (1 in 12 ``generate --local`` runs). Here the thread reads in slices of
:data:`READ_S`, is told to stop before anything else happens, and is waited for at most
:data:`STOP_S`; closing the connection ends the subscription on the server.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from rq.command import handle_command, parse_payload

log = logging.getLogger(__name__)

#: The longest one read of the channel blocks: a stop waits about this long for the thread, at most.
READ_S = 0.5
#: While Redis is away, the pause between attempts to read the channel again (a stop cuts it short).
RETRY_S = 2.0
#: The longest a stop waits for the thread (a read, or a reconnection that is under way).
STOP_S = 5.0


class CommandChannel:
    """The worker's subscription to its command channel and the thread that reads it."""

    def __init__(self, conn: redis.Redis, channel: str, worker: Any) -> None:
        self.channel = channel
        self.worker = worker
        self.stopping = threading.Event()
        self.pubsub = conn.pubsub()
        self.pubsub.subscribe(**{channel: self.handle})
        self.thread = threading.Thread(target=self._read, name="ponybot-commands", daemon=True)
        self.thread.start()

    def handle(self, message: dict[str, Any]) -> None:
        """One command, as RQ handles it (``shutdown`` sends this process SIGINT: a warm stop)."""
        try:
            payload = parse_payload(message)
            log.info("command %r on %s", payload.get("command"), self.channel)
            handle_command(self.worker, payload)
        except (ValueError, KeyError, TypeError, AttributeError) as error:  # anyone with Redis can publish there
            log.warning("unreadable command on %s ignored: %s", self.channel, error)

    def _read(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self.pubsub.get_message(ignore_subscribe_messages=True, timeout=READ_S)
                except (redis.ConnectionError, redis.TimeoutError) as error:
                    log.warning("command channel %s unreadable, Redis unavailable (%s): retrying in %.0f s",
                                self.channel, error, RETRY_S)
                    self.stopping.wait(RETRY_S)
        finally:
            self.pubsub.close()

    def stop(self) -> None:
        """End the thread, and the subscription with it: told first, then woken by UNSUBSCRIBE's reply (RQ's order
        the other way round is the 60 s race); without Redis, its read ends within :data:`READ_S` anyway."""
        self.stopping.set()
        if self.thread.is_alive():
            try:
                self.pubsub.unsubscribe()  # type: ignore[no-untyped-call, unused-ignore]
            except redis.RedisError as error:
                log.debug("command channel %s: UNSUBSCRIBE not sent (%s)", self.channel, error)
        self.thread.join(STOP_S)
        if self.thread.is_alive():  # a reconnection still under way: the daemon thread ends with the process
            log.warning("command channel %s: its reader did not end within %.0f s; leaving it", self.channel, STOP_S)
