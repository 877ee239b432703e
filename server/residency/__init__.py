"""Residency of local models: what each costs before it loads (`estimate`), the memory budget
(`budget`), which models to start, stop and unload (`policy`), and the state every gateway reads
(`state`, in Redis)."""
