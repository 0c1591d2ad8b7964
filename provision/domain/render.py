"""Domain configs and other text files, rendered from jinja2 templates beside this file."""

from __future__ import annotations

from pathlib import Path

import jinja2

from provision.domain import xlcfg
from provision.domain.model import Domain

TEMPLATES = Path(__file__).parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)
_env.filters["xl"] = xlcfg.format_value


def render(template: str, **context) -> str:
    return _env.get_template(template).render(**context)


def domain_config(dom: Domain, path: str, source: str | None = None) -> str:
    """The xl config text for ``dom``; same domain, same bytes."""
    text = render("domain.cfg.j2", dom=dom, path=path, source=source)
    # Our own reader must read back exactly what we meant; a mismatch is our bug.
    back = Domain.from_config(xlcfg.parse(text, path).values, path)
    if back != dom:
        raise RuntimeError(f"bug: the config rendered for {dom.name} does not read back the same")
    return text
