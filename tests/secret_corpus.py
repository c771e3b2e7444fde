"""A corpus of planted credentials: many kinds, each in the places agent output puts them.

Kinds follow the shapes real providers issue (AWS, GitHub, GitLab, Slack, Stripe, OpenAI,
SendGrid, Twilio, npm, PyPI, Azure, Telegram, Discord, JWTs, PEM private keys, URL basic auth,
passwords and generic API tokens). Each credential is generated from a seeded RNG (so the corpus
is the same on every run, and no real key is committed), then placed in removed, added and
context lines of unified diffs (next to a function call, the shape that used to hide it), prose,
JSON strings (plain and escaped inside another JSON document), shell, YAML and code.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

ALNUM = string.ascii_letters + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits
B64 = ALNUM + "+/"


@dataclass(frozen=True)
class Planted:
    kind: str
    context: str
    secret: str  # what must never appear in an export
    text: str  # the text it was planted in

    @property
    def needles(self) -> list[str]:
        """Strings that must not reach an export: the credential, or each line of a PEM block."""
        if "PRIVATE KEY" in self.secret:
            return [ln for ln in self.secret.splitlines() if ln and not ln.startswith("-----")]
        return [self.secret]


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _pem(rng: random.Random) -> str:
    body = [_rand(rng, B64, 64) for _ in range(6)]
    return "\n".join(["-----BEGIN RSA PRIVATE KEY-----", *body, "-----END RSA PRIVATE KEY-----"])


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "aws_access_key_id": lambda r: "AKIA" + _rand(r, string.ascii_uppercase + "234567", 16),
    "aws_secret_access_key": lambda r: _rand(r, B64, 40),
    "github_token": lambda r: "ghp_" + _rand(r, ALNUM, 36),
    "gitlab_token": lambda r: "glpat-" + _rand(r, ALNUM + "_-", 20),
    "slack_bot_token": lambda r: f"xoxb-{_rand(r, string.digits, 12)}-{_rand(r, string.digits, 13)}-{_rand(r, LOWER_ALNUM, 24)}",
    "slack_webhook": lambda r: f"https://hooks.slack.com/services/T{_rand(r, ALNUM, 8)}/B{_rand(r, ALNUM, 8)}/{_rand(r, ALNUM, 24)}",
    "stripe_live_key": lambda r: "sk_live_" + _rand(r, ALNUM, 24),
    "openai_key": lambda r: f"sk-{_rand(r, ALNUM, 20)}T3BlbkFJ{_rand(r, ALNUM, 20)}",
    "sendgrid_key": lambda r: f"SG.{_rand(r, ALNUM, 22)}.{_rand(r, ALNUM, 43)}",
    "twilio_key": lambda r: "SK" + _rand(r, LOWER_ALNUM, 32),
    "npm_token": lambda r: "npm_" + _rand(r, ALNUM, 36),
    "pypi_token": lambda r: "pypi-AgEIcHlwaS5vcmc" + _rand(r, ALNUM, 80),
    "azure_storage_key": lambda r: _rand(r, B64, 86) + "==",
    "telegram_bot_token": lambda r: f"{_rand(r, string.digits, 9)}:AA{_rand(r, ALNUM, 33)}",
    "jwt": lambda r: "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + _rand(r, ALNUM, 48) + "." + _rand(r, ALNUM + "_-", 43),
    "pem_private_key": _pem,
    "basic_auth_password": lambda r: _rand(r, ALNUM, 18),
    "password": lambda r: _rand(r, ALNUM, 10) + "!" + _rand(r, ALNUM, 6),
    "generic_api_token": lambda r: _rand(r, ALNUM, 32),
}


def _value_line(kind: str, secret: str) -> str:
    """How the credential is usually written on one line (its assignment or URL)."""
    return {
        "aws_secret_access_key": f'aws_secret_access_key = "{secret}"',
        "npm_token": f"//registry.npmjs.org/:_authToken={secret}",
        "azure_storage_key": f"DefaultEndpointsProtocol=https;AccountName=prodlogs;AccountKey={secret};EndpointSuffix=core.windows.net",
        "basic_auth_password": f"https://deploy:{secret}@git.internal.example.com/org/repo.git",
        "password": f'password = "{secret}"',
        "generic_api_token": f'api_token: "{secret}"',
    }.get(kind, secret)


def _diff(lines: list[str], marker: str) -> str:
    return "\n".join(marker + ln for ln in lines)


CONTEXTS: dict[str, Callable[[str, str], str]] = {
    # the shape that leaked: a removed line, the credential next to a call on the same line
    "diff_removed": lambda kind, v: "--- a/app/client.py\n+++ b/app/client.py\n@@ -10,3 +10,3 @@\n"
    + _diff([f"    token={line}  resp = requests.get(url)" for line in v.splitlines()], "-")
    + "\n+    token = os.environ['TOKEN']",
    "diff_added": lambda kind, v: "@@ -1,2 +1,3 @@\n" + _diff([f"    cfg.set(KEY, '{line}')" for line in v.splitlines()], "+"),
    "diff_context": lambda kind, v: "@@ -40,4 +40,4 @@\n" + _diff([f"  {line}" for line in v.splitlines()], " ") + "\n-    retries = 3\n+    retries = 5",
    "prose": lambda kind, v: "The reviewer found a live credential committed in the deploy config:\n"
    + v + "\nIt was rotated the same day; verify the old value no longer authenticates.",
    "json_string": lambda kind, v: json.dumps({"env": {"DEPLOY_CREDENTIAL": v}, "region": "eu-west-1"}),
    "json_escaped": lambda kind, v: json.dumps({"payload": json.dumps({"config": {"credential": v}})}),
    "shell": lambda kind, v: "#!/bin/sh\n" + "\n".join(f"export DEPLOY_CREDENTIAL='{line}'" for line in v.splitlines()) + "\n./deploy.sh",
    "yaml": lambda kind, v: "deploy:\n  region: eu-west-1\n  credential: |\n" + "\n".join("    " + ln for ln in v.splitlines()),
    "python_call": lambda kind, v: "\n".join(f"client = Client(credential=\"{line}\", timeout=cfg.get('t'))" for line in v.splitlines()),
    "markdown_code": lambda kind, v: "Set it like this:\n\n```\n" + v + "\n```\n",
    "inline_code": lambda kind, v: " ".join(f"use `{line}` for the staging bucket" for line in v.splitlines()),
}


def planted_corpus(seed: int = 20261130) -> list[Planted]:
    """Every kind in every context: len(GENERATORS) x len(CONTEXTS) planted credentials."""
    rng = random.Random(seed)
    out: list[Planted] = []
    for kind, make in GENERATORS.items():
        for context, place in CONTEXTS.items():
            secret = make(rng)
            out.append(Planted(kind, context, secret, place(kind, _value_line(kind, secret))))
    return out
