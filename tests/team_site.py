"""A team's site file (AUTO_CODER_SITE_CONFIG), shared by tests/test_team.py (without a hub) and tests/test_hub.py
(on a real JupyterHub): the endpoint, the key from the spawner's environment and who is asking, all locked."""

from __future__ import annotations

LOCKED = ("llm.base_url", "llm.model", "llm.api_key", "llm.user", "llm.user_header", "llm.user_field")
SITE = """
llm:
  base_url: {base_url}
  model: team-model
  api_key: ${{TEAM_GATEWAY_KEY}}
  user: ${{JUPYTERHUB_USER}}
  user_header: X-User
  user_field: true
locked: [{locked}]
"""


def team_site(base_url: str, *more_locked: str) -> str:
    """The site file's text for a gateway at `base_url`, locking `LOCKED` and `more_locked`."""
    return SITE.format(base_url=base_url, locked=", ".join(LOCKED + more_locked))
