"""The garbage collector of a long-running process (an API server, a worker).

CPython's cyclic collector walks every tracked object of the generations it collects. A
booted service holds some 160,000 of them (modules, the ORM's mappers, compiled templates)
that live as long as the process, and each full collection walked them all again: in a
worker sending a 20,000-message wave, about a dozen full collections of some 80 ms each,
every one a pause of the event loop that every provider connection waited out, and about
12% of the worker's CPU. ``gc.freeze()`` moves what exists at boot out of the collector's
sight (it is never garbage), and a larger first threshold runs young collections less
often, on work that makes many short-lived objects per message (ORM rows, MIME parts).
Memory stays bounded: the thresholds only space the collections out.
"""

from __future__ import annotations

import gc

# Allocations (net of frees) before a young collection; CPython's default is 700.
YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Collect once, then freeze what the booted process holds; call once boot is done."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
