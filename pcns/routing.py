"""Which targets a change goes to, and under which account name."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from pcns.config import TargetConfig
from targets.templates import Template


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    domain: str | None
    upn: str | None


class MissingAccountField(Exception):
    """The account template needs a field the change did not carry."""

    def __init__(self, field: str) -> None:
        super().__init__(f"account template needs '{field}', which the change did not include")
        self.field = field


@dataclass(frozen=True, slots=True)
class Route:
    """One target's routing rule: case-insensitive include/exclude globs and an account template."""

    target: str
    template: Template
    include: re.Pattern[str]
    exclude: re.Pattern[str] | None

    @classmethod
    def from_config(cls, cfg: TargetConfig) -> Route:
        return cls(
            target=cfg.name,
            template=cfg.account_template(),
            include=_globs(cfg.include) or re.compile(r"(?!)"),
            exclude=_globs(cfg.exclude),
        )

    def matches(self, user: str) -> bool:
        name = user.casefold()
        if not self.include.match(name):
            return False
        return self.exclude is None or not self.exclude.match(name)

    def account(self, who: Identity) -> str:
        """The account name at the target; MissingAccountField names the first field absent."""
        values = {"user": who.user, "domain": who.domain, "upn": who.upn}
        present: dict[str, str] = {}
        for _, field in self.template.parts:
            if field is not None:
                value = values[field]
                if value is None:
                    raise MissingAccountField(field)
                present[field] = value
        return self.template.render(present)


def _globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p.casefold())})" for p in patterns))


class Router:
    def __init__(self, targets: tuple[TargetConfig, ...]) -> None:
        self.routes = tuple(Route.from_config(t) for t in targets)

    def routes_for(self, user: str) -> list[Route]:
        return [r for r in self.routes if r.matches(user)]
