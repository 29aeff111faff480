from django.urls import path

from sphere.consumers import LiveConsumer

websocket_urlpatterns = [
    path("ws/live/<slug:topic>/", LiveConsumer.as_asgi()),
]
