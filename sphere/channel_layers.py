"""A channel layer for the embedded (single-process) topology.

Channels' in-memory layer keeps asyncio queues bound to the event loop of the ASGI server.
Live events are also produced by the in-process Celery worker thread, whose ``async_to_sync``
runs on a loop of its own; touching the queues from there would be unsafe and could leave a
consumer asleep. This layer remembers the server's loop and runs sends on it.
"""

import asyncio

from channels.layers import InMemoryChannelLayer


class InProcessChannelLayer(InMemoryChannelLayer):
    _home_loop: asyncio.AbstractEventLoop | None = None

    async def receive(self, channel):
        if self._home_loop is None:
            self._home_loop = asyncio.get_running_loop()
        return await super().receive(channel)

    async def send(self, channel, message):
        await self._on_home_loop(super().send(channel, message))

    async def group_send(self, group, message):
        await self._on_home_loop(super().group_send(group, message))

    async def _on_home_loop(self, coroutine):
        home = self._home_loop
        # A loop that has stopped (server shutting down) would never run the coroutine.
        if home is None or not home.is_running() or home is asyncio.get_running_loop():
            await coroutine
            return
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, home))
