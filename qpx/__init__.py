"""qpxd: a forward / reverse / transparent HTTP proxy daemon on gevent.

The package is split by job: ``config`` (load, validate, model), ``arbiter`` (the
preforking master), ``worker`` (gevent side), ``http`` (strict HTTP/1.1), ``rules``
(matching), ``edges`` (forward, reverse, transparent), ``netio``/``relay``/``upstream``
(bytes on the wire).  The master never imports gevent; only ``worker`` and what it
imports after the fork do.
"""

__version__ = "0.1.0"
