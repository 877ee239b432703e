"""The gateway <-> worker protocol on Redis Streams (see DESIGN.md beside this file)."""
