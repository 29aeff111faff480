"""What the registry's commands share: subcommands, exit codes and plain tables.

Exit codes, for scripts: 0 done; 1 refused by a rule (a busy policy, a rollout in the wrong
state, an archived version) or, with ``--wait``, a job that did not succeed — the reason goes to
stderr; 2 a usage error (bad arguments, an unknown name).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

REFUSED, USAGE = 1, 2


def refused(message) -> CommandError:
    return CommandError(str(message), returncode=REFUSED)


def usage(message) -> CommandError:
    return CommandError(str(message), returncode=USAGE)


def table(rows: list[list], headers: list[str]) -> str:
    """Left-aligned columns two spaces apart; None shows as '-'."""
    cells = [[("-" if value is None else str(value)) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in [headers, *cells]) for i in range(len(headers))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    head = "  ".join(name.upper().ljust(width) for name, width in zip(headers, widths, strict=True)).rstrip()
    return "\n".join([head, *lines])


def find_user(username: str | None):
    """The user named by ``--by`` (recorded on decisions and jobs), or None."""
    if not username:
        return None
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise usage(f"--by {username!r}: no such user.")
    return user


def add_by_argument(parser) -> None:
    parser.add_argument("--by", metavar="USERNAME", help="Record this user as the one acting (default: none).")


def when(value) -> str | None:
    return f"{value:%Y-%m-%d %H:%M}" if value else None


class SubcommandCommand(BaseCommand):
    """``manage.py <command> <subcommand> …``: each subcommand is a ``do_<name>`` method whose
    arguments ``add_<name>_arguments(parser)`` declares."""

    subcommands: dict[str, str] = {}

    def add_arguments(self, parser):
        subparsers = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
        for name, text in self.subcommands.items():
            self.add_subcommand_arguments(name, subparsers.add_parser(name, help=text, description=text))

    def add_subcommand_arguments(self, name: str, parser) -> None:
        adder = getattr(self, f"add_{name}_arguments", None)
        if adder is not None:
            adder(parser)

    def handle(self, *args, subcommand, **options):
        self.run_subcommand(subcommand, options)

    def run_subcommand(self, name: str, options: dict) -> None:
        getattr(self, f"do_{name}")(**options)

    def say(self, text: str = "") -> None:
        self.stdout.write(text)
