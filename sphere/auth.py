"""Authentication of devices by their per-device bearer token."""

from __future__ import annotations

from rest_framework import authentication, exceptions

from sphere.tokens import parse_token, secret_matches

DEVICE_TOKEN_KIND = "sphd"


class DevicePrincipal:
    """``request.user`` for a device: authenticated, never staff, holds no Django permissions."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, device):
        self.device = device
        self.pk = None

    def __str__(self):
        return f"device:{self.device.pk}"

    def has_perm(self, perm, obj=None):
        return False

    def has_perms(self, perms, obj=None):
        return False


class DeviceTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer sphd_<prefix>_<secret>``. Sets ``request.auth`` to the Device."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme != self.keyword:
            return None
        parsed = parse_token(DEVICE_TOKEN_KIND, token.strip())
        if parsed is None:
            raise exceptions.AuthenticationFailed("Malformed device token.")
        credential = _find_credential(parsed.prefix)
        if credential is None or not secret_matches(parsed.secret, credential.secret_hash):
            raise exceptions.AuthenticationFailed("Unknown device token.")
        if credential.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This device token has been revoked.")
        return DevicePrincipal(credential.device), credential.device

    def authenticate_header(self, request):
        return self.keyword


def _find_credential(prefix):
    from devices.models import DeviceCredential

    return DeviceCredential.objects.select_related("device__group").filter(prefix=prefix).first()
