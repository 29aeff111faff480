"""The fleet page: device list and counts for operators, and the labeling queue at a glance for
those who label."""

import pytest
from django.contrib.auth.models import Permission

from labeling.models import ClassSet, LabelTask, TaskSource

pytestmark = pytest.mark.django_db


def grant(user, *codenames):
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return type(user).objects.get(pk=user.pk)


def queue(n: int):
    class_set, _ = ClassSet.objects.get_or_create(name="digits", defaults={"classes": list("0123456789")})
    LabelTask.objects.bulk_create(
        LabelTask(key=f"k{i}", source=TaskSource.MANUAL, class_set=class_set) for i in range(n)
    )


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
