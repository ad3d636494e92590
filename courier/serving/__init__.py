"""Serving destinations inside a worker process, beside the Temporal ``Worker`` that polls.

- ``destination``: open a destination with backoff, keep it served while its worker runs,
  close it;
- ``reporting``: the worker's state of the destination ("connected", "not connected: why",
  "stopped"), for ``courier status``;
- ``pacing``: the worker's share of the queue's rate, kept current for its pacer.

``worker.py`` builds the ``Worker`` objects and runs them inside :func:`destination.serving`;
rate control's worker side (``courier.rate_control.client``) is started from here.
"""
