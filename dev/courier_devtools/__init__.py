"""Development support: the local stack, the demo, the test HTTP receiver and topic helpers.

Nothing in the product (``courier``, ``ingest``, ``workflows``, ``activities``, ``worker``)
imports this package; the ``courier`` command line finds its commands (``courier stack``,
``courier demo``) through the ``courier.commands`` entry points, and skips them where this
package is not installed (the Docker image).
"""
