"""Shared pieces of the REST API: the exception handler and strict field types."""

from __future__ import annotations

import math

from django.core.exceptions import RequestDataTooBig
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc, context):
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": "Request body too large."}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    return drf_exception_handler(exc, context)


class StrictFloatField(serializers.FloatField):
    """A JSON number only: strings, booleans, NaN and infinities are refused."""

    default_error_messages = {
        "type": "Must be a JSON number, not {input_type}.",
        "finite": "Must be a finite number.",
    }

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("type", input_type=type(data).__name__)
        if not math.isfinite(data):
            self.fail("finite")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"type": "Must be a JSON integer, not {input_type}."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("type", input_type=type(data).__name__)
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"type": "Must be true or false, not {input_type}."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("type", input_type=type(data).__name__)
        return data


class StrictCharField(serializers.CharField):
    default_error_messages = {"type": "Must be a string, not {input_type}."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("type", input_type=type(data).__name__)
        return super().to_internal_value(data)
