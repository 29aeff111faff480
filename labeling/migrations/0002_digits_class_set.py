"""The class set of the model the edge client ships (edge_client/models/digits_cnn.tflite): the
ten digits, so the embedded system labels out of the box."""

from django.db import migrations

DIGITS = [str(n) for n in range(10)]


def create(apps, schema_editor):
    apps.get_model("labeling", "ClassSet").objects.get_or_create(name="digits", defaults={"classes": DIGITS})


class Migration(migrations.Migration):
    dependencies = [("labeling", "0001_initial")]

    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
