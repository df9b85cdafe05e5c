"""Applications that compose codl's layers end to end on one task.

:mod:`codl.apps.crowd`: crowd counting, from the pretrained CSRNet teacher to a small student.
"""

from codl.apps import crowd

__all__ = ["crowd"]
