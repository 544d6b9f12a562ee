"""Reading ahead in a thread of its own: ``prefetched(frames)`` overlaps decoding with the consumer's work.

Apart from ``video.io`` so the stages' code (which never reads ahead this way) does not change with it: the
``idtprior idt`` command is its user.
"""

import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np


def prefetched(frames: Iterable[np.ndarray], depth: int = 8) -> Iterator[np.ndarray]:
    """Yield the items of ``frames`` in order while a background thread reads up to ``depth`` ahead: decoding overlaps
    the consumer's work instead of waking the decoder's threads for every frame. An error of the reader is raised
    here, at the item where it happened; closing the generator early (an error of the consumer, a ``break``) stops the
    reader at its next item."""
    if depth < 1:
        raise ValueError(f"prefetched: depth must be >= 1, got {depth}")
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        """Queue ``entry`` unless the consumer is gone; False when it is."""
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in frames:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as e:  # handed to the consumer, raised in its thread
            put((end, e))

    reader = threading.Thread(target=read, name="frame-prefetch", daemon=True)
    reader.start()
    try:
        while True:
            item, error = items.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        reader.join(timeout=5)
