"""Refuse oversized API bodies before anything reads them."""

from django.conf import settings
from django.http import JsonResponse


class ApiBodyLimitMiddleware:
    """Checks the declared Content-Length against settings.API_BODY_LIMITS (longest prefix)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = body_limit(request.path)
        if limit is not None and declared_length(request) > limit:
            return JsonResponse({"detail": f"Request body exceeds the limit of {limit} bytes."}, status=413)
        return self.get_response(request)


def body_limit(path: str) -> int | None:
    limits = sorted(settings.API_BODY_LIMITS, key=lambda item: len(item[0]), reverse=True)
    return next((limit for prefix, limit in limits if path.startswith(prefix)), None)


def declared_length(request) -> int:
    """The Content-Length header as a number; 0 when absent or malformed (the body parser decides)."""
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0
