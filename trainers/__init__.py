"""Training: the shared core (``trainers.core``), one file per method (``trainers.methods``), background
jobs (``trainers.jobs``) and the miniature world (``trainers.miniature``, imported here so its prompt
source is registered wherever a config is read)."""

from trainers import miniature  # noqa: F401  (registers the "miniature" prompt source)
