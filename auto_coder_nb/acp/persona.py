"""`@AutoCoder` in jupyter-ai v3's chat: a persona (entry point group `jupyter_ai.personas`) that runs
`auto-coder --acp` through jupyter-ai-acp-client. The chat's folder is the session's workspace; the agent is the
interpreter's own auto-coder, so it has the configuration, site locks and credentials the CLI has.

Importing this module without jupyter-ai-acp-client raises PersonaRequirementsUnmet, which jupyter-ai reads as
"skip this persona"."""

from __future__ import annotations

import sys
from pathlib import Path

from jupyter_ai_persona_manager import PersonaDefaults, PersonaRequirementsUnmet

try:
    from jupyter_ai_acp_client.base_acp_persona import BaseAcpPersona
except ImportError as exc:  # jupyter-ai without its ACP client
    raise PersonaRequirementsUnmet(f"@AutoCoder needs jupyter-ai-acp-client ({exc}): "
                                   "pip install jupyter-ai-acp-client") from exc

AVATAR = Path(__file__).with_name("auto-coder.svg")


class AutoCoderAcpPersona(BaseAcpPersona):
    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, executable=[sys.executable, "-m", "auto_coder_nb", "--acp"], **kwargs)

    @property
    def defaults(self) -> PersonaDefaults:
        return PersonaDefaults(
            name="AutoCoder",
            description="auto-coder: a coding agent on any OpenAI-compatible endpoint (your configuration, site "
                        "settings and credentials), working in this chat's folder.",
            avatar_path=str(AVATAR),
            system_prompt="unused: auto-coder brings its own",
        )
