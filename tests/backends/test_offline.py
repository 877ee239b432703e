"""Loading litellm through the backend never touches the network (a fresh interpreter, audited)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
attempts = []
def audit(event, args):
    if event in ("socket.connect", "socket.getaddrinfo"):
        attempts.append(f"{event} {args[1] if event == 'socket.connect' else args[0]}")
sys.addaudithook(audit)
import server.backends.hosted
from server.backends.upstream import load_litellm
litellm = load_litellm()
print(json.dumps({"attempts": attempts, "suppressed": litellm.suppress_debug_info}))
"""


def test_loading_litellm_makes_no_network_attempt() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"attempts": [], "suppressed": True}
    assert "model cost map" not in proc.stderr
