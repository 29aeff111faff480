"""``manage.py versions list|show|alias``: model versions and their aliases for scripts.

    manage.py versions list --family digits
    manage.py versions show digits@4
    manage.py versions alias digits champion 4 --reason "won the canary"
    manage.py versions alias digits challenger --remove

Exit codes: 0 done, 1 refused (an archived version cannot take an alias; the reason on
stderr), 2 usage error (unknown family or version, bad arguments).
"""

from __future__ import annotations

import json

from registry.management.commands._base import (
    SubcommandCommand,
    add_by_argument,
    find_user,
    refused,
    table,
    usage,
    when,
)
from registry.models import ALIAS_PATTERN, ModelFamily, ModelVersion


def find_family(name: str) -> ModelFamily:
    found = ModelFamily.objects.filter(name=name).first()
    if found is None:
        raise usage(f"No model family {name!r}.")
    return found


def find_version(label: str) -> ModelVersion:
    from registry import versions

    family, at, ref = label.partition("@")
    if not at:
        raise usage(f"{label!r}: give a version as family@number (digits@4) or family@alias.")
    try:
        return versions.resolve(family, ref)
    except versions.VersionNotFound as exc:
        raise usage(exc)


class Command(SubcommandCommand):
    help = "List and show model versions, and move their aliases."
    subcommands = {
        "list": "List versions, newest first.",
        "show": "Show one version with its lineage.",
        "alias": "Point an alias (champion, challenger, …) at a version, or remove it.",
    }

    def add_list_arguments(self, parser):
        parser.add_argument("--family", help="Only this family's versions.")
        parser.add_argument("--status", choices=["registered", "archived"])
        parser.add_argument("--limit", type=int, default=20, help="At most this many (default 20).")

    def add_show_arguments(self, parser):
        parser.add_argument("version", help="family@number or family@alias.")

    def add_alias_arguments(self, parser):
        parser.add_argument("family")
        parser.add_argument("alias", help="e.g. champion, challenger.")
        parser.add_argument("version", nargs="?", help="A number (4), a label (digits@4) or another alias.")
        parser.add_argument("--remove", action="store_true", help="Remove the alias instead.")
        parser.add_argument("--reason", default="", help="Recorded in the alias history.")
        add_by_argument(parser)

    def do_list(self, *, family=None, status=None, limit=20, **options):
        found = ModelVersion.objects.select_related("family").prefetch_related("aliases")
        if family:
            found = found.filter(family=find_family(family)).order_by("-number")
        else:
            found = found.order_by("-pk")
        if status:
            found = found.filter(status=status)
        rows = [
            [
                v.label,
                v.status,
                v.source,
                when(v.created),
                ", ".join(sorted(a.name for a in v.aliases.all())) or None,
                _accuracy(v.metrics),
            ]
            for v in found[: max(limit, 1)]
        ]
        if not rows:
            self.say("No versions.")
            return
        self.say(table(rows, ["version", "status", "source", "created", "aliases", "held-out accuracy"]))

    def do_show(self, *, version, **options):
        found = find_version(version)
        aliases = ", ".join(sorted(found.aliases.values_list("name", flat=True))) or "none"
        lines = [
            f"{found.label} ({found.status}{': ' + found.archived_reason if found.archived_reason else ''})",
            f"  source: {found.source}; created {when(found.created)}; aliases: {aliases}",
            f"  bundle: {found.bundle_key} ({found.bundle_size} bytes, sha256 {found.bundle_sha256})",
            f"  feature_dim: {found.feature_dim}; classes: {', '.join(map(str, found.classes))}",
            f"  parent: {found.parent.label if found.parent_id else '-'}; snapshot: {found.snapshot_id or '-'}; "
            f"job: {found.training_job_id or '-'}; policy: {found.policy or '-'}",
            f"  mlflow run: {found.mlflow_run_id or '-'}",
            f"  metrics: {json.dumps(found.metrics, sort_keys=True, default=str)}",
        ]
        self.say("\n".join(lines))

    def do_alias(self, *, family, alias, version=None, remove=False, reason="", by=None, **options):
        import re

        from registry import versions

        if not re.match(ALIAS_PATTERN, alias):
            raise usage(f"{alias!r} is not an alias name (lower-case letters, digits, '-', '_').")
        if remove == (version is not None):
            raise usage("Give a version, or --remove (not both).")
        found = find_family(family)
        target = None if remove else find_version(version if "@" in version else f"{found.name}@{version}")
        try:
            event = versions.move_alias(
                found, alias, target, by=find_user(by), reason=reason or "from the command line"
            )
        except ValueError as exc:
            raise refused(exc)
        if event is None:
            self.say(f"{found.name}@{alias} already points at {target.label if target else 'nothing'}.")
            return
        previous = event.previous.label if event.previous else "nothing"
        self.say(f"{found.name}@{alias}: {previous} → {target.label if target else '(removed)'}.")


def _accuracy(metrics) -> str | None:
    candidate = metrics.get("candidate") if isinstance(metrics, dict) else None
    value = candidate.get("holdout_accuracy") if isinstance(candidate, dict) else None
    return f"{value:.3f}" if isinstance(value, float) else None
