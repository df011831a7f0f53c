"""The shared training core: one accelerate loop, config, losses, schedules and the student builder.

Every method in ``trainers.methods`` is a short file that states what is frozen, what is trained and
which loss, and hands a ``Method`` to ``loop.train``; the loop never knows which method it runs.
"""
