"""The three ways traffic reaches qpxd: ``forward`` (clients configured with a proxy),
``reverse`` (published services) and ``transparent`` (redirected traffic), on top of the
shared connection prologue and HTTP session in ``base`` and ``exchange``."""
