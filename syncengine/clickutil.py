"""Click pieces shared by the ``syncengine`` commands (the main CLI and ``serve``)."""

from __future__ import annotations

import click

__all__ = ["OneLineCommand", "OneLineUsageError"]


class OneLineUsageError(click.ClickException):
    """A usage error shown as one line (``Error: …``), with click's usage exit status (2)."""

    exit_code = 2


class OneLineCommand(click.Command):
    """A command whose usage errors are one line on stderr (no usage block)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse as usual; turn a usage error into a one-line error."""
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise OneLineUsageError(exc.format_message()) from None
