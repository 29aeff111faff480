"""The fleet page: status counts, groups, the device list and the live event feed for operators,
and the labeling queue at a glance for those who label."""

import re
import uuid

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from devices.models import Device, DeviceGroup, Package, PackageKind, PackageStatus
from drift.models import DriftEvent
from labeling.models import ClassSet, LabelTask, TaskSource
from registry.models import ModelVersion, Rollout, RolloutDecision, TrainingJob
from registry.tests.factories import digits_family

pytestmark = pytest.mark.django_db


def grant(user, *codenames):
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return type(user).objects.get(pk=user.pk)


def queue(n: int):
    class_set, _ = ClassSet.objects.get_or_create(name="digits", defaults={"classes": list("0123456789")})
    LabelTask.objects.bulk_create(
        LabelTask(key=f"k{i}", source=TaskSource.MANUAL, class_set=class_set) for i in range(n)
    )


def devices(n: int, *, prefix="dev", group=None, status="online"):
    Device.objects.bulk_create(Device(name=f"{prefix}-{i:04d}", group=group, status=status) for i in range(n))


def feed_keys(page: str) -> list[str]:
    return re.findall(r'<li class="feed-item [^"]*" data-feed="([^"]+)">', page)


def test_an_operator_sees_the_fleet_without_the_labeling_queue(client, operator):
    client.force_login(operator)
    response = client.get("/fleet/")
    assert response.status_code == 200
    assert response.context["labeling"] is None and 'id="labeling-counts"' not in response.content.decode()


def test_a_labeler_operator_sees_the_queue_counts_subscribed_live(client, operator):
    queue(3)
    client.force_login(grant(operator, "label_tasks"))
    page = client.get("/fleet/").content.decode()
    assert 'id="labeling-counts"' in page and '<span class="n" data-queue="pending">3</span>' in page
    assert "sphere/fleet.js" in page


def test_an_outsider_cannot_see_the_fleet(client, outsider):
    client.force_login(outsider)
    assert client.get("/fleet/").status_code == 403


def test_anonymous_visitors_are_sent_to_sign_in(client):
    response = client.get("/fleet/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_staff_without_the_device_permission_cannot_see_the_fleet(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("sid", password="pw-sid-123", is_staff=True))
    assert client.get("/fleet/").status_code == 403


# --- Groups and devices -------------------------------------------------------------------------


def test_each_group_shows_its_devices_per_status_with_links_to_the_admin(client, operator):
    line, yard = DeviceGroup.objects.create(name="line-2"), DeviceGroup.objects.create(name="yard")
    devices(3, prefix="line-on", group=line)
    devices(2, prefix="line-off", group=line, status="offline")
    devices(1, prefix="yard", group=yard, status="late")
    devices(4, prefix="loose", status="new")
    client.force_login(operator)
    page = client.get("/fleet/").content.decode()
    line_row = re.search(r'<tr data-group="line-2">(.*?)</tr>', page, re.S).group(1)
    assert '<td data-group-count="total">5</td>' in line_row
    online = rf'data-group-count="online"\s+href="[^"]*group__id__exact={line.pk}&amp;status__exact=online">3<'
    assert re.search(online, line_row)
    assert re.search(r'data-group-count="offline"[^>]*>2<', line_row)
    assert f'href="/admin/devices/devicegroup/{line.pk}/change/"' in line_row
    yard_row = re.search(r'<tr data-group="yard">(.*?)</tr>', page, re.S).group(1)
    assert re.search(r'data-group-count="late"[^>]*>1<', yard_row)
    ungrouped = re.search(r'<tr data-group="">(.*?)</tr>', page, re.S).group(1)
    assert "group__isnull=True" in ungrouped and re.search(r'data-group-count="new"[^>]*>4<', ungrouped)


def test_the_device_list_pages_through_a_big_fleet_and_links_each_device_to_its_page_and_the_admin(client, operator):
    devices(120)
    client.force_login(operator)
    first = client.get("/fleet/").content.decode()
    rows = re.findall(r'<tr data-device="([0-9a-f-]+)">', first)
    assert len(rows) == 50 and "page 1 of 3" in first and 'href="?page=2"' in first
    assert f'href="/fleet/devices/{rows[0]}/">dev-0000</a>' in first
    assert f'href="/admin/devices/device/{rows[0]}/change/"' in first
    last = client.get("/fleet/?page=3").content.decode()
    assert len(re.findall(r'<tr data-device="', last)) == 20
    filtered = client.get("/fleet/?status=offline").content.decode()
    assert "data-device=" not in filtered


def test_a_status_filter_is_kept_by_the_pager(client, operator):
    devices(60, status="late")
    client.force_login(operator)
    page = client.get("/fleet/?status=late").content.decode()
    assert 'href="?status=late&amp;page=2"' in page


# --- The event feed -----------------------------------------------------------------------------


def test_the_page_subscribes_only_to_the_topics_the_user_may_join(client, operator):
    client.force_login(operator)  # every devices permission: fleet and packages
    assert 'data-live-topics="fleet packages"' in client.get("/fleet/").content.decode()
    client.force_login(grant(operator, "view_driftevent", "view_modelversion"))
    assert 'data-live-topics="fleet drift packages registry"' in client.get("/fleet/").content.decode()


def test_the_feed_opens_with_the_newest_drift_events_linked_to_their_pages(client, operator):
    cam = Device.objects.create(name="edge-cam-7")
    event = DriftEvent.objects.create(device=cam, client_id=uuid.uuid4(), created=timezone.now(), detector="ks_test")
    client.force_login(operator)
    assert f"drift-{event.pk}" not in feed_keys(client.get("/fleet/").content.decode())  # may not see drift
    client.force_login(grant(operator, "view_driftevent"))
    page = client.get("/fleet/").content.decode()
    assert feed_keys(page) == [f"drift-{event.pk}"]
    assert f'<a href="/drift/events/{event.pk}/" class="title">Drift: ks_test</a>' in page
    assert "edge-cam-7 · model —" in page


def test_the_feed_merges_packages_jobs_and_rollouts_newest_first(client, operator):
    cam = Device.objects.create(name="edge-cam-7")
    now = timezone.now()
    package = Package.objects.create(
        device=cam,
        package_id=uuid.uuid4(),
        kind=PackageKind.DRIFT_EVENT,
        sha256="0" * 64,
        size=1,
        storage_key="k",
        status=PackageStatus.FAILED,
        error="checksum mismatch",
        processed_at=now - timezone.timedelta(minutes=3),
    )
    Package.objects.create(
        device=cam, package_id=uuid.uuid4(), kind=PackageKind.DRIFT_EVENT, sha256="0" * 64, size=1, storage_key="k2"
    )  # still waiting: not news yet
    family = digits_family()
    job = TrainingJob.objects.create(family=family, trigger="drift", status="promoted", finished_at=now)
    version = ModelVersion.objects.create(family=family, number=7, bundle_key="b", bundle_size=1, feature_dim=4)
    rollout = Rollout.objects.create(family=family, version=version, name="canary 7")
    RolloutDecision.objects.create(rollout=rollout, action="start", phase=0, at=now - timezone.timedelta(minutes=1))
    client.force_login(grant(operator, "view_modelversion"))
    page = client.get("/fleet/").content.decode()
    decision = RolloutDecision.objects.get()
    assert feed_keys(page) == [f"job-{job.pk}", f"rollout-{rollout.pk}-{decision.pk}", f"package-{package.pk}"]
    assert f'href="/registry/jobs/{job.pk}/" class="title">Training job {job.pk} promoted<' in page
    assert f'href="/registry/rollouts/{rollout.pk}/" class="title">Rollout canary 7: start<' in page
    assert f'href="/admin/devices/package/{package.pk}/change/"' in page and "checksum mismatch" in page


def test_the_fleet_page_costs_a_bounded_number_of_queries(client, operator, django_assert_max_num_queries):
    groups = [DeviceGroup.objects.create(name=f"g{i}") for i in range(30)]
    for i, group in enumerate(groups[:5]):
        devices(40, prefix=f"g{i}", group=group)
    cam = Device.objects.first()
    DriftEvent.objects.bulk_create(
        DriftEvent(device=cam, client_id=uuid.uuid4(), created=timezone.now(), detector="d") for _ in range(50)
    )
    client.force_login(grant(operator, "view_driftevent", "view_modelversion", "label_tasks"))
    client.get("/fleet/")
    with django_assert_max_num_queries(16):
        page = client.get("/fleet/").content.decode()
    assert len(feed_keys(page)) == 15 and "More groups than shown here" in page
