"""Access to the operator pages (drift, labeling, ...): one rule for all of them."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied


def staff_page(*permissions: str):
    """Signed-in active staff holding ``permissions`` (the stored images and the live feed ask for
    staff too); anyone else signed in gets 403. Device tokens open nothing: these views know only
    sessions, so a bearer token is an anonymous visitor, sent to sign in."""

    def decorate(view):
        @wraps(view)
        @login_required
        def guarded(request, *args, **kwargs):
            user = request.user
            if not (user.is_active and user.is_staff and user.has_perms(permissions)):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return guarded

    return decorate
