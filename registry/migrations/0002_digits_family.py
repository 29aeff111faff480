"""The family of the model the edge client ships, with a default retraining policy, so the
embedded system retrains out of the box. Its first version (the shipped reference) is
registered on first use by registry.versions.ensure_shipped_version (it writes to storage)."""

from django.db import migrations


def create(apps, schema_editor):
    ClassSet = apps.get_model("labeling", "ClassSet")
    Family = apps.get_model("registry", "ModelFamily")
    Policy = apps.get_model("registry", "RetrainingPolicy")
    class_set = ClassSet.objects.filter(name="digits").first()
    if class_set is None:
        return
    family, _ = Family.objects.get_or_create(
        name="digits", defaults={"class_set": class_set, "description": "The digits model the edge client ships."}
    )
    Policy.objects.get_or_create(name="digits default", defaults={"family": family})


class Migration(migrations.Migration):
    dependencies = [("registry", "0001_initial"), ("labeling", "0002_digits_class_set")]

    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
