"""Backends the gateway dispatches to: `hosted` (litellm, in the gateway process)."""
