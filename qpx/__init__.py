"""qpxd: a forward / reverse / transparent HTTP proxy daemon on gevent.

The package is split by job: ``config`` (load, validate, model), ``arbiter`` (the
preforking master), ``worker`` (gevent side), ``http`` (strict HTTP/1.1, sans-IO: parse
and write heads), ``rules`` (matching), ``policy`` (the compiled config), ``edges``
(forward, reverse, transparent, status; they decide), ``netio``/``relay``/``bodies``/
``upstream`` (bytes on the wire).  The master never imports gevent; only ``worker`` and
what it imports after the fork do.
"""

__version__ = "0.1.0"
