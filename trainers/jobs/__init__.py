"""Background training jobs for the Train tab, the CLI (``python -m trainers.jobs``) and the API.

``plan``     a request + a preset -> stages of existing methods with validated configs
``store``    the SQLite (WAL) job store: states and their transitions
``worker``   one job's OS process (under ``accelerate launch``): stages, progress, cancel, artefact
``manager``  submit / cancel / resume, the queue (one job per device) and what a job page shows
"""
