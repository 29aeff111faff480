"""Refuse oversized API bodies before anything reads them."""

from django.conf import settings
from django.http import JsonResponse


class ApiBodyLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            too_big = declared_length(request) > settings.API_MAX_BODY_BYTES
            if too_big:
                return JsonResponse(
                    {"detail": f"Request body exceeds the limit of {settings.API_MAX_BODY_BYTES} bytes."},
                    status=413,
                )
        return self.get_response(request)


def declared_length(request) -> int:
    """The Content-Length header as a number; 0 when absent or malformed (the body parser decides)."""
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0
