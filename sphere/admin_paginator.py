"""A paginator for admin pages over tables that grow without bound.

Django's admin counts every matching row to draw the page links. On telemetry or prediction
logs that is a full scan per page view. This paginator counts at most ``cap`` rows (a
``LIMIT`` inside the count), so a page costs the same on a thousand rows or a billion; past
the cap the admin shows the first ``cap`` rows' worth of pages, and filters narrow the rest.
"""

from django.core.paginator import Paginator
from django.utils.functional import cached_property

COUNT_CAP = 10_000


class BoundedCountPaginator(Paginator):
    cap = COUNT_CAP

    @cached_property
    def count(self):
        return self.object_list[: self.cap].count()
