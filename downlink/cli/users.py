"""``downlink users add NAME [--program P]... [--staff]`` and ``downlink users token NAME``.

Both print the new token as the last word of their last line (scripts take
``| tail -1 | awk '{print $NF}'``); it is shown once and stored only hashed.
``--program P`` makes the user a member of program P, registering the program
with the default exclusive-access period when it is new (the first member
becomes its PI); ``downlink archive program P --period N`` changes it.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from downlink.cli import settings_of

users_app = typer.Typer(help="archive users and API tokens", no_args_is_help=True)


def _admin(ctx: typer.Context):
    from consumers.archive import db
    from consumers.archive.admin import Admin

    settings = settings_of(ctx)
    db.migrate(settings)
    return Admin(settings)


@users_app.command("add")
def add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="user name"),
    program: Optional[List[int]] = typer.Option(None, "--program", "-p", help="member of this program (repeatable)"),
    staff: bool = typer.Option(False, "--staff", help="archive staff: sees and reprocesses everything"),
    days: Optional[float] = typer.Option(None, min=0.001, help="token lifetime [DOWNLINK_ARCHIVE_TOKEN_DAYS]"),
) -> None:
    """Create a user (or add memberships to one) and print a new API token."""
    with _admin(ctx) as admin:
        token = admin.add_user(name, list(program or []), staff=staff, days=days)
    role = "staff" if staff else "user"
    progs = ", ".join(str(p) for p in program or []) or "none"
    typer.echo(f"{role} {name} (programs: {progs})")
    typer.echo(f"token for {name}: {token}")


@users_app.command("token")
def token(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="existing user name"),
    days: Optional[float] = typer.Option(None, min=0.001, help="token lifetime [DOWNLINK_ARCHIVE_TOKEN_DAYS]"),
) -> None:
    """Issue another API token for a user (earlier tokens stay valid until they expire)."""
    with _admin(ctx) as admin:
        new = admin.issue_token(name, days=days)
    typer.echo(f"token for {name}: {new}")


@users_app.command("revoke")
def revoke(ctx: typer.Context, name: str = typer.Argument(..., help="existing user name")) -> None:
    """Revoke every token of a user."""
    with _admin(ctx) as admin:
        n = admin.revoke_tokens(name)
    typer.echo(f"revoked {n} token(s) of {name}")


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
