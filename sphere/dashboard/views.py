"""Operator pages. The fleet list is the first; later issues add the rest of the dashboard."""

from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.shortcuts import render

from devices.models import Device, DeviceStatus
from devices.services import fleet_counts
from labeling.services import queue_counts


@login_required
@permission_required("devices.view_device", raise_exception=True)
def fleet(request):
    status = request.GET.get("status", "")
    devices = Device.objects.select_related("group").order_by("name")
    if status in DeviceStatus.values:
        devices = devices.filter(status=status)
    page = Paginator(devices, 50).get_page(request.GET.get("page"))
    context = {
        "counts": fleet_counts(),
        "statuses": DeviceStatus.choices,
        "status": status,
        "page": page,
        # The labeling queue at a glance, live over the "labeling" topic, for those who may watch it.
        "labeling": queue_counts() if request.user.has_perm("labeling.label_tasks") else None,
    }
    return render(request, "dashboard/fleet.html", context)
