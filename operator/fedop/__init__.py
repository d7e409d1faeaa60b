"""The fedkube operator (kopf)."""
