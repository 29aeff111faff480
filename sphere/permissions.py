"""Who may call what: devices reach only the device API, operators the operator API."""

from rest_framework import permissions

from sphere.auth import DevicePrincipal


def is_device(request) -> bool:
    return isinstance(request.user, DevicePrincipal)


class IsDevice(permissions.BasePermission):
    message = "This endpoint is for devices: authenticate with the device's bearer token."

    def has_permission(self, request, view):
        return is_device(request)


class IsOperator(permissions.BasePermission):
    """A signed-in staff user. Model permissions are checked by :class:`OperatorModelPermissions`."""

    message = "This endpoint is for operators: sign in with a staff account."

    def has_permission(self, request, view):
        user = request.user
        return bool(user and not is_device(request) and user.is_authenticated and user.is_staff)


class OperatorModelPermissions(permissions.DjangoModelPermissions):
    """Django model permissions, with reads requiring the ``view`` permission too."""

    perms_map = {
        **permissions.DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
    }
