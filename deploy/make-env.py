#!/usr/bin/env python3
"""Print a ready .env for docker-compose.yaml: .env.example with every secret filled.

    python deploy/make-env.py > .env

.env.example leaves the secrets empty so that compose refuses to start with a shared
default; this fills each one with a fresh random value (and AIRFLOW_UID with yours), so a
first start needs no hand-editing. A secret is a variable that docker-compose.yaml requires
(``${NAME:?...}``); optional settings left empty (alert recipients, webhook URLs) stay empty.
Standard library only: it runs before anything is set up.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"
REQUIRED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?")


def fernet_key() -> str:
    """The format of cryptography's Fernet.generate_key(): 32 random bytes, URL-safe base64."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def secret_for(name: str) -> str:
    # URL-safe characters only: the passwords are embedded in connection URLs.
    return fernet_key() if name == "AIRFLOW_FERNET_KEY" else secrets.token_urlsafe(32)


def required_names(compose_text: str) -> set[str]:
    """The variables compose refuses to start without (``${NAME:?message}``)."""
    return set(REQUIRED.findall(compose_text))


def filled(example_text: str, uid: int, required: set[str] | None = None) -> str:
    """The example's lines, in order, with each empty required value given a secret
    (every empty value when ``required`` is None)."""
    out = []
    for line in example_text.splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            if value == "" and (required is None or name in required):
                line = f"{name}={secret_for(name)}"
            elif name == "AIRFLOW_UID" and uid != 0:
                line = f"{name}={uid}"
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    example = Path(argv[1]) if len(argv) > 1 else EXAMPLE
    compose = example.with_name("docker-compose.yaml")
    required = required_names(compose.read_text(encoding="utf-8")) if compose.exists() else None
    sys.stdout.write(filled(example.read_text(encoding="utf-8"), os.getuid(), required))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
