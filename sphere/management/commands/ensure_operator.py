"""Create the operator login for the embedded topology, and print it every time it still works.

The generated password is kept in the data directory (mode 600) so `make run` can show it on
each start; once the operator changes it, only the username is printed.
"""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the operator superuser if missing and print its login."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="operator")
        parser.add_argument("--reset", action="store_true", help="Set and print a new random password.")

    def handle(self, username, reset, **options):
        User = get_user_model()
        saved = settings.DATA_DIR / "operator-password"
        user = User.objects.filter(username=username).first()
        if user is None or reset:
            password = secrets.token_urlsafe(12)
            user = user or User.objects.create_superuser(username=username, email="")
            user.set_password(password)
            user.save()
            saved.write_text(password)
            saved.chmod(0o600)
        password = saved.read_text().strip() if saved.exists() else ""
        if password and user.check_password(password):
            self.stdout.write(self.style.SUCCESS(f"Operator login: {username} / {password}"))
        else:
            self.stdout.write(
                f"Operator login: {username} (password changed since; `make reset-password` sets a new one)"
            )
