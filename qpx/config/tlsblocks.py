"""The TLS blocks of a configuration: server certificates, upstream TLS, passthrough routes.

A mixin of :class:`~qpx.config.build.Builder` (it reports through ``err``/``warn`` and
reads locations from ``doc``).  Certificates and keys are loaded here, at ``check`` and
at every (re)load, so a missing, unreadable or mismatched file is an error naming its
key path before anything runs; the contexts built are cached by content
(:mod:`qpx.tlsctx`), so the policy compiled next reuses them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from . import model as m
from .errors import dotted


class TlsBlocks:
    doc: object

    def err(self, path: tuple, message: str) -> None:  # pragma: no cover - Builder's
        raise NotImplementedError

    def warn(self, path: tuple, message: str) -> None:  # pragma: no cover - Builder's
        raise NotImplementedError

    def match(self, raw, path: tuple) -> m.MatchSpec:  # pragma: no cover - Builder's
        raise NotImplementedError

    def path_of(self, path: tuple, value: str) -> str:
        """A file path from the config, relative to the file that holds the key."""
        from ..tlsctx import resolve_path

        return resolve_path(value, self.doc.locate(path)[0])

    def upstream_tls(self, raw: dict | None, path: tuple) -> m.UpstreamTls:
        if not raw:
            return m.UpstreamTls()
        verify = raw.get("verify", True)
        ca = raw.get("ca_file")
        if ca is not None:
            ca = self.path_of(path + ("ca_file",), ca)
            if verify:
                from ..tlsctx import TlsFileError, client_context

                try:
                    client_context(True, ca)
                except TlsFileError as e:
                    self.err(path + ("ca_file",), str(e))
        if not verify:
            self.warn(path + ("verify",), "TLS verification of upstreams is off: their "
                                          "certificates are not checked")
        return m.UpstreamTls(verify, ca)

    def server_tls(self, raw: dict | None, path: tuple) -> m.ServerTls | None:
        if raw is None or not raw.get("certificates"):
            return None
        from ..tlsctx import TlsFileError, certificate_context

        min_version = raw.get("min_version", "1.2")
        certs, names, default = [], {}, None
        for i, c in enumerate(raw["certificates"]):
            p = path + ("certificates", i)
            if c.get("pkcs12") is not None:
                self.err(p + ("pkcs12",), "PKCS#12 bundles: not supported by this build "
                         "(convert: openssl pkcs12 -in F -nodes -out cert+key.pem)")
                continue
            sni = c["sni"].strip().lower().rstrip(".")
            if not sni or (sni.startswith("*") and not sni.startswith("*.")) \
                    or "*" in sni[1:]:
                self.err(p + ("sni",), f"expected a host name or *.parent, got {c['sni']!r}")
            elif sni in names:
                self.err(p + ("sni",), f"{sni!r} has a certificate already "
                                       f"({dotted(names[sni])})")
            names.setdefault(sni, p)
            if c.get("default"):
                if default is not None:
                    self.err(p + ("default",), f"only one certificate can be the default "
                                               f"(also {dotted(default)})")
                default = default or p
            if not c.get("cert") or not c.get("key"):
                self.err(p, "a certificate needs cert and key (PEM files)")
                continue
            cert = self.path_of(p + ("cert",), c["cert"])
            key = self.path_of(p + ("key",), c["key"])
            unreadable = False
            for name, file in (("cert", cert), ("key", key)):
                try:
                    with open(file, "rb"):
                        pass
                except OSError as e:
                    self.err(p + (name,), f"cannot read {file}: {e.strerror or e}")
                    unreadable = True
            if unreadable:
                continue
            try:
                certificate_context(cert, key, min_version)
            except TlsFileError as e:
                self.err(p + ("key",), str(e))
                continue
            certs.append(m.Certificate(sni, cert, key, bool(c.get("default"))))
        return m.ServerTls(tuple(certs), min_version)


    def passthrough_route(self, raw: dict, path: tuple) -> m.Route:
        """A TLS passthrough route, as a route whose upstreams are TCP endpoints:
        ``host:port`` (port 443 when omitted) or a URL."""
        ups = []
        for i, u in enumerate(raw.get("upstreams") or ()):
            url = u if "://" in u else f"tcp://{u}"
            try:
                parts = urlsplit(url)
                port = parts.port or 443
            except ValueError as e:
                self.err(path + ("upstreams", i), f"invalid upstream {u!r}: {e}")
                continue
            if not parts.hostname or parts.path not in ("", "/"):
                self.err(path + ("upstreams", i), f"expected host:port, got {u!r}")
                continue
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            ups.append(f"tcp://{host}:{port}")
        if not raw.get("upstreams"):
            self.err(path + ("upstreams",), "a passthrough route needs upstreams")
        lb = (raw.get("lb") or "round_robin").lower()
        if lb not in ("round_robin", "least_conn", "least_connections", "random"):
            self.err(path + ("lb",), f"must be one of round_robin, least_conn, random; "
                                     f"got {raw.get('lb')!r}")
            lb = "round_robin"
        hc = m.HealthCheck(**raw["health_check"]) if raw.get("health_check") is not None \
            else None
        if hc is not None and hc.path is not None:
            self.err(path + ("health_check", "path"), "passthrough upstreams are probed by "
                                                      "TCP connect: no path")
        return m.Route(
            match=self.match(raw.get("match"), path + ("match",)),
            backends=(m.Backend(None, 1, tuple(ups)),) if ups else (),
            lb="least_conn" if lb == "least_connections" else lb,
            retry=m.Retry(**raw["retry"]) if raw.get("retry") is not None else None,
            timeout_ms=raw.get("timeout_ms", 30000), health_check=hc)

    def inspection(self, raw: dict, rules, default, path: tuple) -> m.Inspection | None:
        """``tls_inspection``: the CA directory is checked as ``run`` would use it (an
        existing CA must load: matching key, mode 0600; a missing one is made by ``run``
        in a writable directory, with a warning here); ``inspect`` actions need it."""
        import os

        ti = raw.get("tls_inspection") or {}
        enabled = ti.get("enabled", False)
        users = [(("rules", i, "action"), r.action) for i, r in enumerate(rules)
                 if r.action is not None and r.action.type == "inspect"]
        if default.type == "inspect":
            users.append((("default_action",), default))
        if not enabled:
            for p, _ in users:
                self.err(path + p + ("type",), "action inspect needs "
                                               "tls_inspection.enabled on this listener")
            return None
        ca = ti.get("ca")
        if isinstance(ca, dict):
            self.err(path + ("tls_inspection", "ca"),
                     "expected the directory that holds ca.crt and ca.key")
            return None
        ca_dir = os.path.expanduser(ca) if ca else self.state_dir
        exceptions = tuple(ti.get("verify_exceptions") or ())
        from ..rules.validate import validate_match

        for rel, message in validate_match(m.MatchSpec(host=exceptions)):
            self.err(path + ("tls_inspection", "verify_exceptions",
                             int(rel.split(".")[1])), message)
        self.check_ca_dir(ca_dir, path + ("tls_inspection", "ca" if ca else "enabled"))
        return m.Inspection(ca_dir, ti.get("verify_upstream", True), exceptions)

    def check_ca_dir(self, ca_dir: str, path: tuple) -> None:
        import os

        from .. import ca as calib

        if calib.exists(ca_dir):
            try:
                calib.load(ca_dir)
            except calib.CaError as e:
                self.err(path, str(e))
            return
        parent = ca_dir
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent.rstrip("/")) or "."
        if not os.access(parent or ".", os.W_OK | os.X_OK):
            self.err(path, f"no CA in {ca_dir} and {parent} is not writable: run cannot "
                           f"make one (qpxd gen-ca -d DIR, or another state_dir)")
            return
        self.warn(path, f"no TLS inspection CA in {ca_dir} yet: run will generate one "
                        f"there (qpxd gen-ca -d {ca_dir} makes it ahead of time)")
