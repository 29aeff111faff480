"""The one websocket consumer: operators subscribe to live-event topics they may see."""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

# Topic -> permission needed to join it. Later apps add their topics here.
TOPIC_PERMISSIONS = {
    "fleet": "devices.view_device",
    "packages": "devices.view_package",
    "drift": "drift.view_driftevent",
    "labeling": "labeling.label_tasks",
    "registry": "registry.view_modelversion",
}


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/live/<topic>/``: forwards ``live.event`` messages of that topic to the browser."""

    async def connect(self):
        topic = self.scope["url_route"]["kwargs"]["topic"]
        permission = TOPIC_PERMISSIONS.get(topic)
        user = self.scope.get("user")
        if permission is None or not await _may_watch(user, permission):
            await self.close(code=4403)
            return
        self.topic = topic
        await self.channel_layer.group_add(topic, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if getattr(self, "topic", None):
            await self.channel_layer.group_discard(self.topic, self.channel_name)

    async def receive_json(self, content, **kwargs):
        pass  # read-only feed; browsers send nothing that matters

    async def live_event(self, message):
        await self.send_json({"event": message["event"], "data": message["data"]})


@database_sync_to_async
def _may_watch(user, permission) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.is_staff and user.has_perm(permission))
