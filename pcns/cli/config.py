"""``pcns config check``: every problem of a configuration file at once, like ``nginx -t``.

Parsing stays cheap (the checks are imported when the command runs), as for every command.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pcns.config import TargetConfig
    from pcns.config_check import Problem

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
CHECK_TIMEOUT = 30.0  # seconds per target, as `pcns targets check`


def add_config_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``pcns config check --config FILE [--targets] [--role all|receiver|worker]``."""
    config = sub.add_parser("config", help="configuration files")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check",
        help="report every problem `pcns serve` would refuse to start with; "
        "nothing is written and the database is not opened",
    )
    check.add_argument("--config", type=Path, required=True)
    check.add_argument(
        "--role",
        choices=["all", "receiver", "worker"],
        default="all",
        help="check what `pcns serve --role ROLE` reads (default all)",
    )
    check.add_argument(
        "--targets",
        action="store_true",
        help="also probe every target as `pcns targets check` does (connects to them)",
    )


def run(args: argparse.Namespace) -> int:
    """Print one line per problem and a summary; exit 1 if there is any problem."""
    from pcns.config_check import inspect_configuration

    if args.targets and args.role == "receiver":
        print(
            "pcns config check: a receiver builds no targets; --targets needs --role worker or all",
            file=sys.stderr,
        )
        return EXIT_USAGE
    checked = inspect_configuration(args.config, role=args.role)
    for problem in checked.problems:
        print(problem)
    problems = len(checked.problems)
    if args.targets:
        problems += len(asyncio.run(_probe(checked.probe_targets)))
    if problems:
        print(f"configuration {args.config}: {_count(problems, 'problem')}", file=sys.stderr)
        return EXIT_REJECTED
    print(
        "configuration ok: "
        f"{_count(checked.targets, 'target')}, {_count(checked.sources, 'source')}"
    )
    return EXIT_OK


async def _probe(targets: Sequence[tuple[int, TargetConfig]]) -> list[Problem]:
    """Each valid target's own check(), one line each; the failures as problems."""
    from pcns.app import configured_targets
    from pcns.config import Settings
    from pcns.config_check import Problem
    from pcns.errors import ConfigError
    from targets.base import TargetError

    # Built by the composition root, like every target: only `targets` is read, and each of
    # them has passed validation already (the rest of the file may not have).
    settings = Settings.model_construct(targets=tuple(cfg for _, cfg in targets))
    index = {cfg.name: i for i, cfg in targets}
    failed: list[Problem] = []
    try:
        async with configured_targets(settings) as built:
            for name, target in built.items():
                key = f"targets.{index[name]} ({name})"
                try:
                    await asyncio.wait_for(target.check(), timeout=CHECK_TIMEOUT)
                except TimeoutError:
                    failed.append(Problem(key, f"check FAILED: no answer in {CHECK_TIMEOUT:.0f} s"))
                except TargetError as exc:
                    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
                    failed.append(Problem(key, f"check FAILED ({type(exc).__name__}): {reason}"))
                else:
                    print(f"{key}: check ok")
                    continue
                print(failed[-1])
    except (ConfigError, TargetError) as exc:  # an adapter refused to be constructed
        failed.append(Problem("targets", f"cannot be built: {exc}"))
        print(failed[-1])
    return failed


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
